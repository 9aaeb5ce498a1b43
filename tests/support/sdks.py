"""What the tests of the wrapped official SDKs share (tests/client/test_client_sdk_*.py).

The official ``openai`` and ``anthropic`` SDKs, wrapped by ``admitd_client.wrap``, talk to
the simulated provider (a real HTTP server process, ``support.client.FakeProvider``) and a
real admitd (ManualClock). Time passes only as the client's injected sleep asks: a short
sleep (a backoff) advances admitd's clock; a renewal's long sleep never ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from admitd_client import AsyncAdmissionClient, Outcome
from admitd_client._proto import admission_pb2 as pb
from support.client import aio_channel, serve, target
from support.harness import Harness

GPT = "openai/gpt-4o"
CLAUDE = "anthropic/claude-sonnet-4-6"
# The providers' list prices (USD per million tokens), cache reads and writes included.
PRICES: dict[str, dict[str, float]] = {
    GPT: {"input_per_million": 2.5, "cached_input_per_million": 1.25, "output_per_million": 10},
    CLAUDE: {
        "input_per_million": 3,
        "cached_input_per_million": 0.3,
        "cache_write_input_per_million": 3.75,
        "output_per_million": 15,
    },
}
CONFIG: dict[str, Any] = {
    "lease": {"ttl": "30s"},
    "pools": [{"name": GPT, "price": PRICES[GPT]}, {"name": CLAUDE, "price": PRICES[CLAUDE]}],
    "tenants": [{"name": "a"}],
}
# Typed Any: one conversation for both SDKs, whose message types differ.
HELLO: Any = [{"role": "user", "content": "hello world"}]
REPLY = "Hello! I am a simulated model."
# REPLY is 8 tokens in o200k_base and in cl100k_base.
REPLY_TOKENS = 8


class Sleep:
    """The client's injected sleep: a backoff advances admitd's clock; a renewal (a long
    sleep) waits until the lease's block cancels it."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.slept: list[float] = []

    async def __call__(self, seconds: float) -> None:
        if seconds >= 5:
            await asyncio.Future()
        self.slept.append(seconds)
        await self.h.advance(seconds)


@contextlib.asynccontextmanager
async def admitted(
    config: dict[str, Any] | None = None, **options: Any
) -> AsyncIterator[tuple[Harness, AsyncAdmissionClient, Any, Sleep]]:
    """A real admitd (``CONFIG`` unless given), an async client of tenant ``a`` on a
    recording channel, and the client's injected sleep."""
    async with serve(CONFIG if config is None else config) as h:
        assert h.clock is not None
        channel, sent = aio_channel(target(h))
        sleep = Sleep(h)
        client = AsyncAdmissionClient(
            channel, tenant="a", sleep=sleep, wall=h.clock.wall, **options
        )
        try:
            yield h, client, sent, sleep
        finally:
            await channel.close()


def releases(sent: Any) -> list[tuple[Outcome, float, tuple[int, int] | None]]:
    """Each Release the client sent: outcome, provider retry-after, usage."""
    out = []
    for call in sent.sent:
        if call.method == "Release":
            request: pb.ReleaseRequest = call.request
            usage = (request.usage.input_tokens, request.usage.output_tokens)
            hint = request.provider_retry_after.ToNanoseconds() / 1e9
            out.append(
                (Outcome(request.outcome), hint, usage if request.HasField("usage") else None)
            )
    return out


def cache_counts(sent: Any) -> list[tuple[int, int]]:
    """The cached and cache-write input tokens each Release sent (parts of its input)."""
    return [
        (call.request.usage.cached_input_tokens, call.request.usage.cache_write_input_tokens)
        for call in sent.sent
        if call.method == "Release"
    ]


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop turn until ``condition`` holds (bounded; no time passes for admitd)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


def usd(pool: str, input_tokens: int, output_tokens: int, read: int = 0, written: int = 0) -> float:
    """The bill of this usage at the pool's list prices, as GetUsage reports it: whole
    nano-dollars (every price here is a whole number of nano-dollars a token)."""
    price = {name: round(value * 1000) for name, value in PRICES[pool].items()}
    price.setdefault("cache_write_input_per_million", price["input_per_million"])
    nano = (
        (input_tokens - read - written) * price["input_per_million"]
        + read * price["cached_input_per_million"]
        + written * price["cache_write_input_per_million"]
        + output_tokens * price["output_per_million"]
    )
    return nano / 1e9


async def ledger(
    client: AsyncAdmissionClient, pool: str, tenant: str = "a"
) -> tuple[int, int, int, float]:
    """The ledger row of the tenant on the pool: calls, input and output tokens, USD (no
    cached input)."""
    rows = [row for row in await client.usage() if (row.pool, row.tenant) == (pool, tenant)]
    assert len(rows) == 1, rows
    row = rows[0]
    assert (row.cached_input_tokens, row.cache_write_input_tokens) == (0, 0)
    return row.calls, row.input_tokens, row.output_tokens, row.usd
