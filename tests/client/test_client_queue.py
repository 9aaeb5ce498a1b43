"""Streamed waits and tickets through AsyncAdmissionClient, against a real admitd.

A streamed wait (``acquire_stream``, ``lease(on_queue_update=...)``) reports the caller's
place in the queue, then the lease; tickets (``enqueue``, ``get_ticket``, ``wait_ticket``,
``cancel_ticket``) are deferred admissions whose lease is an ordinary ``Lease``. The pool
``openai/gpt-4o`` has one slot, so a test holding it makes the next caller queue. ManualClock:
no time passes unless a test advances it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
import pytest

from admitd_client import (
    AdmitdError,
    AsyncAdmissionClient,
    Lease,
    QueueUpdate,
    Reason,
    Rejected,
    RetryPolicy,
    Ticket,
    TicketState,
    Unavailable,
)
from support.client import (
    CONFIG,
    COOKBOOK_MESSAGES,
    GPT4,
    GPT4O,
    POOL_METADATA,
    aio_channel,
    dead_target,
    serve,
    target,
)
from support.harness import Harness


async def collect(stream: AsyncIterator[QueueUpdate | Lease]) -> list[QueueUpdate | Lease]:
    return [item async for item in stream]


async def until_empty(h: Harness, pool: str) -> None:
    """Let a cancelled wait leave the queue (bounded; no time passes)."""
    for _ in range(200):
        if (await h.pool(pool)).queued == 0:
            return
        await h.advance(0)
    raise AssertionError(f"{pool}'s queue never emptied")


# -- streamed waits ---------------------------------------------------------------------------


async def test_a_stream_reports_its_place_then_yields_the_lease() -> None:
    async with serve() as h, AsyncAdmissionClient(target(h), tenant="a") as client:
        holder = await client.acquire(pool=GPT4O, input_tokens=1)
        first = client.acquire_stream(pool=GPT4O, input_tokens=3, max_output_tokens=2,
                                      wait_timeout=60)  # fmt: skip
        second = client.acquire_stream(pool=GPT4O, input_tokens=4, wait_timeout=60)
        update = await anext(first)
        assert isinstance(update, QueueUpdate)
        assert (update.position, update.depth) == (0, 1)
        assert update.estimated_wait >= 0
        behind = await anext(second)
        assert isinstance(behind, QueueUpdate)
        assert (behind.position, behind.depth) == (1, 2)

        await client.release(holder)
        rest = [item async for item in first]
        assert len(rest) == 1
        lease = rest[0]
        assert isinstance(lease, Lease)  # the same Lease as acquire's: release it likewise
        assert (lease.tenant, lease.pool, lease.reserved_tokens) == ("a", GPT4O, 5)
        assert (lease.input_tokens, lease.max_output_tokens) == (3, 2)
        await h.advance(1.0)  # one update_interval: the other waiter looks again
        moved = await anext(second)
        assert isinstance(moved, QueueUpdate)
        assert (moved.position, moved.depth) == (0, 1)

        lease.record(input_tokens=3, output_tokens=1)
        settlement = await client.release(lease)
        assert settlement is not None
        assert (settlement.charged_tokens, settlement.refunded_tokens) == (4, 1)
        (last,) = [item async for item in second]
        assert isinstance(last, Lease)
        assert last.queued_for == pytest.approx(1.0)
        await client.release(last)
        assert (await h.pool(GPT4O)).in_flight == 0


async def test_a_stream_that_fits_now_yields_only_the_lease() -> None:
    async with serve() as h, AsyncAdmissionClient(target(h), tenant="b") as client:
        items = [item async for item in client.acquire_stream(pool=GPT4O, prompt="hello world")]
        assert [type(item) for item in items] == [Lease]
        lease = items[0]
        assert isinstance(lease, Lease)
        assert (lease.tenant, lease.input_tokens) == ("b", 2)  # counted by the client
        await client.release(lease)


async def test_a_stream_rejection_is_the_same_rejected() -> None:
    async with serve() as h, AsyncAdmissionClient(target(h), tenant="a") as client:
        holder = await client.acquire(pool=GPT4O, input_tokens=1)
        with pytest.raises(Rejected) as at_once:  # no wait_timeout: no update before it
            await collect(client.acquire_stream(pool=GPT4O, input_tokens=1))
        assert at_once.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert at_once.value.reason is Reason.CONCURRENCY_LIMIT
        assert at_once.value.retry_after == 30.0
        assert at_once.value.metadata == POOL_METADATA

        stream = client.acquire_stream(pool=GPT4O, input_tokens=1, wait_timeout=5)
        update = await anext(stream)
        assert isinstance(update, QueueUpdate)
        assert (update.position, update.depth) == (0, 1)
        await h.advance(5.0)
        with pytest.raises(Rejected) as timed_out:
            await collect(stream)
        assert timed_out.value.reason is Reason.QUEUE_TIMEOUT
        assert (await h.pool(GPT4O)).queued == 0
        await client.release(holder)


async def test_leaving_a_stream_early_leaves_the_queue() -> None:
    async with serve() as h, AsyncAdmissionClient(target(h), tenant="a") as client:
        holder = await client.acquire(pool=GPT4O, input_tokens=1)
        stream = client.acquire_stream(pool=GPT4O, input_tokens=1, wait_timeout=60)
        async with contextlib.aclosing(stream):  # cancels at once, not when collected
            async for update in stream:
                assert isinstance(update, QueueUpdate)
                break
        await until_empty(h, GPT4O)
        await client.release(holder)
        assert (await h.pool(GPT4O)).in_flight == 0  # nothing was granted to the leaver


async def test_a_lease_block_with_on_queue_update_streams_its_wait() -> None:
    async with serve() as h:
        channel, sent = aio_channel(target(h))
        client = AsyncAdmissionClient(channel, tenant="a")
        holder = await client.acquire(pool=GPT4O, input_tokens=1)
        updates: list[QueueUpdate] = []
        seen = asyncio.Event()

        def on_update(update: QueueUpdate) -> None:
            updates.append(update)
            seen.set()

        async def call() -> Lease:
            async with client.lease(
                pool=GPT4O, input_tokens=2, max_output_tokens=2, wait_timeout=60,
                on_queue_update=on_update,
            ) as lease:  # fmt: skip
                lease.record(input_tokens=2, output_tokens=1)
                return lease

        task = asyncio.ensure_future(call())
        await asyncio.wait_for(seen.wait(), timeout=30)  # bounded, not a sleep
        assert [(u.position, u.depth) for u in updates] == [(0, 1)]
        await client.release(holder)
        lease = await task
        assert lease.settlement is not None
        assert (lease.settlement.charged_tokens, lease.settlement.refunded_tokens) == (3, 1)
        # The wait was streamed (not a unary Acquire, which the recorder would show).
        assert sent.methods() == ["Acquire", "Release", "Release"]
        assert (await h.pool(GPT4O)).in_flight == 0
        await channel.close()


async def test_run_takes_on_queue_update_and_a_failing_callback_ends_the_wait() -> None:
    async with serve() as h, AsyncAdmissionClient(target(h), tenant="a") as client:
        updates: list[QueueUpdate] = []

        async def call(lease: Lease) -> str:
            return lease.lease_id

        # Fits at once: no update, the callback is never called.
        lease_id = await client.run(
            call, pool=GPT4O, input_tokens=1, on_queue_update=updates.append
        )
        assert len(lease_id) == 32
        assert updates == []

        def boom(update: QueueUpdate) -> None:
            raise RuntimeError(f"no thanks: {update.position}")

        holder = await client.acquire(pool=GPT4O, input_tokens=1)
        with pytest.raises(RuntimeError, match="no thanks: 0"):
            await client.run(
                call, pool=GPT4O, input_tokens=1, wait_timeout=60, on_queue_update=boom
            )
        await until_empty(h, GPT4O)
        await client.release(holder)


async def test_stream_transport_retries_only_before_the_first_message() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    policy = RetryPolicy(max_attempts=3, initial_backoff=0.1, multiplier=2.0)
    dead = AsyncAdmissionClient(
        dead_target(), tenant="a", sleep=sleep, random=lambda: 1.0, retry=policy
    )
    with pytest.raises(Unavailable):
        await collect(dead.acquire_stream(pool=GPT4O, input_tokens=1, wait_timeout=5))
    assert slept == [0.1, 0.2]  # three attempts
    # Fail-open: the stream yields only an unadmitted lease.
    slept.clear()
    opened = AsyncAdmissionClient(
        dead_target(), tenant="a", sleep=sleep, random=lambda: 1.0, retry=policy,
        on_unavailable="fail_open",
    )  # fmt: skip
    (only,) = await collect(opened.acquire_stream(pool=GPT4O, input_tokens=1))
    assert isinstance(only, Lease)
    assert not only.admitted
    assert slept == [0.1, 0.2]
    await dead.close()
    await opened.close()

    # Once queued, an UNAVAILABLE (here: the server starts draining) is not retried.
    async with serve() as h:
        client = AsyncAdmissionClient(target(h), tenant="a", sleep=sleep, retry=policy)
        holder = await client.acquire(pool=GPT4O, input_tokens=1)
        slept.clear()
        stream = client.acquire_stream(pool=GPT4O, input_tokens=1, wait_timeout=60)
        assert isinstance(await anext(stream), QueueUpdate)
        h.engine.drain()
        with pytest.raises(Unavailable) as caught:
            await anext(stream)
        assert caught.value.code is grpc.StatusCode.UNAVAILABLE
        assert "draining" in caught.value.message
        assert slept == []
        await client.release(holder)
        await client.close()


# -- tickets ----------------------------------------------------------------------------------


async def test_a_ticket_that_fits_now_is_granted_at_once() -> None:
    async with serve() as h, AsyncAdmissionClient(target(h), tenant="a") as client:
        ticket = await client.enqueue(pool=GPT4O, messages=COOKBOOK_MESSAGES, max_output_tokens=6)
        assert isinstance(ticket, Ticket)
        assert (ticket.state, ticket.granted, ticket.tenant) == (TicketState.GRANTED, True, "a")
        assert (ticket.position, ticket.depth, ticket.estimated_wait) == (None, None, None)
        assert ticket.wait_deadline is None
        lease = ticket.lease
        assert isinstance(lease, Lease)
        assert lease.lease_id == ticket.id
        assert (lease.input_tokens, lease.max_output_tokens) == (124, 6)  # counted (o200k)
        assert lease.reserved_tokens == 130
        lease.record(input_tokens=124, output_tokens=2)
        settlement = await client.release(lease)
        assert settlement is not None
        assert (settlement.charged_tokens, settlement.refunded_tokens) == (126, 4)
        assert (await h.pool(GPT4O)).in_flight == 0


async def test_a_queued_ticket_is_waited_for_then_held_like_any_lease() -> None:
    async with serve() as h, AsyncAdmissionClient(target(h), tenant="a") as client:
        assert h.clock is not None
        holder = await client.acquire(pool=GPT4O, input_tokens=1)
        ticket = await client.enqueue(pool=GPT4O, input_tokens=3, max_output_tokens=2,
                                      wait_timeout=600)  # fmt: skip
        assert (ticket.state, ticket.granted, ticket.lease) == (TicketState.QUEUED, False, None)
        assert (ticket.position, ticket.depth) == (0, 1)
        assert ticket.estimated_wait is not None
        assert ticket.estimated_wait >= 0
        assert ticket.wait_deadline == datetime.fromtimestamp(h.clock.wall() + 600, UTC)
        assert (await client.get_ticket(ticket)).state is TicketState.QUEUED

        waiting = asyncio.ensure_future(client.wait_ticket(ticket, wait_timeout=20))
        await h.until_waiting_here(ticket.id)
        await h.advance(20)
        still = await waiting  # the wait ran out: still queued
        assert (still.state, still.position) == (TicketState.QUEUED, 0)

        waiting = asyncio.ensure_future(client.wait_ticket(ticket, wait_timeout=20))
        await h.until_waiting_here(ticket.id)
        await client.release(holder)
        granted = await waiting
        assert granted.state is TicketState.GRANTED
        assert granted.lease is not None
        assert (granted.lease.lease_id, granted.lease.reserved_tokens) == (ticket.id, 5)
        assert granted.lease.queued_for == pytest.approx(20.0)
        # The normal path: renewed while the block runs, released with the usage on exit.
        async with client.hold(granted.lease) as lease:
            assert (await h.pool(GPT4O)).in_flight == 1
            lease.record(input_tokens=3, output_tokens=1)
        assert lease.settlement is not None
        assert (lease.settlement.charged_tokens, lease.settlement.refunded_tokens) == (4, 1)
        assert (await h.pool(GPT4O)).in_flight == 0


async def test_wait_ticket_without_a_timeout_polls_until_granted() -> None:
    async with serve({**CONFIG, "lease": {"ttl": "600s"}}) as h:  # the holder outlives a poll
        channel, sent = aio_channel(target(h))
        client = AsyncAdmissionClient(channel, tenant="a")
        holder = await client.acquire(pool=GPT4O, input_tokens=1)
        ticket = await client.enqueue(pool=GPT4O, input_tokens=3)
        waiting = asyncio.ensure_future(client.wait_ticket(ticket.id))  # by id: the client's tenant
        await h.until_waiting_here(ticket.id)
        await h.advance(60)  # one long poll ends with the ticket still queued ...
        for _ in range(200):  # ... and the client asks again (bounded; no time passes)
            if sent.methods().count("WaitTicket") == 2:
                break
            await asyncio.sleep(0.005)
        await h.until_waiting_here(ticket.id)
        await client.release(holder)
        granted = await waiting
        assert granted.state is TicketState.GRANTED
        assert granted.tenant == "a"
        waits = [call for call in sent.sent if call.method == "WaitTicket"]
        assert len(waits) == 2
        assert [call.request.wait_timeout.seconds for call in waits] == [60, 60]
        assert all(call.timeout == pytest.approx(70.0) for call in waits)  # wait + the RPC's
        assert granted.lease is not None
        await client.release(granted.lease)
        await channel.close()


async def test_cancel_a_ticket_once() -> None:
    async with serve() as h, AsyncAdmissionClient(target(h), tenant="a") as client:
        holder = await client.acquire(pool=GPT4O, input_tokens=1)
        ticket = await client.enqueue(pool=GPT4O, input_tokens=3)
        assert await client.cancel_ticket(ticket) is True
        assert await client.cancel_ticket(ticket.id) is False  # nothing left to cancel
        assert (await h.pool(GPT4O)).queued == 0
        with pytest.raises(AdmitdError) as caught:
            await client.get_ticket(ticket)
        assert not isinstance(caught.value, Rejected)
        assert caught.value.code is grpc.StatusCode.NOT_FOUND
        assert "was cancelled" in caught.value.message
        await client.release(holder)


async def test_an_expired_ticket_raises_rejected_and_an_unknown_one_not_found() -> None:
    async with serve() as h, AsyncAdmissionClient(target(h), tenant="a") as client:
        holder = await client.acquire(pool=GPT4O, input_tokens=1)
        ticket = await client.enqueue(pool=GPT4O, input_tokens=3, wait_timeout=5)
        await h.advance(6)
        with pytest.raises(Rejected) as polled:
            await client.get_ticket(ticket)
        assert polled.value.reason is Reason.QUEUE_TIMEOUT
        with pytest.raises(Rejected) as waited:
            await client.wait_ticket(ticket, wait_timeout=10)
        assert waited.value.reason is Reason.QUEUE_TIMEOUT
        assert (await h.pool(GPT4O)).queued == 0

        with pytest.raises(AdmitdError) as unknown:
            await client.get_ticket("0" * 32)
        assert not isinstance(unknown.value, Rejected)
        assert unknown.value.code is grpc.StatusCode.NOT_FOUND
        with pytest.raises(AdmitdError) as empty:
            await client.get_ticket("")
        assert list(empty.value.field_violations) == ["ticket_id"]
        await client.release(holder)


async def test_a_ticket_that_can_never_fit_is_refused_at_enqueue() -> None:
    async with serve() as h, AsyncAdmissionClient(target(h), tenant="a") as client:
        with pytest.raises(Rejected) as caught:
            await client.enqueue(pool=GPT4, input_tokens=700)  # the bucket holds 600
        assert caught.value.reason is Reason.TOKEN_RATE_LIMIT
        assert caught.value.retry_after is None
        assert (await h.pool(GPT4)).queued == 0


async def test_a_ticket_belongs_to_its_tenant() -> None:
    async with serve() as h:
        a = AsyncAdmissionClient(target(h), tenant="a")
        b = AsyncAdmissionClient(target(h), tenant="b")
        holder = await a.acquire(pool=GPT4O, input_tokens=1)
        ticket = await a.enqueue(pool=GPT4O, input_tokens=3)
        with pytest.raises(AdmitdError) as caught:
            await b.get_ticket(ticket.id)
        assert caught.value.code is grpc.StatusCode.PERMISSION_DENIED
        # The Ticket object remembers its tenant; an id needs it named.
        assert (await b.get_ticket(ticket)).state is TicketState.QUEUED
        assert (await b.get_ticket(ticket.id, tenant="a")).tenant == "a"
        assert await b.cancel_ticket(ticket.id, tenant="a")
        await a.release(holder)
        await a.close()
        await b.close()
