"""What the client knows about models: tokenizer, output ceiling, provider, pool name.

Every answer has a documented fallback, so an unknown model never raises: it is counted
with ``DEFAULT_ENCODING`` (logged once per model) and reserved at ``DEFAULT_MAX_OUTPUT``
when the request sets no output limit.

Claude models have no public tokenizer. They are counted with ``cl100k_base`` and the
count is multiplied by ``CLAUDE_TOKEN_FACTOR`` (rounded up): the reservation errs high,
and release charges what Anthropic reports.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Literal

import tiktoken.model

log = logging.getLogger("admitd_client")

Api = Literal["openai.chat", "openai.responses", "anthropic.messages"]
"""Which provider call a request is for: OpenAI ``chat.completions.create``,
``responses.create``, or Anthropic ``messages.create``."""
APIS: tuple[Api, ...] = ("openai.chat", "openai.responses", "anthropic.messages")

DEFAULT_ENCODING = "o200k_base"
"""The encoding of current OpenAI models (gpt-4o, gpt-4.1, o-series, gpt-5); the fallback
for models tiktoken does not know."""
CLAUDE_ENCODING = "cl100k_base"
CLAUDE_TOKEN_FACTOR = 1.3
"""Claude's tokenizers yield more tokens than cl100k_base for the same text (published
comparisons find up to about a quarter more on English and code); 1.3 keeps the estimate
above the bill."""
DEFAULT_MAX_OUTPUT = 16_384
"""Reserved for a model not in ``_MAX_OUTPUT`` whose request sets no output limit."""
# The documented output ceilings of OpenAI model families, most specific prefix first: a
# request without max_tokens may produce this much, so this much is reserved.
_MAX_OUTPUT: tuple[tuple[str, int], ...] = (
    ("gpt-5", 128_000),
    ("o1-mini", 65_536),
    ("o1", 100_000),
    ("o3", 100_000),
    ("o4", 100_000),
    ("gpt-4.1", 32_768),
    ("gpt-4o", 16_384),
    ("chatgpt-4o", 16_384),
    ("gpt-4-turbo", 4_096),
    ("gpt-4", 8_192),
    ("gpt-3.5", 4_096),
)
_warned: set[str] = set()


def provider_of(api: Api) -> str:
    """``openai`` or ``anthropic``: the provider part of a default pool name."""
    return api.partition(".")[0]


def is_claude(model: str) -> bool:
    return model.rpartition("/")[2].startswith("claude")


def encoding_for_model(model: str, default: str = DEFAULT_ENCODING) -> str:
    """The tiktoken encoding to count ``model``'s input with; never raises.

    tiktoken's own table for OpenAI models; ``cl100k_base`` for Claude (see
    ``CLAUDE_TOKEN_FACTOR``); else ``default``, with a warning logged once per model.
    """
    known = known_encoding(model)
    if known is None:
        known = default
        if model not in _warned:
            _warned.add(model)
            log.warning("no tokenizer known for model %r: counting with %s", model, default)
    return known


def known_encoding(model: str) -> str | None:
    """The encoding for ``model`` (``provider/`` prefixes ignored), or None if unknown."""
    name = model.rpartition("/")[2]
    if is_claude(name):
        return CLAUDE_ENCODING
    try:
        return tiktoken.model.encoding_name_for_model(name)
    except KeyError:
        return None


def scale_for_model(model: str, tokens: int) -> int:
    """A count in ``encoding_for_model``'s encoding, scaled to estimate ``model``'s."""
    if is_claude(model):
        return math.ceil(tokens * CLAUDE_TOKEN_FACTOR)
    return tokens


def default_max_output(model: str) -> int:
    """Output tokens to reserve when a request sets no limit: the model's ceiling."""
    name = model.rpartition("/")[2]
    for prefix, ceiling in _MAX_OUTPUT:
        if name.startswith(prefix):
            return ceiling
    return DEFAULT_MAX_OUTPUT


def pool_for(api: Api, model: str, model_pools: Mapping[str, str] | None) -> str:
    """The pool a model's calls go to: ``model_pools[model]``, else ``<provider>/<model>``."""
    if model_pools and model in model_pools:
        return model_pools[model]
    return f"{provider_of(api)}/{model}"
