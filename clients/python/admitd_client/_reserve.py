"""A reservation derived from a provider request, as the caller hands it to the SDK.

``reserve(api, request)`` takes the keyword arguments of OpenAI's
``chat.completions.create`` or ``responses.create``, or Anthropic's ``messages.create``,
and returns the model, the input tokens as that provider counts them, and the most output
tokens the call may produce:

- **OpenAI chat**: ``messages`` with the cookbook's per-message overhead, image parts by
  OpenAI's tile formula, ``tools``/``functions`` by the cookbook's function formula, and a
  ``json_schema`` response format as its JSON; output ``max_completion_tokens`` or
  ``max_tokens`` (else the model's ceiling), times ``n``.
- **OpenAI Responses**: ``instructions`` and every ``input`` item counted as a chat
  message (a string ``input`` as one user message), tools and images as above; output
  ``max_output_tokens``, else the model's ceiling.
- **Anthropic messages**: ``system``, ``messages`` (text, ``tool_use``, ``tool_result``,
  images at width x height / 750), ``tools`` (their JSON, plus the tool-use system
  prompt Anthropic documents) and a structured output's schema (``output_config.format``
  or ``output_format``), counted with cl100k_base times ``CLAUDE_TOKEN_FACTOR``; output
  ``max_tokens``.

A structured-output type handed to ``parse`` (``response_format``, ``text_format``,
``output_format`` as a pydantic class) is counted as its JSON schema.

Counts that can only be estimated err high (see ``_tokens`` and ``_models``); release
charges what the provider reports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._images import anthropic_image_tokens, base64_size
from ._models import APIS, Api, default_max_output, encoding_for_model, scale_for_model
from ._tokens import TOKENS_PER_MESSAGE, TOKENS_REPLY_PRIMING, Counter, as_mapping, openai_image

# Anthropic's documented system prompt for tool use (Claude 4 models, tool_choice auto or
# none; "any"/"tool" cost less), added whenever a request has tools.
ANTHROPIC_TOOL_PROMPT = 346


@dataclass(frozen=True)
class Reservation:
    """What a provider request reserves.

    Attributes:
        api: The provider call.
        model: The request's ``model``.
        input_tokens: Input tokens, as the provider counts them (or an estimate above).
        max_output_tokens: The most output tokens the call may produce.
    """

    api: Api
    model: str
    input_tokens: int
    max_output_tokens: int


def api_of(request: Mapping[str, Any]) -> Api:
    """The provider call a request is for, from its shape: ``input`` is a Responses
    request, a Claude model or a ``system`` argument an Anthropic one, else OpenAI chat."""
    if "input" in request and "messages" not in request:
        return "openai.responses"
    if "system" in request or str(request.get("model", "")).startswith("claude"):
        return "anthropic.messages"
    return "openai.chat"


def reserve(api: Api | None, request: Mapping[str, Any]) -> Reservation:
    """The reservation for ``request`` (``api`` None: guessed by ``api_of``).

    Raises:
        TypeError: ``request`` is not a mapping with a string ``model``, or ``api`` is not
            one of ``APIS``.
    """
    if not isinstance(request, Mapping):
        raise TypeError(f"request= takes the provider call's keyword arguments, not {request!r}")
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise TypeError("request= needs the provider call's model= (a string)")
    if api is None:
        api = api_of(request)
    if api not in APIS:
        raise TypeError(f"api= must be one of {', '.join(APIS)}; got {api!r}")
    counter = Counter(encoding_for_model(model))
    if api == "openai.chat":
        tokens, output = _openai_chat(counter, model, request)
    elif api == "openai.responses":
        tokens, output = _openai_responses(counter, model, request)
    else:
        tokens, output = _anthropic(counter, model, request)
    return Reservation(api, model, tokens, output)


def _openai_chat(counter: Counter, model: str, request: Mapping[str, Any]) -> tuple[int, int]:
    images = openai_image(mini="mini" in model)
    tokens = counter.chat(request.get("messages") or (), images)
    tokens += counter.tools([*(request.get("tools") or ()), *(request.get("functions") or ())])
    tokens += _response_format(counter, request.get("response_format"))
    tokens = scale_for_model(model, tokens)  # a Claude model behind an OpenAI-style gateway
    output = _first_int(request, "max_completion_tokens", "max_tokens")
    per_choice = output if output is not None else default_max_output(model)
    return tokens, per_choice * max(1, int(request.get("n") or 1))


def _openai_responses(counter: Counter, model: str, request: Mapping[str, Any]) -> tuple[int, int]:
    images = openai_image(mini="mini" in model)
    items: list[Any] = []
    if isinstance(request.get("instructions"), str):
        items.append({"role": "developer", "content": request["instructions"]})
    given = request.get("input")
    items.extend([{"role": "user", "content": given}] if isinstance(given, str) else given or ())
    tokens = counter.chat(items, images) + counter.tools(request.get("tools") or ())
    text = request.get("text")
    if isinstance(text, Mapping):
        tokens += _response_format(counter, text.get("format"))
    tokens += _response_format(counter, request.get("text_format"))  # responses.parse
    tokens = scale_for_model(model, tokens)
    output = _first_int(request, "max_output_tokens")
    return tokens, output if output is not None else default_max_output(model)


def _anthropic(counter: Counter, model: str, request: Mapping[str, Any]) -> tuple[int, int]:
    system = request.get("system")
    text_tokens = TOKENS_REPLY_PRIMING
    image_tokens = 0
    if isinstance(system, str):
        text_tokens += TOKENS_PER_MESSAGE + counter.text(system)
    elif system:
        blocks = (counter.part(as_mapping(block), _no_image) for block in system)
        text_tokens += TOKENS_PER_MESSAGE + sum(blocks)

    def images(part: Mapping[str, Any]) -> int | None:
        nonlocal image_tokens
        if part.get("type") != "image":
            return None
        image_tokens += anthropic_image_tokens(_anthropic_image_size(part.get("source")))
        return 0  # kept apart: the factor below is for text, not for images

    for message in request.get("messages") or ():
        text_tokens += TOKENS_PER_MESSAGE
        for key, value in as_mapping(message).items():
            if key == "content" and isinstance(value, list):
                text_tokens += sum(_anthropic_block(counter, as_mapping(b), images) for b in value)
            else:
                text_tokens += counter.value(key, value, images)
    tools = request.get("tools") or ()
    text_tokens += sum(counter.json(as_mapping(tool)) for tool in tools)
    config = request.get("output_config")
    formats = (
        request.get("output_format"),
        config.get("format") if isinstance(config, Mapping) else None,
    )
    text_tokens += sum(_response_format(counter, given) for given in formats)
    tokens = scale_for_model(model, text_tokens) + image_tokens
    tokens += ANTHROPIC_TOOL_PROMPT if tools else 0
    output = _first_int(request, "max_tokens")
    return tokens, output if output is not None else default_max_output(model)


def _anthropic_block(counter: Counter, block: Mapping[str, Any], images: Any) -> int:
    """A content block: text, image, tool_use (its input as JSON), tool_result (its
    content, text or blocks), thinking; anything else as its JSON."""
    kind = block.get("type")
    if kind in ("text", "image"):
        return counter.part(block, images)
    if kind == "tool_use":
        return counter.text(str(block.get("name", ""))) + counter.json(block.get("input", {}))
    if kind == "tool_result":
        content = block.get("content")
        if isinstance(content, list):
            return sum(_anthropic_block(counter, as_mapping(b), images) for b in content)
        return counter.text(content) if isinstance(content, str) else 0
    if kind == "thinking":
        return counter.text(str(block.get("thinking", "")))
    return counter.json(dict(block))


def _anthropic_image_size(source: Any) -> tuple[int, int] | None:
    if isinstance(source, Mapping) and source.get("type") == "base64":
        data = source.get("data")
        return base64_size(data) if isinstance(data, str) else None
    return None  # by URL, or a file id: the largest bill


def _no_image(part: Mapping[str, Any]) -> int | None:
    return None


def _response_format(counter: Counter, response_format: Any) -> int:
    """A structured-output schema is shown to the model: counted as its JSON (a pydantic
    class, as ``parse`` takes it: its JSON schema)."""
    if callable(getattr(response_format, "model_json_schema", None)):
        return counter.json(response_format.model_json_schema())
    if not isinstance(response_format, Mapping):
        return 0
    schema = response_format.get("json_schema", response_format.get("schema"))
    return counter.json(schema) if schema is not None else 0


def _first_int(request: Mapping[str, Any], *names: str) -> int | None:
    for name in names:
        value = request.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 0:
                raise ValueError(f"{name} must not be negative, got {value}")
            return value
    return None
