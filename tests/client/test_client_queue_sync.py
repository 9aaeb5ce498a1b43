"""Streamed waits and tickets through the blocking AdmissionClient, against a real admitd.

As in test_client_sync.py, the server runs on the test's event loop and each blocking
scenario in a worker thread; the loop side releases the slot the scenario waits for once
the scenario says (with a threading.Event, waited on with a bound) that it is queued.
"""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest

from admitd_client import (
    AdmissionClient,
    AdmitdError,
    Lease,
    QueueUpdate,
    Reason,
    Rejected,
    RetryPolicy,
    Ticket,
    TicketState,
    Unavailable,
)
from support.client import GPT4O, POOL_METADATA, dead_target, serve, sync_channel, target


async def test_a_stream_yields_updates_then_the_lease() -> None:
    async with serve() as h:
        holder = await h.acquire(tenant="a", pool=GPT4O, input_tokens=1)
        queued = threading.Event()

        def scenario() -> list[QueueUpdate | Lease]:
            with AdmissionClient(target(h), tenant="a") as client:
                items: list[QueueUpdate | Lease] = []
                for item in client.acquire_stream(
                    pool=GPT4O, input_tokens=3, max_output_tokens=2, wait_timeout=60
                ):
                    items.append(item)
                    queued.set()
                lease = items[-1]
                assert isinstance(lease, Lease)
                lease.record(input_tokens=3, output_tokens=1)
                client.release(lease)
                return items

        worker = asyncio.ensure_future(asyncio.to_thread(scenario))
        assert await asyncio.to_thread(queued.wait, 30)
        await h.release(holder.lease_id)
        update, lease = await worker
        assert isinstance(update, QueueUpdate)
        assert (update.position, update.depth) == (0, 1)
        assert isinstance(lease, Lease)
        assert (len(lease.lease_id), lease.reserved_tokens) == (32, 5)
        assert lease.settlement is not None
        assert (lease.settlement.charged_tokens, lease.settlement.refunded_tokens) == (4, 1)
        assert (await h.pool(GPT4O)).in_flight == 0


async def test_a_lease_block_streams_its_wait_to_on_queue_update() -> None:
    async with serve() as h:
        holder = await h.acquire(tenant="a", pool=GPT4O, input_tokens=1)
        queued = threading.Event()
        updates: list[QueueUpdate] = []

        def on_update(update: QueueUpdate) -> None:
            updates.append(update)
            queued.set()

        def scenario() -> tuple[Lease, list[str]]:
            channel, sent = sync_channel(target(h))
            client = AdmissionClient(channel, tenant="a")
            with client.lease(
                pool=GPT4O, input_tokens=2, wait_timeout=60, on_queue_update=on_update
            ) as lease:
                lease.record(input_tokens=2, output_tokens=0)
            channel.close()
            return lease, sent.methods()

        worker = asyncio.ensure_future(asyncio.to_thread(scenario))
        assert await asyncio.to_thread(queued.wait, 30)
        await h.release(holder.lease_id)
        lease, methods = await worker
        assert [(u.position, u.depth) for u in updates] == [(0, 1)]
        assert methods == ["Release"]  # the wait was streamed, not a unary Acquire
        assert lease.settlement is not None
        assert lease.settlement.charged_tokens == 2
        assert (await h.pool(GPT4O)).in_flight == 0


async def test_a_stream_rejection_and_leaving_early() -> None:
    async with serve() as h:
        holder = await h.acquire(tenant="a", pool=GPT4O, input_tokens=1)

        def scenario() -> None:
            with AdmissionClient(target(h), tenant="a") as client:
                with pytest.raises(Rejected) as caught:
                    list(client.acquire_stream(pool=GPT4O, input_tokens=1))
                assert caught.value.reason is Reason.CONCURRENCY_LIMIT
                assert caught.value.retry_after == 30.0
                assert caught.value.metadata == POOL_METADATA
                stream = client.acquire_stream(pool=GPT4O, input_tokens=1, wait_timeout=60)
                assert isinstance(next(stream), QueueUpdate)
                stream.close()  # leaves the queue

        await asyncio.to_thread(scenario)
        for _ in range(200):  # the server sees the cancellation (bounded; no time passes)
            if (await h.pool(GPT4O)).queued == 0:
                break
            await h.advance(0)
        assert (await h.pool(GPT4O)).queued == 0
        await h.release(holder.lease_id)


def test_a_stream_is_retried_only_before_its_first_message() -> None:
    slept: list[float] = []
    client = AdmissionClient(
        dead_target(), tenant="a", sleep=slept.append, random=lambda: 0.5,
        retry=RetryPolicy(max_attempts=2),
    )  # fmt: skip
    with pytest.raises(Unavailable) as caught:
        next(client.acquire_stream(pool=GPT4O, input_tokens=1, wait_timeout=5))
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    assert slept == [0.05]
    client.close()


async def test_a_ticket_round_trip() -> None:
    async with serve() as h:
        holder = await h.acquire(tenant="a", pool=GPT4O, input_tokens=1)
        client = AdmissionClient(target(h), tenant="a")
        ticket = await asyncio.to_thread(
            client.enqueue, pool=GPT4O, input_tokens=3, max_output_tokens=2, wait_timeout=600
        )
        assert isinstance(ticket, Ticket)
        assert (ticket.state, ticket.position, ticket.depth) == (TicketState.QUEUED, 0, 1)
        polled = await asyncio.to_thread(client.get_ticket, ticket.id)
        assert polled.state is TicketState.QUEUED

        waiting = asyncio.ensure_future(asyncio.to_thread(client.wait_ticket, ticket, 30))
        await h.until_waiting_here(ticket.id)
        await h.release(holder.lease_id)
        granted = await waiting
        assert granted.state is TicketState.GRANTED
        assert granted.lease is not None

        def use(lease: Lease) -> Lease:
            with client.hold(lease) as held:
                held.record(input_tokens=3, output_tokens=2)
            return held

        held = await asyncio.to_thread(use, granted.lease)
        assert held.settlement is not None
        assert (held.settlement.charged_tokens, held.settlement.refunded_tokens) == (5, 0)
        assert (await h.pool(GPT4O)).in_flight == 0

        # Granted at once, released by hand.
        now = await asyncio.to_thread(client.enqueue, pool=GPT4O, input_tokens=4)
        assert now.granted
        assert now.lease is not None
        settlement = await asyncio.to_thread(client.release, now.lease)
        assert settlement is not None
        assert settlement.charged_tokens == 4
        client.close()


async def test_cancelled_expired_and_unknown_tickets() -> None:
    async with serve() as h:
        holder = await h.acquire(tenant="a", pool=GPT4O, input_tokens=1)
        client = AdmissionClient(target(h), tenant="a")
        cancelled = await asyncio.to_thread(client.enqueue, pool=GPT4O, input_tokens=3)
        assert await asyncio.to_thread(client.cancel_ticket, cancelled)
        assert not await asyncio.to_thread(client.cancel_ticket, cancelled)
        expiring = await asyncio.to_thread(
            client.enqueue, pool=GPT4O, input_tokens=3, wait_timeout=5
        )
        await h.advance(6)

        def scenario() -> None:
            with pytest.raises(Rejected) as expired:
                client.get_ticket(expiring)
            assert expired.value.reason is Reason.QUEUE_TIMEOUT
            for ticket in (cancelled.id, "0" * 32):
                with pytest.raises(AdmitdError) as gone:
                    client.wait_ticket(ticket, 1.0)
                assert not isinstance(gone.value, Rejected)
                assert gone.value.code is grpc.StatusCode.NOT_FOUND

        await asyncio.to_thread(scenario)
        assert (await h.pool(GPT4O)).queued == 0
        await h.release(holder.lease_id)
        client.close()
