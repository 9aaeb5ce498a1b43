"""Reading token usage from provider responses, without importing any provider SDK.

Shapes read (SDK objects or their dict form alike):

- OpenAI chat completions: ``usage.prompt_tokens`` / ``usage.completion_tokens``, cache
  reads in ``usage.prompt_tokens_details.cached_tokens`` (writes in ``cache_write_tokens``);
  a streamed call reports them in its last chunk (``stream_options={"include_usage":
  True}``); the chunks before it have ``usage: None`` and are ignored.
- OpenAI Responses: ``usage.input_tokens`` / ``usage.output_tokens``, cache reads in
  ``usage.input_tokens_details.cached_tokens``; streamed, the ``response.completed`` event
  carries the final ``response``.
- Anthropic messages: ``usage.input_tokens`` (tokens after the last cache breakpoint) +
  ``cache_creation_input_tokens`` (written) + ``cache_read_input_tokens`` (read), which
  Anthropic counts beside each other / ``usage.output_tokens``; streamed,
  ``message_start`` carries ``message.usage`` and every ``message_delta`` cumulative counts.
- Google Gemini: ``usage_metadata.prompt_token_count`` (cache reads:
  ``cached_content_token_count``) / ``candidates_token_count`` + ``thoughts_token_count``
  (thinking is billed as output); the REST JSON's camelCase too.
- Helpers that hold a finished call: Anthropic's ``MessageStream`` and OpenAI's
  ``ChatCompletionStream`` (their snapshot, once consumed), and a ``with_raw_response``
  object (its parsed body).

Values are totals, not increments: a later reading replaces an earlier one, field by field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

# (envelope, input, output, thinking, cached): the SDK's snake_case and REST's camelCase.
_GEMINI = (
    (
        "usage_metadata",
        "prompt_token_count",
        "candidates_token_count",
        "thoughts_token_count",
        "cached_content_token_count",
    ),
    (
        "usageMetadata",
        "promptTokenCount",
        "candidatesTokenCount",
        "thoughtsTokenCount",
        "cachedContentTokenCount",
    ),
)
# Attributes that make an object a provider response or stream event, even without usage.
_SHAPES = ("usage", "usage_metadata", "usageMetadata", "choices", "type", "object")
# Helpers that accumulate a whole call: the attribute holding the finished response.
_SNAPSHOTS = ("current_message_snapshot", "current_completion_snapshot")


class Reading(NamedTuple):
    """Token counts found in a response; None where the response says nothing.

    Attributes:
        input_tokens: All input tokens, cached ones included (OpenAI, Gemini); None for
            Anthropic, which reports its parts (below).
        output_tokens: Output tokens (thinking included).
        cache_read: Input tokens read from the provider's prompt cache.
        cache_write: Input tokens written to the prompt cache.
        uncached_input: Anthropic's ``input_tokens``: input beside the two cache counts.
    """

    input_tokens: int | None
    output_tokens: int | None
    cache_read: int | None = None
    cache_write: int | None = None
    uncached_input: int | None = None


def read_usage(response: Any) -> Reading | None:
    """Token usage in a provider response or stream event, or None when it has none."""
    for envelope in ("response", "message"):  # response.completed / message_start events
        inner = _field(response, envelope)
        if inner is not None and _field(inner, "usage") is not None:
            return read_usage(inner)
    for envelope, input_name, output_name, thinking_name, cached_name in _GEMINI:
        gemini = _field(response, envelope)
        if gemini is not None:
            output = _count(gemini, output_name)
            if output is not None:
                output += _count(gemini, thinking_name) or 0
            return Reading(_count(gemini, input_name), output, _count(gemini, cached_name))
    usage = _field(response, "usage")
    if usage is None:
        return None
    prompt, completion = _count(usage, "prompt_tokens"), _count(usage, "completion_tokens")
    if prompt is not None or completion is not None:
        details = _field(usage, "prompt_tokens_details")
        read, write = _count(details, "cached_tokens"), _count(details, "cache_write_tokens")
        return Reading(prompt, completion, read, write)
    inputs, outputs = _count(usage, "input_tokens"), _count(usage, "output_tokens")
    read, write = _count(usage, "cache_read_input_tokens"), None
    if read is not None or _field(usage, "cache_creation_input_tokens") is not None:
        write = _count(usage, "cache_creation_input_tokens")
        return Reading(None, outputs, read, write, inputs)  # Anthropic: parts, not a total
    details = _field(usage, "input_tokens_details")
    if details is not None:  # OpenAI Responses
        return Reading(inputs, outputs, _count(details, "cached_tokens"))
    # Input and output alone (a message_delta may carry output only: input unchanged).
    return Reading(None, outputs, None, None, inputs)


def recognised(response: Any) -> bool:
    """True for a provider response or stream event, whether or not it has usage."""
    if isinstance(response, Mapping):
        return True
    return any(getattr(response, name, None) is not None for name in _SHAPES)


def finished_call(response: Any) -> Any:
    """The finished response a stream helper or raw response holds (None: not there yet,
    or ``response`` is no such object). Never consumes a stream."""
    for name in _SNAPSHOTS:
        if hasattr(type(response), name):
            try:
                return getattr(response, name)
            except (AssertionError, AttributeError, RuntimeError):  # not started yet
                return None
    parse = getattr(response, "parse", None)
    if callable(parse) and hasattr(response, "http_response"):
        if getattr(response, "is_stream", False) or getattr(response, "_is_stream", False):
            return None  # parsing would hand over the stream, not a response
        parsed = parse()
        if hasattr(parsed, "__await__"):  # an async raw response: parsing needs an await
            parsed.close()
            return None
        return parsed
    return None


def _field(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _count(obj: Any, name: str) -> int | None:
    value = _field(obj, name)
    # bool is an int subclass; a True token count is a shape we do not understand.
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None
