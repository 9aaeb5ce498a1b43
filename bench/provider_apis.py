"""The simulated provider's LLM APIs, in the shapes of the real ones.

- ``POST /v1/chat/completions`` (OpenAI): a ``chat.completion``, or with ``stream: true``
  server-sent ``chat.completion.chunk`` events ending in ``data: [DONE]``; usage (with
  ``prompt_tokens_details.cached_tokens``) only in a last, choice-less chunk when
  ``stream_options.include_usage`` is set, and then ``usage: null`` in every other chunk.
- ``POST /v1/responses`` (OpenAI Responses): a ``response`` object, or streamed events
  from ``response.created`` to ``response.completed``, which carries the usage.
- ``POST /v1/messages`` (Anthropic): a ``message``, or streamed ``message_start`` (input
  and cache usage), content block events, ``message_delta`` (output usage), ``message_stop``.

The reply is the configured text (``/reset`` ``reply``), cut at the request's output limit
(``finish_reason`` / ``stop_reason`` then says so). Input is counted by ``provider_count``.
Faults queued with ``POST /faults`` (``{"faults": [...]}``) answer the next API requests
in order instead: ``{"status": 429, "retry_after": "2", "retry_after_ms": "1500"}``, 503,
Anthropic's 529 ``overloaded_error``, or ``{"hang": true}`` (no answer until the client
gives up and closes the connection).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from bench.provider_count import (
    PromptCache,
    anthropic_segments,
    encoding_for,
    openai_segments,
    openai_tools,
)

Answer = tuple[int, dict[str, str], Any]
"""(status, extra headers, a JSON document or an async iterator of SSE event texts)."""

_ERROR_TYPES = {429: "rate_limit_error", 529: "overloaded_error", 503: "api_error"}


@dataclass
class Reply:
    """What a call answers: the text, its output tokens, and why it stopped."""

    text: str
    output_tokens: int
    truncated: bool


@dataclass
class Apis:
    """The API endpoints' state: the reply text, queued faults, the cache, every call."""

    reply: str = "Hello! I am a simulated model."
    faults: list[dict[str, Any]] = field(default_factory=list)
    cache: PromptCache = field(default_factory=PromptCache)
    calls: list[dict[str, Any]] = field(default_factory=list)
    serial: int = 0

    def reset(self, conf: dict[str, Any]) -> None:
        self.reply = str(conf.get("reply", Apis.reply))
        self.faults, self.cache, self.calls = [], PromptCache(), []

    def fault(self, api: str) -> dict[str, Any] | None:
        if not self.faults:
            return None
        fault = self.faults.pop(0)
        self.calls.append({"api": api, "fault": fault})
        return fault

    def error(self, api: str, fault: dict[str, Any]) -> Answer:
        status = int(fault.get("status", 429))
        headers = {}
        if "retry_after" in fault:
            headers["retry-after"] = str(fault["retry_after"])
        if "retry_after_ms" in fault:
            headers["retry-after-ms"] = str(fault["retry_after_ms"])
        kind = _ERROR_TYPES.get(status, "api_error")
        message = f"simulated {kind} ({status})"
        if api == "anthropic.messages":
            return status, headers, {"type": "error", "error": {"type": kind, "message": message}}
        code = "rate_limit_exceeded" if status == 429 else None
        error = {"message": message, "type": kind, "param": None, "code": code}
        return status, headers, {"error": error}

    def _reply(self, model: str, limit: int | None) -> Reply:
        enc = encoding_for(model)
        tokens = enc.encode(self.reply)
        if limit is not None and len(tokens) > limit:
            return Reply(enc.decode(tokens[:limit]), limit, True)
        return Reply(self.reply, len(tokens), False)

    def _id(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}{self.serial:08d}"

    def _record(self, api: str, body: dict[str, Any], usage: dict[str, int]) -> None:
        self.calls.append(
            {"api": api, "model": body.get("model"), "stream": bool(body.get("stream")), **usage}
        )

    # OpenAI chat completions ------------------------------------------------------------

    def chat(self, body: dict[str, Any]) -> Answer:
        model = body["model"]
        counted = self.cache.openai(openai_segments(model, body.get("messages") or []))
        tools = [*(body.get("tools") or []), *(body.get("functions") or [])]
        prompt = counted.total + openai_tools(model, tools)
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        reply = self._reply(model, limit)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": reply.output_tokens,
            "total_tokens": prompt + reply.output_tokens,
            "prompt_tokens_details": {"cached_tokens": counted.cache_read, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }
        self._record("openai.chat", body, _usage(prompt, reply, counted.cache_read))
        finish = "length" if reply.truncated else "stop"
        head = {"id": self._id("chatcmpl-"), "created": int(time.time()), "model": model}
        if not body.get("stream"):
            message = {"role": "assistant", "content": reply.text, "refusal": None}
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            return 200, {}, {**head, "object": "chat.completion", "choices": [choice],
                             "usage": usage, "service_tier": "default"}  # fmt: skip
        include = bool((body.get("stream_options") or {}).get("include_usage"))
        return 200, {}, self._chat_stream(head, reply, finish, usage if include else None)

    async def _chat_stream(
        self, head: dict[str, Any], reply: Reply, finish: str, usage: dict[str, Any] | None
    ) -> AsyncIterator[str]:
        chunk = {**head, "object": "chat.completion.chunk"}
        extra = {"usage": None} if usage is not None else {}

        def choice(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

        first = choice({"role": "assistant", "content": ""}, None)
        yield _data({**chunk, "choices": [first], **extra})
        for piece in _pieces(reply.text):
            yield _data({**chunk, "choices": [choice({"content": piece}, None)], **extra})
        yield _data({**chunk, "choices": [choice({}, finish)], **extra})
        if usage is not None:
            yield _data({**chunk, "choices": [], "usage": usage})
        yield "data: [DONE]\n\n"

    # OpenAI Responses -------------------------------------------------------------------

    def responses(self, body: dict[str, Any]) -> Answer:
        model = body["model"]
        items: list[dict[str, Any]] = []
        if isinstance(body.get("instructions"), str):
            items.append({"role": "developer", "content": body["instructions"]})
        given = body.get("input")
        items.extend(
            [{"role": "user", "content": given}] if isinstance(given, str) else given or []
        )
        counted = self.cache.openai(openai_segments(model, items))
        prompt = counted.total + openai_tools(model, body.get("tools") or [])
        reply = self._reply(model, body.get("max_output_tokens"))
        usage = {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": counted.cache_read},
            "output_tokens": reply.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + reply.output_tokens,
        }
        self._record("openai.responses", body, _usage(prompt, reply, counted.cache_read))
        message_id = self._id("msg_")
        text = {"type": "output_text", "text": reply.text, "annotations": []}
        item = {"type": "message", "id": message_id, "status": "completed",
                "role": "assistant", "content": [text]}  # fmt: skip
        status = "incomplete" if reply.truncated else "completed"
        response = {
            "id": self._id("resp_"), "object": "response", "created_at": int(time.time()),
            "status": status, "model": model, "output": [item], "usage": usage,
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if reply.truncated else None,
        }  # fmt: skip
        if not body.get("stream"):
            return 200, {}, response
        return 200, {}, self._responses_stream(response, item, reply.text)

    async def _responses_stream(
        self, response: dict[str, Any], item: dict[str, Any], text: str
    ) -> AsyncIterator[str]:
        pending = {**response, "status": "in_progress", "output": [], "usage": None}
        events: list[dict[str, Any]] = [
            {"type": "response.created", "response": pending},
            {"type": "response.in_progress", "response": pending},
            {"type": "response.output_item.added", "output_index": 0,
             "item": {**item, "status": "in_progress", "content": []}},
            {"type": "response.content_part.added", "item_id": item["id"], "output_index": 0,
             "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}},
        ]  # fmt: skip
        for piece in _pieces(text):
            events.append({"type": "response.output_text.delta", "item_id": item["id"],
                           "output_index": 0, "content_index": 0, "delta": piece})  # fmt: skip
        events += [
            {"type": "response.output_text.done", "item_id": item["id"], "output_index": 0,
             "content_index": 0, "text": text},
            {"type": "response.content_part.done", "item_id": item["id"], "output_index": 0,
             "content_index": 0, "part": item["content"][0]},
            {"type": "response.output_item.done", "output_index": 0, "item": item},
            {"type": "response.completed", "response": response},
        ]  # fmt: skip
        for number, event in enumerate(events):
            yield _event(event["type"], {**event, "sequence_number": number})

    # Anthropic messages -----------------------------------------------------------------

    def messages(self, body: dict[str, Any]) -> Answer:
        model = body["model"]
        counted = self.cache.anthropic(anthropic_segments(body))
        reply = self._reply(model, body.get("max_tokens"))
        usage = {  # Anthropic counts input beside the cache, not including it
            "input_tokens": counted.total - counted.cache_read - counted.cache_write,
            "cache_creation_input_tokens": counted.cache_write,
            "cache_read_input_tokens": counted.cache_read,
            "output_tokens": reply.output_tokens,
        }
        seen = _usage(counted.total, reply, counted.cache_read, counted.cache_write)
        self._record("anthropic.messages", body, seen)
        stop = "max_tokens" if reply.truncated else "end_turn"
        message = {"id": self._id("msg_"), "type": "message", "role": "assistant",
                   "model": model, "content": [{"type": "text", "text": reply.text}],
                   "stop_reason": stop, "stop_sequence": None, "usage": usage}  # fmt: skip
        if not body.get("stream"):
            return 200, {}, message
        return 200, {}, self._messages_stream(message, reply.text)

    async def _messages_stream(self, message: dict[str, Any], text: str) -> AsyncIterator[str]:
        usage = message["usage"]
        start = {**message, "content": [], "stop_reason": None,
                 "usage": {**usage, "output_tokens": 1}}  # fmt: skip
        yield _event("message_start", {"type": "message_start", "message": start})
        block = {"type": "text", "text": ""}
        begin = {"type": "content_block_start", "index": 0, "content_block": block}
        yield _event("content_block_start", begin)
        yield _event("ping", {"type": "ping"})
        for piece in _pieces(text):
            delta = {"type": "content_block_delta", "index": 0,
                     "delta": {"type": "text_delta", "text": piece}}  # fmt: skip
            yield _event("content_block_delta", delta)
        yield _event("content_block_stop", {"type": "content_block_stop", "index": 0})
        delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
        final = {"output_tokens": usage["output_tokens"]}
        yield _event("message_delta", {"type": "message_delta", "delta": delta, "usage": final})
        yield _event("message_stop", {"type": "message_stop"})


def _usage(inputs: int, reply: Reply, read: int, write: int = 0) -> dict[str, int]:
    """A call as ``/stats`` lists it (input includes the cached tokens)."""
    return {"input_tokens": inputs, "output_tokens": reply.output_tokens,
            "cache_read": read, "cache_write": write}  # fmt: skip


def _pieces(text: str) -> list[str]:
    """The reply in a few deltas, as a stream sends it."""
    words = text.split(" ")
    return [word + (" " if i < len(words) - 1 else "") for i, word in enumerate(words)]


def _data(doc: dict[str, Any]) -> str:
    return f"data: {json.dumps(doc)}\n\n"


def _event(name: str, doc: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(doc)}\n\n"
