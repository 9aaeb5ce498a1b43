"""Leases: expiry and renewal, idempotent Acquire, idempotent and owned Release."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from admitd.v1 import admission_pb2 as pb
from support.harness import MakeHarness

TTL = {"lease": {"ttl": "10s", "reap_interval": "1s"}}


async def test_expired_lease_frees_its_slot_and_keeps_its_full_charge(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness(
        {**TTL, "pools": [{"name": "p", "max_concurrency": 1, "tokens_per_day": 1000}]}
    )
    lease = await h.acquire(input_tokens=100, max_output_tokens=50)
    assert h.clock is not None
    assert lease.expires_at.ToNanoseconds() == round((h.clock.wall() + 10) * 1e9)
    await h.advance(9.9)
    assert (await h.pool("p")).in_flight == 1
    await h.advance(0.1)
    pool = await h.pool("p")
    assert pool.in_flight == 0
    assert pool.tokens_per_day.value == 150
    # It says so (test_lease_expired.py has the rest).
    failure = await h.fail(h.renew(lease.lease_id))
    assert (failure.code, failure.reason) == (grpc.StatusCode.NOT_FOUND, "LEASE_EXPIRED")


async def test_expiry_hands_the_slot_to_a_waiter(make_harness: MakeHarness) -> None:
    h = await make_harness({**TTL, "pools": [{"name": "p", "max_concurrency": 1}]})
    await h.acquire(input_tokens=1)
    waiting = h.acquire_later(input_tokens=1, wait_timeout=60)
    await h.until_queued("p", 1)
    await h.advance(10)
    lease = await waiting
    assert lease.queued_for.ToTimedelta().total_seconds() == pytest.approx(10)


async def test_renew_extends_from_now(make_harness: MakeHarness) -> None:
    h = await make_harness({**TTL, "pools": [{"name": "p", "max_concurrency": 1}]})
    lease = await h.acquire(input_tokens=1)
    await h.advance(8)
    renewed = await h.renew(lease.lease_id, extend_by=30)
    assert renewed.lease_id == lease.lease_id
    assert h.clock is not None
    assert renewed.expires_at.ToNanoseconds() == round((h.clock.wall() + 30) * 1e9)
    await h.advance(29)
    assert (await h.pool("p")).in_flight == 1
    default = await h.renew(lease.lease_id)  # no extend_by: one TTL
    assert default.expires_at.ToNanoseconds() == round((h.clock.wall() + 10) * 1e9)
    await h.advance(10)
    assert (await h.pool("p")).in_flight == 0


async def test_release_is_idempotent_and_says_so(make_harness: MakeHarness) -> None:
    h = await make_harness({"pools": [{"name": "p", "tokens_per_minute": 1000}]})
    lease = await h.acquire(input_tokens=100, max_output_tokens=100)
    first = await h.release(lease.lease_id, (50, 50))
    assert (first.charged_tokens, first.refunded_tokens, first.already_released) == (
        100,
        100,
        False,
    )
    second = await h.release(lease.lease_id, (0, 0))
    assert (second.charged_tokens, second.refunded_tokens, second.already_released) == (
        100,
        100,
        True,
    )
    assert (await h.pool("p")).tokens_per_minute.value == 900


async def test_concurrent_releases_settle_once(make_harness: MakeHarness) -> None:
    h = await make_harness({"pools": [{"name": "p", "tokens_per_minute": 1000}]})
    lease = await h.acquire(input_tokens=500)
    results = await asyncio.gather(*(h.release(lease.lease_id, (100, 0)) for _ in range(10)))
    assert sum(not r.already_released for r in results) == 1
    assert (await h.pool("p")).tokens_per_minute.value == 900


async def test_only_the_owning_tenant_may_release_or_renew(make_harness: MakeHarness) -> None:
    h = await make_harness({"pools": [{"name": "p", "max_concurrency": 1}]})
    lease = await h.acquire(tenant="a", input_tokens=1)
    failure = await h.fail(h.release(lease.lease_id, tenant="b"))
    assert failure.code == grpc.StatusCode.PERMISSION_DENIED
    failure = await h.fail(h.renew(lease.lease_id, tenant="b"))
    assert failure.code == grpc.StatusCode.PERMISSION_DENIED
    assert (await h.pool("p")).in_flight == 1
    assert not (await h.release(lease.lease_id, tenant="a")).already_released


async def test_idempotent_acquire_returns_the_same_lease(make_harness: MakeHarness) -> None:
    h = await make_harness(
        {"pools": [{"name": "p", "max_concurrency": 5, "tokens_per_minute": 1000}]}
    )
    first = await h.acquire(input_tokens=100, idempotency_key="req-1")
    again = await h.acquire(input_tokens=100, idempotency_key="req-1")
    assert again.lease_id == first.lease_id
    pool = await h.pool("p")
    assert (pool.in_flight, pool.tokens_per_minute.value) == (1, 900)
    # Another tenant's key space is its own.
    other = await h.acquire(tenant="b", input_tokens=100, idempotency_key="req-1")
    assert other.lease_id != first.lease_id
    # After release a retry still gets the same (settled) lease, not a new reservation.
    await h.release(first.lease_id, (10, 0))
    after = await h.acquire(input_tokens=100, idempotency_key="req-1")
    assert after.lease_id == first.lease_id
    assert (await h.pool("p")).in_flight == 1


async def test_idempotency_key_reused_for_another_request_is_invalid(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness()
    await h.acquire(input_tokens=100, idempotency_key="req-1")
    failure = await h.fail(h.acquire(input_tokens=200, idempotency_key="req-1"))
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.field_violations == ["idempotency_key"]
    assert (await h.pool("p")).in_flight == 1


async def test_idempotent_retries_of_a_queued_request_share_one_grant(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness({"pools": [{"name": "p", "max_concurrency": 1}]})
    holder = await h.acquire(input_tokens=1)
    first = h.acquire_later(input_tokens=5, wait_timeout=60, idempotency_key="k")
    await h.until_queued("p", 1)
    retry = h.acquire_later(input_tokens=5, wait_timeout=60, idempotency_key="k")
    await asyncio.sleep(0.05)  # the retry's RPC reaches the server (no time passes)
    assert (await h.pool("p")).queued == 1
    await h.release(holder.lease_id)
    a, b = await asyncio.gather(first, retry)
    assert a.lease_id == b.lease_id
    assert (await h.pool("p")).in_flight == 1


async def test_idempotency_is_forgotten_after_the_lease_ttl(make_harness: MakeHarness) -> None:
    h = await make_harness(TTL)
    first = await h.acquire(input_tokens=1, idempotency_key="k")
    await h.release(first.lease_id)
    await h.advance(10)
    again = await h.acquire(input_tokens=1, idempotency_key="k")
    assert again.lease_id != first.lease_id


async def test_lease_ids_are_128_bit_random(make_harness: MakeHarness) -> None:
    h = await make_harness()
    ids = [(await h.acquire(input_tokens=1)).lease_id for _ in range(50)]
    assert len(set(ids)) == 50
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


async def test_queued_for_is_zero_for_an_immediate_grant(make_harness: MakeHarness) -> None:
    h = await make_harness()
    lease: pb.Lease = await h.acquire(input_tokens=1)
    assert lease.queued_for.ToNanoseconds() == 0
