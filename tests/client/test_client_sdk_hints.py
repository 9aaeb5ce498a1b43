"""Retry hints that hold, through a wrapped SDK call that may not wait (``wait_timeout=0``):
admitd's refusal is raised as ``Rejected`` with its ``retry_after``, and the same call made
again once that time has passed fits every limit: two token buckets that bind, or a slot
its holder gives back at its usual hold time. A retry just before the hint is refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from admitd_client import AsyncAdmissionClient, Outcome, Rejected, wrap
from support.client import FakeProvider, aio_channel, serve, target
from support.harness import Harness
from support.sdks import GPT, HELLO, PRICES, REPLY_TOKENS, Sleep, ledger, releases, usd

JUST_BEFORE = 0.001


def config(pool: dict[str, Any], tenant: dict[str, Any]) -> dict[str, Any]:
    return {
        "lease": {"ttl": "10m"},
        "pools": [{"name": GPT, "price": PRICES[GPT], **pool}],
        "tenants": [{"name": "a", **tenant}, {"name": "b"}],
    }


@contextlib.asynccontextmanager
async def wrapped(
    h: Harness, fake: FakeProvider
) -> AsyncIterator[tuple[AsyncAdmissionClient, Any, Any]]:
    """A wrapped AsyncOpenAI of tenant ``a`` whose calls never wait for admission."""
    assert h.clock is not None
    channel, sent = aio_channel(target(h))
    admitd = AsyncAdmissionClient(channel, tenant="a", sleep=Sleep(h), wall=h.clock.wall)
    sdk = openai.AsyncOpenAI(base_url=fake.openai_url, api_key="k")
    async with wrap(sdk, admitd, wait_timeout=0) as client:
        yield admitd, client, sent
    await channel.close()


async def refused_for(call: Any) -> float:
    with pytest.raises(Rejected) as refused:
        await call()
    assert refused.value.retry_after is not None
    return refused.value.retry_after


async def test_a_retry_at_the_hint_fits_both_buckets_that_bind(fake: FakeProvider) -> None:
    # The pool refills 1000 tokens/s, tenant a 500/s.
    async with serve(config({"tokens_per_minute": 60_000}, {"tokens_per_minute": 30_000})) as h:
        await h.acquire(tenant="b", pool=GPT, input_tokens=30_000)  # the pool has 30000 left
        await h.acquire(tenant="a", pool=GPT, input_tokens=28_000)  # pool and tenant: 2000
        async with wrapped(h, fake) as (admitd, sdk, sent):

            async def call() -> Any:  # 9 + 3491 = 3500 tokens
                return await sdk.chat.completions.create(
                    model="gpt-4o", messages=HELLO, max_tokens=3491
                )

            # The pool is 1500 short (1.5 s), the tenant too (3 s): the hint is the tenant's.
            hint = await refused_for(call)
            assert hint == 3.0
            await h.advance(hint - JUST_BEFORE)
            assert await refused_for(call) == pytest.approx(JUST_BEFORE, abs=1e-6)
            await h.advance(JUST_BEFORE)
            reply = await call()
            assert reply.usage is not None
            assert fake.calls()[0]["input_tokens"] == 9  # the provider was called once
            assert len(fake.calls()) == 1
            assert releases(sent) == [(Outcome.OK, 0.0, (9, REPLY_TOKENS))]
            assert await ledger(admitd, GPT) == (1, 9, 8, usd(GPT, 9, REPLY_TOKENS))


async def test_a_retry_at_the_hint_finds_the_slot_its_holder_gives_back(
    fake: FakeProvider,
) -> None:
    async with serve(config({"max_concurrency": 1}, {})) as h:
        for _ in range(3):  # calls of this pool are held 4 s
            lease = await h.acquire(tenant="b", pool=GPT, input_tokens=1)
            await h.advance(4)
            await h.release(lease.lease_id)
        holder = await h.acquire(tenant="b", pool=GPT, input_tokens=1)
        await h.advance(1)
        async with wrapped(h, fake) as (admitd, sdk, sent):

            async def call() -> Any:
                return await sdk.chat.completions.create(
                    model="gpt-4o", messages=HELLO, max_tokens=20
                )

            # The holder is expected back at its usual 4 s: 3 s from now (not the lease's
            # expiry in 599 s).
            hint = await refused_for(call)
            assert hint == 3.0
            await h.advance(hint)
            await h.release(holder.lease_id)  # as usual
            reply = await call()
            assert reply.usage is not None
            assert len(fake.calls()) == 1
            assert releases(sent) == [(Outcome.OK, 0.0, (9, REPLY_TOKENS))]
            assert await ledger(admitd, GPT) == (1, 9, 8, usd(GPT, 9, REPLY_TOKENS))
        assert (await h.pool(GPT)).in_flight == 0
