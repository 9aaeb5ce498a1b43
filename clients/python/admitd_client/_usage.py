"""Reading token usage from provider responses, without importing any provider SDK.

Shapes read (SDK objects or their dict form alike):

- OpenAI chat completions: ``usage.prompt_tokens`` / ``usage.completion_tokens``; a streamed
  call reports them in its last chunk (``stream_options={"include_usage": True}``); the
  chunks before it have ``usage: None`` and are ignored.
- OpenAI Responses: ``usage.input_tokens`` / ``usage.output_tokens``; streamed, the
  ``response.completed`` event carries the final ``response``.
- Anthropic messages: ``usage.input_tokens`` (+ ``cache_creation_input_tokens`` +
  ``cache_read_input_tokens``, which Anthropic counts separately) / ``usage.output_tokens``;
  streamed, ``message_start`` carries ``message.usage`` and every ``message_delta`` the
  cumulative ``usage.output_tokens``.
- Google Gemini: ``usage_metadata.prompt_token_count`` / ``candidates_token_count`` +
  ``thoughts_token_count`` (thinking is billed as output); the REST JSON's camelCase too.

Values are totals, not increments: a later reading replaces an earlier one, field by field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

_ANTHROPIC_CACHE_FIELDS = ("cache_creation_input_tokens", "cache_read_input_tokens")
# (envelope, input, output, thinking): the SDK's snake_case and the REST API's camelCase.
_GEMINI = (
    ("usage_metadata", "prompt_token_count", "candidates_token_count", "thoughts_token_count"),
    ("usageMetadata", "promptTokenCount", "candidatesTokenCount", "thoughtsTokenCount"),
)


class Reading(NamedTuple):
    """Token counts found in a response; None where the response says nothing."""

    input_tokens: int | None
    output_tokens: int | None


def read_usage(response: Any) -> Reading | None:
    """Token usage in a provider response or stream event, or None when it has none."""
    for envelope in ("response", "message"):  # response.completed / message_start events
        inner = _field(response, envelope)
        if inner is not None and _field(inner, "usage") is not None:
            return read_usage(inner)
    for envelope, input_name, output_name, thinking_name in _GEMINI:
        gemini = _field(response, envelope)
        if gemini is not None:
            output = _count(gemini, output_name)
            if output is not None:
                output += _count(gemini, thinking_name) or 0
            return Reading(_count(gemini, input_name), output)
    usage = _field(response, "usage")
    if usage is None:
        return None
    prompt, completion = _count(usage, "prompt_tokens"), _count(usage, "completion_tokens")
    if prompt is not None or completion is not None:
        return Reading(prompt, completion)
    inputs = _count(usage, "input_tokens")
    if inputs is not None:
        # Anthropic reports cached prompt tokens beside input_tokens, not inside it.
        inputs += sum(_count(usage, name) or 0 for name in _ANTHROPIC_CACHE_FIELDS)
    return Reading(inputs, _count(usage, "output_tokens"))


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _count(obj: Any, name: str) -> int | None:
    value = _field(obj, name)
    # bool is an int subclass; a True token count is a shape we do not understand.
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None
