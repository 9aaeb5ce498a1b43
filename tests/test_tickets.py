"""Deferred admission: Enqueue returns a ticket at once; the ticket waits in the same fair
queue; GetTicket/WaitTicket return the lease once granted; an unclaimed grant goes back to
the pool; a ticket that left unserved says why; with Redis, tickets outlive their replica."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from admitd.v1 import admission_pb2 as pb
from support.harness import Harness, MakeHarness, Replicas, seconds

ONE_SLOT: dict[str, Any] = {
    "pools": [{"name": "p", "max_concurrency": 1}],
    "queue": {"ticket_claim_timeout": "30s"},
}
QUEUED, GRANTED = pb.TicketState.TICKET_STATE_QUEUED, pb.TicketState.TICKET_STATE_GRANTED


async def enqueue(h: Harness, wait: float | None = None, **fields: Any) -> pb.Ticket:
    request = pb.AcquireRequest(tenant=fields.pop("tenant", "a"), pool="p", **fields)
    if wait is not None:
        request.wait_timeout.CopyFrom(seconds(wait))
    return await h.stub.Enqueue(pb.EnqueueRequest(acquire=request), timeout=10)


async def get(h: Harness, ticket_id: str, tenant: str = "") -> pb.Ticket:
    return await h.stub.GetTicket(
        pb.GetTicketRequest(ticket_id=ticket_id, tenant=tenant), timeout=10
    )


async def wait(h: Harness, ticket_id: str, wait_for: float) -> pb.Ticket:
    request = pb.WaitTicketRequest(ticket_id=ticket_id, wait_timeout=seconds(wait_for))
    return await h.stub.WaitTicket(request, timeout=60)


async def cancel(h: Harness, ticket_id: str) -> bool:
    request = pb.CancelTicketRequest(ticket_id=ticket_id)
    return (await h.stub.CancelTicket(request, timeout=10)).cancelled


async def test_a_ticket_that_fits_now_is_granted_at_once(make_harness: MakeHarness) -> None:
    h = await make_harness(ONE_SLOT)
    ticket = await enqueue(h, input_tokens=7)
    assert ticket.state == GRANTED
    assert (ticket.lease.lease_id, ticket.lease.reserved_tokens) == (ticket.ticket_id, 7)
    assert (await h.release(ticket.lease.lease_id)).charged_tokens == 7


async def test_a_queued_ticket_is_granted_in_turn_and_claimed_by_a_poll(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness(ONE_SLOT)
    holder = await h.acquire(input_tokens=1)
    ticket = await enqueue(h, input_tokens=3)
    assert ticket.state == QUEUED
    assert (ticket.position.position, ticket.position.depth) == (0, 1)
    assert (await get(h, ticket.ticket_id)).state == QUEUED
    await h.release(holder.lease_id)
    granted = await get(h, ticket.ticket_id)
    assert granted.state == GRANTED
    assert granted.lease.lease_id == ticket.ticket_id
    # Claimed: a later poll sees the same lease, and the claim timeout no longer applies.
    await h.advance(60)
    assert (await get(h, ticket.ticket_id)).lease.lease_id == ticket.ticket_id
    assert (await h.pool("p")).in_flight == 1
    assert (await h.release(ticket.ticket_id)).charged_tokens == 3


async def test_an_unclaimed_grant_goes_back_to_the_pool(make_harness: MakeHarness) -> None:
    h = await make_harness(ONE_SLOT)
    holder = await h.acquire(input_tokens=1)
    ticket = await enqueue(h, input_tokens=3)
    await h.release(holder.lease_id)
    assert (await h.pool("p")).in_flight == 1  # granted, held for its claimer
    await h.advance(31)
    assert (await h.pool("p")).in_flight == 0
    failure = await h.fail(get(h, ticket.ticket_id))
    assert failure.code is grpc.StatusCode.NOT_FOUND
    assert "not claimed within 30s" in failure.message
    assert (await h.acquire(input_tokens=1)).reserved_tokens == 1


async def test_wait_ticket_returns_the_grant_or_the_place(make_harness: MakeHarness) -> None:
    h = await make_harness(ONE_SLOT)
    holder = await h.acquire(input_tokens=1)
    ticket = await enqueue(h, input_tokens=3)
    waiting = asyncio.ensure_future(wait(h, ticket.ticket_id, 20))
    await h.until_waiting_here(ticket.ticket_id)
    await h.advance(20)
    still = await waiting
    assert (still.state, still.position.position) == (QUEUED, 0)
    waiting = asyncio.ensure_future(wait(h, ticket.ticket_id, 20))
    await h.until_waiting_here(ticket.ticket_id)
    await h.advance(1)
    await h.release(holder.lease_id)
    assert (await waiting).state == GRANTED
    await h.advance(60)  # it was claimed by WaitTicket: no give-back
    assert (await h.pool("p")).in_flight == 1


async def test_a_ticket_past_its_wait_is_a_queue_timeout(make_harness: MakeHarness) -> None:
    h = await make_harness(ONE_SLOT)
    await h.acquire(input_tokens=1)
    ticket = await enqueue(h, wait=5, input_tokens=3)
    assert ticket.wait_deadline.ToSeconds() == int(h.engine.clock.wall() + 5)
    await h.advance(6)
    failure = await h.fail(get(h, ticket.ticket_id))
    assert (failure.code, failure.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUEUE_TIMEOUT")
    assert (await h.pool("p")).queued == 0


async def test_a_ticket_that_can_never_fit_today_says_why(make_harness: MakeHarness) -> None:
    h = await make_harness(
        {**ONE_SLOT, "tenants": [{"name": "a", "tokens_per_day": 100}, {"name": "b"}]}
    )
    holder = await h.acquire(tenant="a", input_tokens=10)
    ticket = await enqueue(h, tenant="a", input_tokens=50)
    await h.release(holder.lease_id, (10, 60))  # over-use: 70 of a's 100 tokens used today
    failure = await h.fail(get(h, ticket.ticket_id))
    assert (failure.reason, failure.metadata["limit"]) == ("TENANT_QUOTA", "tokens_per_day")


async def test_cancel_leaves_the_queue_once(make_harness: MakeHarness) -> None:
    h = await make_harness(ONE_SLOT)
    holder = await h.acquire(input_tokens=1)
    ticket = await enqueue(h, input_tokens=3)
    assert await cancel(h, ticket.ticket_id)
    assert not await cancel(h, ticket.ticket_id)
    assert (await h.pool("p")).queued == 0
    assert "was cancelled" in (await h.fail(get(h, ticket.ticket_id))).message
    await h.release(holder.lease_id)
    assert (await h.pool("p")).in_flight == 0


async def test_tickets_and_rpc_waiters_share_one_fair_queue(make_harness: MakeHarness) -> None:
    h = await make_harness(ONE_SLOT)
    holder = await h.acquire(input_tokens=1)
    rpc = h.acquire_later(input_tokens=1, wait_timeout=60)
    await h.until_queued("p", 1)
    ticket = await enqueue(h, input_tokens=1)
    assert ticket.position.position == 1  # behind the RPC waiter that came first
    await h.release(holder.lease_id)
    first = await rpc
    assert (await get(h, ticket.ticket_id)).state == QUEUED
    await h.release(first.lease_id)
    assert (await get(h, ticket.ticket_id)).state == GRANTED


async def test_another_tenant_cannot_look_at_or_claim_a_ticket(make_harness: MakeHarness) -> None:
    h = await make_harness(ONE_SLOT)
    holder = await h.acquire(input_tokens=1)
    ticket = await enqueue(h, input_tokens=3)
    await h.release(holder.lease_id)
    failure = await h.fail(get(h, ticket.ticket_id, tenant="b"))
    assert failure.code is grpc.StatusCode.PERMISSION_DENIED
    await h.advance(31)  # still unclaimed, so it went back
    assert (await h.pool("p")).in_flight == 0


async def test_an_unknown_ticket_is_not_found(make_harness: MakeHarness) -> None:
    h = await make_harness(ONE_SLOT)
    failure = await h.fail(get(h, "0" * 32))
    assert failure.code is grpc.StatusCode.NOT_FOUND
    assert (await h.fail(get(h, ""))).field_violations == ["ticket_id"]


async def test_a_ticket_outlives_the_replica_that_took_it(replicas: Replicas) -> None:
    a, b = await replicas(2, ONE_SLOT)
    holder = await a.acquire(input_tokens=1)
    ticket = await enqueue(a, input_tokens=3)
    await a.close()  # the replica that took the ticket is gone
    assert (await get(b, ticket.ticket_id)).state == QUEUED
    waiting = asyncio.ensure_future(wait(b, ticket.ticket_id, 30))
    await b.until_waiting_here(ticket.ticket_id)
    await b.release(holder.lease_id)
    granted = await waiting
    assert (granted.state, granted.lease.reserved_tokens) == (GRANTED, 3)
