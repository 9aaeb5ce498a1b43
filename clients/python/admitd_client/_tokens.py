"""Client-side input-token counting with tiktoken, to size a reservation.

The count is an estimate used for the reservation only: what the provider reports when
the call ends (``Lease.record``) is what gets charged, and the difference is refunded.
Where a count can only be estimated it errs high: an image given by URL is counted at the
largest size the provider bills, nested tool schemas as their JSON. tiktoken downloads an
encoding file the first time it is used and caches it; set ``TIKTOKEN_CACHE_DIR`` to
pre-seeded files on machines without network access.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import tiktoken

from ._images import data_url_size, openai_image_tokens
from ._models import DEFAULT_ENCODING, encoding_for_model, known_encoding

__all__ = ["DEFAULT_ENCODING", "Counter", "count_tokens", "encoding_name"]

# OpenAI's documented chat-format overhead (cookbook "How to count tokens with tiktoken",
# for every chat model since gpt-3.5-turbo-0613): each message is wrapped in
# <|start|>{role}<|message|>...<|end|>, a "name" costs one more token, and the reply is
# primed with <|start|>assistant<|message|>.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
TOKENS_REPLY_PRIMING = 3
# The same cookbook's function-definition overhead (its num_tokens_for_tools): per function,
# per parameter block, per parameter, per enum, per enum value, and once for all of them.
# gpt-4o and later (o200k_base) start each function with 7 tokens, older models with 10.
FUNC_INIT = {"o200k_base": 7, "cl100k_base": 10}
PROP_INIT, PROP_KEY, ENUM_INIT, ENUM_ITEM, FUNC_END = 3, 3, -3, 3, 12

ImageTokens = Callable[[Mapping[str, Any]], int | None]
"""Tokens of a content part if it is an image, else None."""


def encoding_name(
    pool: str,
    *,
    encoding: str | None = None,
    model: str | None = None,
    pool_encodings: Mapping[str, str] | None = None,
    default: str = DEFAULT_ENCODING,
) -> str:
    """The tiktoken encoding for a call, most specific first; never raises.

    ``encoding``; else the encoding of ``model`` (see ``encoding_for_model``: an unknown
    model is counted with ``default``, logged once); else the client's
    ``pool_encodings[pool]``; else the encoding of the model a ``provider/model`` pool name
    ends with ("openai/gpt-4" -> cl100k_base, "anthropic/claude-..." -> cl100k_base);
    else ``default``.
    """
    if encoding:
        return encoding
    if model:
        return encoding_for_model(model, default)
    if pool_encodings and pool in pool_encodings:
        return pool_encodings[pool]
    return known_encoding(pool) or default


def count_tokens(
    *,
    messages: Sequence[Mapping[str, Any]] | None = None,
    prompt: str | None = None,
    encoding: str = DEFAULT_ENCODING,
) -> int:
    """Estimate the input tokens of a call from its chat ``messages`` or its ``prompt``.

    Messages follow OpenAI's chat format (``role``, ``content``, optional ``name``) and are
    counted with OpenAI's documented per-message overhead. ``content`` may be a string or a
    list of parts: text parts are counted, image parts with OpenAI's tile formula (the
    image's size read from a base64 ``data:`` URL; an image by URL at the largest bill,
    1445 tokens), audio and file parts not at all (pass ``input_tokens`` when they
    dominate). Other non-string fields (``tool_calls``) are counted as their JSON.
    Special-token text such as ``<|endoftext|>`` counts as plain text, the way providers
    bill user content.

    Args:
        messages: Chat messages (dicts, or objects with ``model_dump()``).
        prompt: Plain text, counted as is.
        encoding: A tiktoken encoding name.

    Returns:
        The token count (0 when neither is given; their sum when both are).
    """
    counter = Counter(encoding)
    total = counter.text(prompt) if prompt else 0
    if messages is not None:
        total += counter.chat(messages, openai_image(mini=False))
    return total


class Counter:
    """Counts the parts of a request in one tiktoken encoding."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._enc = tiktoken.get_encoding(encoding)  # tiktoken caches loaded encodings

    def text(self, text: str) -> int:
        return len(self._enc.encode(text, disallowed_special=()))

    def json(self, value: Any) -> int:
        """A structured value as the compact JSON the provider sees."""
        if isinstance(value, str):
            return self.text(value)
        return self.text(json.dumps(value, separators=(",", ":"), default=str))

    def chat(self, messages: Sequence[Any], images: ImageTokens) -> int:
        """Chat messages with OpenAI's per-message overhead and the reply priming."""
        total = TOKENS_REPLY_PRIMING
        for message in messages:
            total += self.message(as_mapping(message), images)
        return total

    def message(self, message: Mapping[str, Any], images: ImageTokens) -> int:
        total = TOKENS_PER_MESSAGE
        for key, value in message.items():
            total += self.value(key, value, images)
            if key == "name":
                total += TOKENS_PER_NAME
        return total

    def value(self, key: str, value: Any, images: ImageTokens) -> int:
        if value is None:
            return 0
        if isinstance(value, str):
            return self.text(value)
        if key == "content" and isinstance(value, list):
            return sum(self.part(as_mapping(part), images) for part in value)
        return self.json(value)

    def part(self, part: Mapping[str, Any], images: ImageTokens) -> int:
        """One content part: text (any provider's), an image, or else nothing."""
        image = images(part)
        if image is not None:
            return image
        text = part.get("text")
        return self.text(text) if isinstance(text, str) else 0

    def tools(self, tools: Sequence[Any]) -> int:
        """OpenAI function definitions, by the cookbook's formula; other tools as JSON.

        Chat's ``{"type": "function", "function": {...}}``, legacy ``functions`` and the
        Responses API's flat ``{"type": "function", "name": ...}`` alike. A parameter's
        nested schema (objects, arrays) is counted as its JSON on top, which errs high.
        """
        if not tools:
            return 0
        total = FUNC_END
        for tool in map(as_mapping, tools):
            function = as_mapping(tool.get("function", tool))
            if not isinstance(function.get("name"), str):
                total += self.json(tool)  # a built-in tool (web_search, file_search, ...)
                continue
            total += FUNC_INIT.get(self.encoding, FUNC_INIT["cl100k_base"])
            description = str(function.get("description") or "").removesuffix(".")
            total += self.text(f"{function['name']}:{description}")
            properties = (function.get("parameters") or {}).get("properties") or {}
            if properties:
                total += PROP_INIT
            for key, schema in properties.items():
                total += PROP_KEY + self._parameter(key, schema)
        return total

    def _parameter(self, key: str, schema: Mapping[str, Any]) -> int:
        total = 0
        if "enum" in schema:
            total += ENUM_INIT
            total += sum(ENUM_ITEM + self.text(str(item)) for item in schema["enum"])
        description = str(schema.get("description") or "").removesuffix(".")
        total += self.text(f"{key}:{schema.get('type', '')}:{description}")
        nested = {k: v for k, v in schema.items() if k not in ("type", "description", "enum")}
        return total + (self.json(nested) if nested else 0)


def openai_image(mini: bool) -> ImageTokens:
    """Image parts of OpenAI chat (``image_url``) and Responses (``input_image``)."""

    def tokens(part: Mapping[str, Any]) -> int | None:
        kind = part.get("type")
        if kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, Mapping) else image
            detail = image.get("detail") if isinstance(image, Mapping) else None
        elif kind == "input_image":
            url, detail = part.get("image_url"), part.get("detail")
        else:
            return None
        size = data_url_size(url) if isinstance(url, str) else None
        return openai_image_tokens(size, str(detail or "auto"), mini)

    return tokens


def as_mapping(value: Any) -> Mapping[str, Any]:
    """A message or part as a mapping: dicts as they are, SDK objects by ``model_dump``."""
    if isinstance(value, Mapping):
        return value
    dump = getattr(value, "model_dump", None)  # pydantic models (SDK message objects)
    if callable(dump):
        result = dump(exclude_none=True)
        if isinstance(result, Mapping):
            return result
    raise TypeError(f"a chat message must be a mapping, got {type(value).__name__}")
