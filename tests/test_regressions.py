"""Bugs the property, state-machine and fault tests found, each pinned by a small test of its
exact scenario (both backends)."""

from __future__ import annotations

import asyncio

import grpc

from support.harness import MakeHarness
from support.polling import until


async def test_a_fail_fast_call_behind_its_tenants_held_waiter_is_rejected_at_once(
    make_harness: MakeHarness,
) -> None:
    """Found by test_state_machine.py. A fail-fast Acquire takes its place in the fair order;
    when an earlier waiter of the same tenant is held back by the tenant's own limit, the
    dispatch pass skips the rest of that tenant's waiters, the new call among them. It was
    then neither admitted nor denied: the engine made it wait 0 s, which on the real clock
    answered QUEUE_TIMEOUT (for a call that never queued) and on the test clock never
    answered at all. It must be rejected at once with the limit that holds its tenant."""
    h = await make_harness(
        {
            "pools": [{"name": "p", "max_concurrency": 10}],
            "tenants": [{"name": "a", "max_concurrency": 1}, {"name": "b"}],
        }
    )
    await h.acquire(tenant="a", input_tokens=1)
    waiting = h.acquire_later(tenant="a", input_tokens=1, wait_timeout=30)
    await h.until_queued("p", 1)

    failure = await h.fail(h.acquire(tenant="a", input_tokens=1, timeout=5))
    assert failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED, failure
    assert (failure.reason, failure.metadata["scope"]) == ("CONCURRENCY_LIMIT", "tenant")
    assert failure.retry_after is not None
    assert (await h.pool("p")).queued == 1  # the waiter keeps its place
    assert not waiting.done()
    await h.acquire(tenant="b", input_tokens=1)  # other tenants are not held back


async def test_a_grant_racing_with_a_queue_timeout_is_not_lost(make_harness: MakeHarness) -> None:
    """Found by scripts/soak.py (the daily token count moved by more than was charged). When
    a waiter's wait runs out, the engine asks the backend where the waiter stood (for the
    QUEUE_TIMEOUT estimate) before leaving the queue; with Redis that is a round trip, and a
    grant arriving meanwhile was claimed for the waiter, which then answered QUEUE_TIMEOUT
    anyway and did not give the grant back: the caller never learnt of a lease that held a
    slot until it expired, full reservation charged. Here the holder's release lands exactly
    in that window; the caller must end up with the lease, or with nothing held."""
    h = await make_harness({"pools": [{"name": "p", "max_concurrency": 1}]})
    holder = await h.acquire(input_tokens=1)
    waiting = h.acquire_later(input_tokens=1, wait_timeout=1)
    await h.until_queued("p", 1)
    backend = h.engine.backend
    look = backend.look
    released: list[bool] = []

    async def look_while_released(lease_id: str, *, claim: bool) -> object:
        if not released:
            released.append(True)
            await h.engine.release(holder.lease_id, None)  # grants the waiter meanwhile
        return await look(lease_id, claim=claim)

    backend.look = look_while_released
    try:
        await h.advance(1.0)
        await asyncio.wait_for(asyncio.wait({waiting}), 10)
        assert released, "the race was not provoked"
        error = waiting.exception()
        if error is None:
            assert (await h.pool("p")).in_flight == 1
            assert not (await h.release(waiting.result().lease_id)).already_released
        else:
            assert isinstance(error, grpc.aio.AioRpcError)
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert (await h.pool("p")).in_flight == 0, "QUEUE_TIMEOUT, yet a lease is held"
    finally:
        backend.look = look
    assert (await h.pool("p")).in_flight == 0


async def test_a_waiter_behind_a_head_that_left_is_admitted_at_once(
    make_harness: MakeHarness,
) -> None:
    """Found while building the state machine's model. A waiter held back by the pool blocks
    the ones behind it (no overtaking). When that head leaves (its RPC is cancelled, or its
    wait runs out) the waiters behind it may fit at once, but leaving ran no dispatch: they
    waited for an unrelated event, here the refill the departed head needed (45 s), and may
    time out though their capacity was there all along."""
    h = await make_harness({"pools": [{"name": "p", "tokens_per_minute": 600}]})
    await h.acquire(tenant="a", input_tokens=550)  # 50 tokens left, 10 more each second
    head = h.acquire_later(tenant="a", input_tokens=500, wait_timeout=60)  # needs 45 s
    await h.until_queued("p", 1)
    behind = h.acquire_later(tenant="a", input_tokens=40, wait_timeout=60)  # fits, FIFO
    await h.until_queued("p", 2)
    assert not behind.done()

    head.cancel()

    async def admitted() -> bool:
        return behind.done()

    await until(admitted, 5, "the waiter behind the departed head admitted, no time passing")
    assert (await behind).reserved_tokens == 40
