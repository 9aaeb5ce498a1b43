"""A simulated LLM provider: a real HTTP/1.1 server process (stdlib asyncio, keep-alive).

``python -m bench.provider`` prints ``provider listening on 127.0.0.1 (port N)``. It is the
one simulated provider of the benchmarks and the tests: the official ``openai`` and
``anthropic`` SDKs talk to it (``base_url=http://127.0.0.1:N/v1``, any API key).

- ``POST /v1/chat/completions``, ``/v1/responses`` (OpenAI) and ``/v1/messages``
  (Anthropic), streamed or not, with input counted as each provider documents and prompt
  caching: see ``provider_apis`` and ``provider_count``. ``POST /faults`` queues scripted
  faults (429 with ``retry-after``/``retry-after-ms``, 503, 529, a hang, a stream that stalls
  after some events) for the next of these calls; ``/stats`` lists every call as ``calls``
  (api, model, stream, input, output and cache tokens, or the fault that answered it). With
  ``limit_apis`` (``/reset``) they are limited as ``/v1/complete`` is, below: a call
  reserves its input plus its output limit (``max_tokens``...) and waits its latency, or
  gets 429 at once (listed as ``rate_limited``); each call lists ``at``, seconds since the
  reset when it arrived, and ``cost``, what it asked the bucket for.

- ``POST /v1/complete`` ``{"tenant", "input_tokens", "max_output_tokens", "output_tokens"}``:
  like real providers it charges ``input + max_output`` to a token bucket (capacity one
  minute of tokens, refilled continuously) when the call starts and refunds the unused output
  when it ends; a call that does not fit the bucket, or exceeds the concurrency limit, gets
  ``429`` at once. Latency is ``base_ms + per_token_ms * output_tokens``.
- ``POST /reset`` ``{"tpm", "concurrency", "base_ms", "per_token_ms", "drain", "reply",
  "limit_apis"}``: new limits, counters zeroed, calls, faults and the prompt cache forgotten;
  ``drain`` empties the bucket (so a short run is not one initial burst); ``reply`` is the
  text the LLM APIs answer; ``limit_apis`` puts them under the limits too.
- ``GET /stats``: counters since the reset (the ground truth for overshoot and goodput).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

from bench.provider_apis import Apis


class Provider:
    def __init__(self) -> None:
        self.apis = Apis()
        self.reset({})

    def reset(self, conf: dict[str, Any]) -> None:
        self.apis.reset(conf)
        self.tpm = float(conf.get("tpm", 600_000))
        self.concurrency = int(conf.get("concurrency", 16))
        self.base_ms = float(conf.get("base_ms", 5.0))
        self.per_token_ms = float(conf.get("per_token_ms", 0.05))
        self.limit_apis = bool(conf.get("limit_apis", False))
        self.rate = self.tpm / 60.0
        self.level = 0.0 if conf.get("drain") else self.tpm
        self.at = time.monotonic()
        self.started = self.at
        self.in_flight = 0
        self.max_in_flight = 0
        self.ok = 0
        self.rejected_tpm = 0
        self.rejected_concurrency = 0
        self.accepted_tokens = 0.0  # net of refunds: what the provider really served
        self.min_level = self.level

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.tpm, self.level + (now - self.at) * self.rate)
        self.at = now

    async def complete(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        input_tokens = int(body.get("input_tokens", 0))
        max_output = int(body.get("max_output_tokens", 0))
        output = min(int(body.get("output_tokens", max_output)), max_output)
        refused = self.take(input_tokens + max_output)
        if refused is not None:
            return 429, refused
        try:
            await asyncio.sleep(self.latency(output))
        finally:
            self.give_back(max_output - output)
        self.served(input_tokens, output)
        return 200, {"input_tokens": input_tokens, "output_tokens": output}

    def take(self, cost: int) -> dict[str, Any] | None:
        """Start a call of ``cost`` tokens; the 429 body when the limits refuse it."""
        self._refill()
        if self.in_flight >= self.concurrency:
            self.rejected_concurrency += 1
            return {"reason": "concurrency", "retry_after": 0.05}
        if cost > self.level:
            self.rejected_tpm += 1
            return {"reason": "tokens", "retry_after": round((cost - self.level) / self.rate, 3)}
        self.level -= cost
        self.min_level = min(self.min_level, self.level)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return None

    def give_back(self, unused: int) -> None:
        """End a call that ``take`` started, refunding the output it did not produce."""
        self.in_flight -= 1
        self._refill()
        self.level = min(self.tpm, self.level + unused)

    def served(self, input_tokens: int, output: int) -> None:
        self.ok += 1
        self.accepted_tokens += input_tokens + output

    def latency(self, output: int) -> float:
        return (self.base_ms + self.per_token_ms * output) / 1000

    def stats(self) -> dict[str, Any]:
        self._refill()
        return {
            "elapsed": time.monotonic() - self.started,
            "tpm": self.tpm,
            "concurrency": self.concurrency,
            "ok": self.ok,
            "rejected_tpm": self.rejected_tpm,
            "rejected_concurrency": self.rejected_concurrency,
            "accepted_tokens": self.accepted_tokens,
            "min_level": self.min_level,
            "max_in_flight": self.max_in_flight,
            "calls": self.apis.calls,
        }


Request = tuple[str, str, dict[str, str], bytes]
_API_PATHS = {
    "/v1/chat/completions": "openai.chat",
    "/v1/responses": "openai.responses",
    "/v1/messages": "anthropic.messages",
}
_REASONS = {200: "OK", 404: "Not Found", 429: "Too Many Requests", 503: "Service Unavailable"}
# How long a scripted hang waits for the client to give up and close the connection.
HANG_LIMIT = 60.0


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    line = await reader.readline()
    if not line:
        return None
    method, target, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while True:
        header = await reader.readline()
        if header in (b"\r\n", b"\n", b""):
            break
        name, _, value = header.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return method, target.partition("?")[0], headers, body


def response(status: int, doc: Any, headers: dict[str, str] | None = None) -> bytes:
    body = json.dumps(doc).encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: application/json\r\n"
    )
    for name, value in (headers or {}).items():
        head += f"{name}: {value}\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def send_events(writer: asyncio.StreamWriter, events: AsyncIterator[str]) -> None:
    """A server-sent event stream, in HTTP/1.1 chunks (one per event)."""
    head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    writer.write((head + "Transfer-Encoding: chunked\r\n\r\n").encode())
    async for event in events:
        data = event.encode()
        writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        await writer.drain()
    writer.write(b"0\r\n\r\n")


async def answer_api(
    provider: Provider, api: str, body: dict[str, Any], reader: asyncio.StreamReader
) -> tuple[int, dict[str, str], Any] | None:
    """An LLM API's answer, or None for a scripted hang (the client gave up)."""
    arrived = time.monotonic() - provider.started
    fault = provider.apis.fault(api)
    if fault is not None and fault.get("hang"):
        with contextlib.suppress(TimeoutError):  # nothing is sent until the client gives up
            await asyncio.wait_for(reader.read(), HANG_LIMIT)
        return None
    if fault is not None and "stall_after" not in fault:
        return provider.apis.error(api, fault)
    handler = {
        "openai.chat": provider.apis.chat,
        "openai.responses": provider.apis.responses,
        "anthropic.messages": provider.apis.messages,
    }[api]
    status, headers, out = handler(body)
    call = provider.apis.calls[-1]
    if fault is not None:  # the call is listed once, with the fault that stalls it
        provider.apis.calls.pop(-2)
        call["fault"] = fault
        return status, headers, _stalled(out, int(fault["stall_after"]), reader)
    if not provider.limit_apis:
        return status, headers, out
    output = int(call["output_tokens"])
    cost = int(call["input_tokens"]) + max(output, _output_limit(body))
    call.update(at=round(arrived, 4), cost=cost)
    refused = provider.take(cost)
    if refused is not None:
        provider.apis.calls[-1] = {"api": api, "at": call["at"], "cost": cost,
                                   "rate_limited": refused["reason"]}  # fmt: skip
        return provider.apis.error(api, {"status": 429, "retry_after": refused["retry_after"]})
    try:
        await asyncio.sleep(provider.latency(output))
    except BaseException:
        provider.give_back(cost - int(call["input_tokens"]))
        raise
    if isinstance(out, dict):
        provider.give_back(cost - int(call["input_tokens"]) - output)
        provider.served(int(call["input_tokens"]), output)
        return status, headers, out
    return status, headers, _limited(provider, out, int(call["input_tokens"]), output, cost)


def _output_limit(body: dict[str, Any]) -> int:
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        if isinstance(body.get(name), int):
            return int(body[name])
    return 0


async def _limited(
    provider: Provider, events: AsyncIterator[str], input_tokens: int, output: int, cost: int
) -> AsyncIterator[str]:
    """A limited call's stream: it holds its place under the limits until sent."""
    try:
        async for event in events:
            yield event
    finally:
        provider.give_back(cost - input_tokens - output)
    provider.served(input_tokens, output)


async def _stalled(
    events: AsyncIterator[str], after: int, reader: asyncio.StreamReader
) -> AsyncIterator[str]:
    """The first ``after`` events of a stream, then nothing until the client gives up."""
    sent = 0
    async for event in events:
        if sent == after:
            break
        yield event
        sent += 1
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(reader.read(), HANG_LIMIT)


async def main() -> None:
    provider = Provider()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await read_request(reader)
                if request is None:
                    break
                method, path, _, body = request
                doc = json.loads(body) if body else {}
                extra: dict[str, str] = {}
                out: Any
                if method == "POST" and path in _API_PATHS:
                    answer = await answer_api(provider, _API_PATHS[path], doc, reader)
                    if answer is None:
                        break  # a hang: the client closed the connection
                    status, extra, out = answer
                    if not isinstance(out, dict):
                        await send_events(writer, out)
                        await writer.drain()
                        continue
                elif method == "POST" and path == "/v1/complete":
                    status, out = await provider.complete(doc)
                elif method == "POST" and path == "/faults":
                    provider.apis.faults.extend(doc.get("faults", []))
                    status, out = 200, {"queued": len(provider.apis.faults)}
                elif method == "POST" and path == "/reset":
                    provider.reset(doc)
                    status, out = 200, provider.stats()
                elif path == "/stats":
                    status, out = 200, provider.stats()
                else:
                    status, out = 404, {"error": path}
                writer.write(response(status, out, extra))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            return  # shutting down: the connection goes with the process
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"provider listening on 127.0.0.1 (port {port})", flush=True)
    async with server:
        await stop.wait()


class Client:
    """A keep-alive HTTP/1.1 connection to the provider (one per worker)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def call(self, method: str, path: str, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self._reader is not None
        body = json.dumps(doc).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: provider\r\nContent-Length: {len(body)}\r\n\r\n"
        self._writer.write(head.encode() + body)
        await self._writer.drain()
        status_line = await self._reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while True:
            header = await self._reader.readline()
            if header in (b"\r\n", b"\n", b""):
                break
            name, _, value = header.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        payload = await self._reader.readexactly(length)
        return status, json.loads(payload)

    async def complete(
        self, tenant: str, input_tokens: int, max_output: int, output: int
    ) -> tuple[int, dict[str, Any]]:
        """One simulated LLM call; the provider reports ``output`` tokens as produced."""
        body = {
            "tenant": tenant,
            "input_tokens": input_tokens,
            "max_output_tokens": max_output,
            "output_tokens": output,
        }
        return await self.call("POST", "/v1/complete", body)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


async def control(port: int, path: str, doc: dict[str, Any] | None = None) -> dict[str, Any]:
    """One control call (``/reset``, ``/stats``) from the harness."""
    client = Client(port)
    try:
        _, out = await client.call("POST" if doc is not None else "GET", path, doc or {})
        return out
    finally:
        await client.close()


if __name__ == "__main__":
    asyncio.run(main())
