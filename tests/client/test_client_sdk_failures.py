"""Wrapped SDK calls that fail: a 429 (``retry-after``, ``retry-after-ms``) or an
Anthropic 529 is released at once with its hint and billed nothing, then retried through
admitd, never by sleeping inside a lease; timeouts and cancellations release their slot;
a refusal past the wait budget raises ``Rejected``.
"""

from __future__ import annotations

import asyncio
import contextlib

import anthropic
import openai
import pytest
import tiktoken

from admitd_client import Outcome, Rejected, wrap
from support.client import FakeProvider
from support.harness import seconds
from support.sdks import (
    CLAUDE,
    GPT,
    HELLO,
    REPLY_TOKENS,
    admitted,
    ledger,
    releases,
    until,
    usd,
)


async def test_an_overloaded_529_pauses_the_pool_like_a_429_and_bills_nothing(
    fake: FakeProvider,
) -> None:
    async with (
        admitted(random=lambda: 0.0) as (h, admitd, sent, sleep),
        contextlib.AsyncExitStack() as stack,
    ):
        fake.faults({"status": 529, "retry_after": "3"}, {"status": 503})
        client = await stack.enter_async_context(
            wrap(anthropic.AsyncAnthropic(base_url=fake.anthropic_url, api_key="k"), admitd)
        )
        call = asyncio.ensure_future(
            client.messages.create(model="claude-sonnet-4-6", max_tokens=100, messages=HELLO)
        )
        await h.until_queued(CLAUDE, 1)  # the retry waits in admitd's queue
        assert (await h.pool(CLAUDE)).paused_for.ToTimedelta().total_seconds() == 3.0
        await h.advance(3)  # then a 503 (an error without a hint), then the answer
        reply = await asyncio.wait_for(call, 30)
        assert reply.usage.input_tokens == 9
        assert sleep.slept == [1.0]  # the SDK's second backoff, outside any lease
        assert releases(sent) == [
            (Outcome.PROVIDER_RATE_LIMITED, 3.0, (0, 0)),
            (Outcome.PROVIDER_ERROR, 0.0, (0, 0)),
            (Outcome.OK, 0.0, (9, REPLY_TOKENS)),
        ]
        assert await ledger(admitd, CLAUDE) == (3, 9, REPLY_TOKENS, usd(CLAUDE, 9, REPLY_TOKENS))
        assert (await h.pool(CLAUDE)).in_flight == 0


async def test_a_429_is_released_then_retried_through_admitd(fake: FakeProvider) -> None:
    async with admitted() as (h, admitd, sent, sleep), contextlib.AsyncExitStack() as stack:
        fake.faults({"status": 429, "retry_after": "2"}, {"status": 429, "retry_after_ms": "1500"})
        client = await stack.enter_async_context(
            wrap(openai.AsyncOpenAI(base_url=fake.openai_url, api_key="k"), admitd)
        )
        call = asyncio.ensure_future(
            client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=50)
        )
        # The 429 is released with its hint: the pool is paused for everyone, and the
        # retry waits in admitd's queue, holding no slot.
        await h.until_queued(GPT, 1)
        assert (await h.pool(GPT)).paused_for.ToTimedelta().total_seconds() == 2.0
        assert (await h.pool(GPT)).in_flight == 0
        await h.advance(2)
        await h.until_queued(GPT, 1)  # the second 429: retry-after-ms
        assert (await h.pool(GPT)).paused_for.ToTimedelta().total_seconds() == 1.5
        await h.advance(1.5)
        reply = await asyncio.wait_for(call, 30)
        assert reply.usage is not None
        assert reply.usage.prompt_tokens == 9
        assert sleep.slept == []  # never slept: admitd held the retries back
        assert releases(sent) == [
            (Outcome.PROVIDER_RATE_LIMITED, 2.0, (0, 0)),  # a 429 bills nothing
            (Outcome.PROVIDER_RATE_LIMITED, 1.5, (0, 0)),
            (Outcome.OK, 0.0, (9, REPLY_TOKENS)),
        ]
        assert [c.get("fault", {}).get("status") for c in fake.calls()] == [429, 429, None]
        assert await ledger(admitd, GPT) == (3, 9, REPLY_TOKENS, usd(GPT, 9, 8))


async def test_529_backs_off_and_retries_run_out(fake: FakeProvider) -> None:
    async with (
        admitted(random=lambda: 0.0) as (h, admitd, sent, sleep),
        contextlib.AsyncExitStack() as stack,
    ):
        fake.faults({"status": 529}, {"status": 529})
        sdk = anthropic.AsyncAnthropic(base_url=fake.anthropic_url, api_key="k", max_retries=1)
        client = await stack.enter_async_context(wrap(sdk, admitd))
        with pytest.raises(anthropic.InternalServerError) as raised:
            await client.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=HELLO)
        assert raised.value.status_code == 529
        assert sleep.slept == [0.5]  # the SDK's first backoff, outside any lease
        assert releases(sent) == [(Outcome.PROVIDER_RATE_LIMITED, 0.0, (0, 0))] * 2
        assert (await h.pool(CLAUDE)).in_flight == 0
        assert len(fake.calls()) == 2
        assert await ledger(admitd, CLAUDE) == (2, 0, 0, 0.0)  # overloaded: nothing billed


async def test_a_timeout_and_a_cancellation_release_their_slot(fake: FakeProvider) -> None:
    async with admitted() as (h, admitd, sent, _), contextlib.AsyncExitStack() as stack:
        fake.faults({"hang": True}, {"hang": True})
        sdk = openai.AsyncOpenAI(base_url=fake.openai_url, api_key="k", max_retries=0, timeout=0.3)
        client = await stack.enter_async_context(wrap(sdk, admitd))
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=50)
        # No usage to send: admitd charges the reservation's input (the prompt may have been
        # processed), no output.
        assert releases(sent) == [(Outcome.TIMEOUT, 0.0, None)]
        patient = await stack.enter_async_context(
            wrap(openai.AsyncOpenAI(base_url=fake.openai_url, api_key="k"), admitd)
        )
        call = asyncio.ensure_future(
            patient.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=50)
        )
        await until(lambda: len(fake.calls()) == 2)  # the provider holds the second call
        assert (await h.pool(GPT)).in_flight == 1
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert releases(sent)[-1] == (Outcome.CANCELLED, 0.0, None)
        assert (await h.pool(GPT)).in_flight == 0
        assert await ledger(admitd, GPT) == (2, 18, 0, usd(GPT, 18, 0))


async def test_a_refusal_past_the_wait_budget_raises_rejected(fake: FakeProvider) -> None:
    async with admitted() as (h, admitd, _sent, _), contextlib.AsyncExitStack() as stack:
        await h.release(
            (await h.acquire(tenant="a", pool=GPT, input_tokens=1)).lease_id,
            provider_retry_after=seconds(60),
        )
        client = await stack.enter_async_context(
            wrap(openai.AsyncOpenAI(base_url=fake.openai_url, api_key="k"), admitd, wait_timeout=0)
        )
        with pytest.raises(Rejected) as refused:
            await client.chat.completions.create(model="gpt-4o", messages=HELLO)
        assert refused.value.retry_after == 60.0
        assert fake.calls() == []


async def test_a_stream_that_stalls_and_times_out_is_charged_what_it_streamed(
    fake: FakeProvider,
) -> None:
    async with admitted() as (h, admitd, sent, _), contextlib.AsyncExitStack() as stack:
        fake.faults({"stall_after": 3})  # the role, "Hello! ", "I ", then nothing
        # Read timeout 2 s: long enough for the first chunks on a busy machine, and the
        # stall outlasts it.
        sdk = openai.AsyncOpenAI(base_url=fake.openai_url, api_key="k", max_retries=0, timeout=2)
        client = await stack.enter_async_context(wrap(sdk, admitd))
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=HELLO, max_tokens=50, stream=True
        )
        pieces: list[str] = []

        async def read() -> None:
            async for chunk in stream:
                pieces.append(chunk.choices[0].delta.content or "")

        with pytest.raises(openai.APITimeoutError):
            await read()
        seen = "".join(pieces)
        assert seen == "Hello! I "
        # No usage came: the input reserved (the provider's own count here) and the text
        # streamed, counted with the model's encoding.
        produced = len(tiktoken.get_encoding("o200k_base").encode(seen))
        assert releases(sent) == [(Outcome.TIMEOUT, 0.0, (9, produced))]
        assert await ledger(admitd, GPT) == (1, 9, produced, usd(GPT, 9, produced))
        assert (await h.pool(GPT)).in_flight == 0
