"""Client-side input-token counting with tiktoken, to size a reservation.

The count is an estimate used for the reservation only: what the provider reports when
the call ends (``Lease.record``) is what gets charged, and the difference is refunded.
tiktoken downloads an encoding file the first time it is used and caches it; set
``TIKTOKEN_CACHE_DIR`` to pre-seeded files on machines without network access.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import tiktoken
import tiktoken.model

DEFAULT_ENCODING = "o200k_base"
"""The encoding of current OpenAI models (gpt-4o, gpt-4.1, o-series); a fair estimate for
other providers' tokenizers too."""

# OpenAI's documented chat-format overhead (cookbook "How to count tokens with tiktoken",
# for every chat model since gpt-3.5-turbo-0613): each message is wrapped in
# <|start|>{role}<|message|>...<|end|>, a "name" costs one more token, and the reply is
# primed with <|start|>assistant<|message|>.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
TOKENS_REPLY_PRIMING = 3


def encoding_name(
    pool: str,
    *,
    encoding: str | None = None,
    model: str | None = None,
    pool_encodings: Mapping[str, str] | None = None,
    default: str = DEFAULT_ENCODING,
) -> str:
    """The tiktoken encoding for a call, most specific first.

    ``encoding``; else the encoding tiktoken knows for ``model``; else the client's
    ``pool_encodings[pool]``; else the encoding of the model a ``provider/model`` pool name
    ends with, when tiktoken knows it ("openai/gpt-4" -> cl100k_base); else ``default``.

    Raises:
        KeyError: ``model`` is not a model tiktoken knows.
    """
    if encoding:
        return encoding
    if model:
        return tiktoken.model.encoding_name_for_model(model)
    if pool_encodings and pool in pool_encodings:
        return pool_encodings[pool]
    try:
        return tiktoken.model.encoding_name_for_model(pool.rpartition("/")[2])
    except KeyError:
        return default


def count_tokens(
    *,
    messages: Sequence[Mapping[str, Any]] | None = None,
    prompt: str | None = None,
    encoding: str = DEFAULT_ENCODING,
) -> int:
    """Estimate the input tokens of a call from its chat ``messages`` or its ``prompt``.

    Messages follow OpenAI's chat format (``role``, ``content``, optional ``name``) and are
    counted with OpenAI's documented per-message overhead. ``content`` may be a string or a
    list of parts: text parts are counted, image/audio/file parts are not (pass
    ``input_tokens`` when they dominate). Other non-string fields (``tool_calls``) are
    counted as their JSON. Special-token text such as ``<|endoftext|>`` counts as plain
    text, the way providers bill user content.

    The result is an estimate for the reservation only; the provider's reported usage is
    what gets charged.

    Args:
        messages: Chat messages (dicts, or objects with ``model_dump()``).
        prompt: Plain text, counted as is.
        encoding: A tiktoken encoding name.

    Returns:
        The token count (0 when neither is given; their sum when both are).
    """
    enc = tiktoken.get_encoding(encoding)  # tiktoken caches loaded encodings
    total = len(_encode(enc, prompt)) if prompt else 0
    if messages is not None:
        for message in messages:
            total += TOKENS_PER_MESSAGE
            for key, value in _as_mapping(message).items():
                total += _value_tokens(enc, key, value)
                if key == "name":
                    total += TOKENS_PER_NAME
        total += TOKENS_REPLY_PRIMING
    return total


def _encode(enc: tiktoken.Encoding, text: str) -> list[int]:
    return enc.encode(text, disallowed_special=())


def _as_mapping(message: Any) -> Mapping[str, Any]:
    if isinstance(message, Mapping):
        return message
    dump = getattr(message, "model_dump", None)  # pydantic models (SDK message objects)
    if callable(dump):
        result = dump(exclude_none=True)
        if isinstance(result, Mapping):
            return result
    raise TypeError(f"a chat message must be a mapping, got {type(message).__name__}")


def _value_tokens(enc: tiktoken.Encoding, key: str, value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return len(_encode(enc, value))
    if key == "content" and isinstance(value, list):
        # Content parts: {"type": "text", "text": ...} (OpenAI and Anthropic alike).
        texts = (p.get("text") for p in value if isinstance(p, Mapping))
        return sum(len(_encode(enc, t)) for t in texts if isinstance(t, str))
    return len(_encode(enc, json.dumps(value, separators=(",", ":"), default=str)))
