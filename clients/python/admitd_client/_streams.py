"""Streams of a wrapped SDK call: each event is recorded, and the lease released at the end.

The proxy holds the lease (renewed in the background, ``client.hold``) while the caller
reads the stream, records every event (the final usage wins, as in ``Lease.record``), and
releases when the stream ends, fails, or is closed early (outcome CANCELLED: the caller
stopped reading). An OpenAI chat stream whose caller did not ask for
``stream_options.include_usage`` gets it turned on by the wrapper, and the extra usage-only
chunk is kept from the caller, who sees the stream it asked for. A stream that still ends
without usage (a provider that ignores the option) is charged the reservation's input and
the output text counted with tiktoken.

Consume the stream or close it (``with`` / ``async with`` does): an abandoned stream
keeps its lease until admitd's lease TTL.
"""

from __future__ import annotations

import contextlib
from typing import Any

from ._lease import Lease
from ._models import encoding_for_model, scale_for_model
from ._outcome import Outcome
from ._tokens import Counter
from ._usage import finished_call


class _Observer:
    """What every proxy does with an event: record it, keep its text, decide to hide it."""

    def __init__(self, lease: Lease, hide_usage: bool) -> None:
        self.lease = lease
        self.hide_usage = hide_usage
        self.text: list[str] = []
        self.done = False
        self.finished_normally = False

    def observe(self, event: Any) -> bool:
        """Record ``event``; True when the caller should see it."""
        self.lease.record(event)
        self.text.append(_text_of(event))
        usage_only = getattr(event, "choices", None) == [] and getattr(event, "usage", None)
        return not (self.hide_usage and usage_only)

    def before_release(self, error: BaseException | None, stream: Any = None) -> None:
        """The last word on usage: a helper's snapshot, else the text counted."""
        self.done = True
        if stream is not None:
            finished = finished_call(stream)
            if finished is not None:
                self.lease.record(finished)
                self.text.extend(_snapshot_text(finished))
        if self.lease._reading.output_tokens is None:
            model = self.lease.model or ""
            counted = Counter(encoding_for_model(model)).text("".join(self.text))
            self.lease.record(output_tokens=scale_for_model(model, counted))
        if error is None and self.lease.outcome is None and not self.finished_normally:
            self.lease.outcome = Outcome.CANCELLED


def _text_of(event: Any) -> str:
    """The generated text an event carries (chat deltas, Responses and Anthropic deltas)."""
    pieces: list[str] = []
    for choice in getattr(event, "choices", None) or ():
        delta = getattr(choice, "delta", None)
        pieces.append(getattr(delta, "content", None) or "")
        for call in getattr(delta, "tool_calls", None) or ():
            pieces.append(getattr(getattr(call, "function", None), "arguments", None) or "")
    kind = getattr(event, "type", None)
    if kind in ("response.output_text.delta", "response.function_call_arguments.delta"):
        pieces.append(getattr(event, "delta", "") or "")
    if kind == "content_block_delta":
        delta = getattr(event, "delta", None)
        pieces.append(getattr(delta, "text", None) or getattr(delta, "partial_json", None) or "")
    return "".join(p for p in pieces if isinstance(p, str))


def _snapshot_text(snapshot: Any) -> list[str]:
    """The text a helper's snapshot of an OpenAI chat completion holds so far (its events
    went to the caller unseen)."""
    messages = (getattr(c, "message", None) for c in getattr(snapshot, "choices", None) or ())
    return [text for m in messages if isinstance(text := getattr(m, "content", None), str)]


class SyncStream:
    """An SDK stream (``Stream`` of chunks or events), admitted; iterate it as the SDK's."""

    def __init__(self, stream: Any, lease: Lease, hold: Any, hide_usage: bool) -> None:
        self._stream = stream
        self._iterator = iter(stream)
        self._hold: contextlib.AbstractContextManager[Lease] = hold
        self._seen = _Observer(lease, hide_usage)
        self._hold.__enter__()
        self.lease = lease
        """The lease the stream holds; released when it ends."""

    def __iter__(self) -> SyncStream:
        return self

    def __next__(self) -> Any:
        while True:
            try:
                event = next(self._iterator)
            except StopIteration:
                self._seen.finished_normally = True
                self._release(None)
                raise
            except BaseException as error:
                self._release(error)
                raise
            if self._seen.observe(event):
                return event

    def close(self) -> None:
        """Stop reading: the connection is closed and the lease released (CANCELLED)."""
        try:
            self._stream.close()
        finally:
            self._release(None)

    def __enter__(self) -> SyncStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)  # response, request_id, ...

    def _release(self, error: BaseException | None, source: Any = None) -> None:
        if self._seen.done:
            return
        self._seen.before_release(error, source)
        if error is None:
            self._hold.__exit__(None, None, None)
        else:
            self._hold.__exit__(type(error), error, error.__traceback__)


class AsyncStream:
    """An SDK ``AsyncStream``, admitted; iterate it with ``async for`` as the SDK's."""

    def __init__(self, stream: Any, lease: Lease, hold: Any, hide_usage: bool) -> None:
        self._stream = stream
        self._iterator = stream.__aiter__()
        self._hold: contextlib.AbstractAsyncContextManager[Lease] = hold
        self._seen = _Observer(lease, hide_usage)
        self.lease = lease
        """The lease the stream holds; released when it ends."""

    async def start(self) -> AsyncStream:
        await self._hold.__aenter__()
        return self

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> Any:
        while True:
            try:
                event = await self._iterator.__anext__()
            except StopAsyncIteration:
                self._seen.finished_normally = True
                await self._release(None)
                raise
            except BaseException as error:
                await self._release(error)
                raise
            if self._seen.observe(event):
                return event

    async def close(self) -> None:
        """Stop reading: the connection is closed and the lease released (CANCELLED)."""
        try:
            await self._stream.close()
        finally:
            await self._release(None)

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    async def _release(self, error: BaseException | None, source: Any = None) -> None:
        if self._seen.done:
            return
        self._seen.before_release(error, source)
        if error is None:
            await self._hold.__aexit__(None, None, None)
        else:
            await self._hold.__aexit__(type(error), error, error.__traceback__)
