"""Helpers of the Python client's tests: a real admitd on a socket, and what the client sent.

The client under test talks to a real server (support/harness.py: port 0, ManualClock). What it
sent is observed through a gRPC interceptor on a channel the test owns and hands to the
client; time never passes for real: sleeps are injected and advance the server's clock.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, cast

import grpc
import pytest

from support import ROOT
from support.harness import Harness, start_harness

DATA = ROOT / "tests" / "client" / "data"

# gpt-4o counts with o200k_base, gpt-4 with cl100k_base (tiktoken's model table); the
# second pool has a token bucket of 600 tokens refilling at 10 tokens/s.
CONFIG: dict[str, Any] = {
    "lease": {"ttl": "30s"},
    "pools": [
        {
            "name": "openai/gpt-4o",
            "max_concurrency": 1,
            "price": {"input_per_million": 2.5, "output_per_million": 10},
        },
        {"name": "openai/gpt-4", "tokens_per_minute": 600},
    ],
    "tenants": [{"name": "a"}, {"name": "b"}],
}
GPT4O = "openai/gpt-4o"
GPT4 = "openai/gpt-4"

# The OpenAI cookbook's example conversation ("How to count tokens with tiktoken",
# section 6): the API itself reported 129 prompt tokens for gpt-4 and 124 for gpt-4o.
COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on "
        "opportunities for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the "
        "client deliverable.",
    },
]
COOKBOOK_TOKENS = {"cl100k_base": 129, "o200k_base": 124}

# An OpenAI function definition: flat parameters, one with an enum.
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city"},
                "unit": {"type": "string", "enum": ["c", "f"]},
            },
            "required": ["city"],
        },
    },
}
POOL_METADATA = {
    "scope": "pool",
    "pool": GPT4O,
    "limit": "max_concurrency",
    "limit_value": "1",
    "requested": "1",
}


class ProviderRateLimit(Exception):
    """Shaped like openai.RateLimitError and anthropic.RateLimitError (both APIStatusError
    subclasses with ``status_code`` 429 and the httpx ``response``); neither SDK is imported,
    and the name says nothing: the status code is what is recognised. ``headers``: the
    response's (default: a 20 s ``retry-after``, which pauses the pool when reported)."""

    def __init__(self, headers: dict[str, str] | None = None) -> None:
        super().__init__("Error code: 429 - {'error': {'type': 'rate_limit_error'}}")
        self.status_code = 429
        self.response = SimpleNamespace(
            status_code=429, headers={"retry-after": "20"} if headers is None else headers
        )


@contextlib.asynccontextmanager
async def serve(config: dict[str, Any] | None = None) -> AsyncIterator[Harness]:
    """A real admitd (memory backend, ManualClock) on a free port."""
    harness = await start_harness(config if config is not None else CONFIG)
    try:
        yield harness
    finally:
        await harness.close()


def target(harness: Harness) -> str:
    return f"127.0.0.1:{harness.server.port}"


def dead_target() -> str:
    """An address nobody listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


def load(name: str) -> Any:
    """A JSON fixture from tests/client/data (``.jsonl``: a list of stream events)."""
    text = (DATA / name).read_text()
    if name.endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


def png(width: int, height: int) -> bytes:
    """A real, all-black PNG image of this size (greyscale, 8 bits)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\0" * ((width + 1) * height))
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def png_base64(width: int, height: int) -> str:
    return base64.b64encode(png(width, height)).decode()


def approx(value: float) -> float:
    """``pytest.approx(value)`` where a float is expected (a field of a result dataclass); it
    compares equal to floats within pytest's usual tolerance."""
    return cast(float, pytest.approx(value))


def as_object(value: Any) -> Any:
    """The dict shape of a response as an SDK-like object (attributes, not keys)."""
    if isinstance(value, dict):
        return SimpleNamespace(**{key: as_object(item) for key, item in value.items()})
    if isinstance(value, list):
        return [as_object(item) for item in value]
    return value


@dataclass(frozen=True)
class Sent:
    """One RPC attempt as the client sent it."""

    method: str
    request: Any
    timeout: float | None
    metadata: tuple[tuple[str, str], ...]


def _sent(details: Any, request: Any) -> Sent:
    method = details.method.decode() if isinstance(details.method, bytes) else details.method
    return Sent(method.rsplit("/", 1)[-1], request, details.timeout, tuple(details.metadata or ()))


class AioRecorder(grpc.aio.UnaryUnaryClientInterceptor):
    """Records every unary RPC attempt on a grpc.aio channel."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        self.sent.append(_sent(client_call_details, request))
        return await continuation(client_call_details, request)

    def methods(self) -> list[str]:
        return [sent.method for sent in self.sent]

    def last(self, method: str) -> Sent:
        return [sent for sent in self.sent if sent.method == method][-1]


class SyncRecorder(grpc.UnaryUnaryClientInterceptor):
    """Records every unary RPC attempt on a blocking channel."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self._lock = threading.Lock()

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        with self._lock:
            self.sent.append(_sent(client_call_details, request))
        return continuation(client_call_details, request)

    def methods(self) -> list[str]:
        with self._lock:
            return [sent.method for sent in self.sent]

    def last(self, method: str) -> Sent:
        with self._lock:
            return [sent for sent in self.sent if sent.method == method][-1]


def aio_channel(address: str) -> tuple[grpc.aio.Channel, AioRecorder]:
    recorder = AioRecorder()
    return grpc.aio.insecure_channel(address, interceptors=[recorder]), recorder


def sync_channel(address: str) -> tuple[grpc.Channel, SyncRecorder]:
    recorder = SyncRecorder()
    return grpc.intercept_channel(grpc.insecure_channel(address), recorder), recorder


class Jitter:
    """Injected ``random``: hands out the given values in turn and counts the draws."""

    def __init__(self, *values: float) -> None:
        self._values = iter(values)
        self.draws = 0

    def __call__(self) -> float:
        self.draws += 1
        return next(self._values)


class ClockSleep:
    """Injected async sleep: advances the server's ManualClock by the time asked for.

    After ``limit`` sleeps it sets ``done`` and never returns (until cancelled), so no more
    time passes while the test looks at the result.
    """

    def __init__(self, harness: Harness, limit: int) -> None:
        self.harness = harness
        self.limit = limit
        self.slept: list[float] = []
        self.done = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        if len(self.slept) >= self.limit:
            self.done.set()
            await asyncio.Future()  # asleep until the lease block cancels its renewal
        self.slept.append(seconds)
        await self.harness.advance(seconds)


class ThreadClockSleep:
    """Injected blocking sleep for the sync client's renewal thread: advances the server's
    ManualClock (on the test's event loop) by the time asked for.

    After ``limit`` sleeps it sets ``done`` and blocks until ``finish`` is set, so no more
    time passes while the test looks at the result.
    """

    def __init__(self, harness: Harness, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self.harness = harness
        self.loop = loop
        self.limit = limit
        self.slept: list[float] = []
        self.done = threading.Event()
        self.finish = threading.Event()

    def __call__(self, seconds: float) -> None:
        if len(self.slept) >= self.limit:
            self.done.set()
            self.finish.wait()
            return
        self.slept.append(seconds)
        asyncio.run_coroutine_threadsafe(self.harness.advance(seconds), self.loop).result()


class FakeProvider:
    """The simulated provider (``python -m bench.provider``) as a real HTTP server process.

    The official SDKs talk to it at ``openai_url`` / ``anthropic_url``; ``reset``,
    ``faults`` and ``calls`` script it and read what it saw.
    """

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.provider"],
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env=env,
        )
        assert self.process.stdout is not None
        line, deadline = b"", time.monotonic() + 60
        while b"\n" not in line and time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], 0.1)
            if ready:
                line += os.read(self.process.stdout.fileno(), 256)
        found = re.search(rb"\(port (\d+)\)", line)
        if found is None:
            self.close()
            raise RuntimeError(f"the fake provider did not start: {line!r}")
        self.port = int(found.group(1))
        self.openai_url = f"http://127.0.0.1:{self.port}/v1"
        self.anthropic_url = f"http://127.0.0.1:{self.port}"

    def _post(self, path: str, doc: dict[str, Any] | None) -> Any:
        data = None if doc is None else json.dumps(doc).encode()
        request = urllib.request.Request(f"{self.anthropic_url}{path}", data=data)
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())

    def reset(self, **conf: Any) -> None:
        self._post("/reset", conf)

    def faults(self, *faults: dict[str, Any]) -> None:
        """Answer the next API calls, in order, with these faults."""
        self._post("/faults", {"faults": list(faults)})

    def calls(self) -> list[dict[str, Any]]:
        """Every API call since the reset: usage it reported, or the fault it got."""
        return list(self._post("/stats", None)["calls"])

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()
