"""Retry hints that hold, on both backends: a refusal's RetryInfo is the time after which this
call fits every limit that applies as things stand, so that a retry at exactly that time
succeeds (unless new load came in between) and one just before does not. The limit with the
longest wait names the refusal."""

from __future__ import annotations

from typing import Any

import pytest

from admitd.v1 import admission_pb2 as pb
from support.harness import Harness, MakeHarness, seconds

JUST_BEFORE = 0.001


async def refused(h: Harness, **fields: Any) -> tuple[str, dict[str, str], float]:
    failure = await h.fail(h.acquire(**fields))
    assert failure.retry_after is not None
    return failure.reason, failure.metadata, failure.retry_after


async def test_a_retry_at_the_hint_fits_both_token_buckets_that_bind(
    make_harness: MakeHarness,
) -> None:
    # The pool refills 100 tokens/s, tenant a 50/s.
    h = await make_harness(
        {
            "lease": {"ttl": "10m"},
            "pools": [{"name": "p", "tokens_per_minute": 6000}],
            "tenants": [{"name": "a", "tokens_per_minute": 3000}, {"name": "b"}],
        }
    )
    await h.acquire(tenant="b", input_tokens=3000)  # the pool has 3000 left
    await h.acquire(tenant="a", input_tokens=2000)  # the pool 1000, tenant a 1000
    # 2500 more: the pool is 1500 short (15 s), the tenant 1500 short too (30 s).
    reason, metadata, hint = await refused(h, tenant="a", input_tokens=2500)
    assert (reason, metadata["scope"], metadata["limit"]) == (
        "TOKEN_RATE_LIMIT",
        "tenant",
        "tokens_per_minute",
    )
    assert metadata["also"] == "pool:p:tokens_per_minute"
    assert hint == 30.0  # not the pool's 15 s: a retry then would be refused again
    await h.advance(hint - JUST_BEFORE)
    reason, metadata, again = await refused(h, tenant="a", input_tokens=2500)
    assert (reason, metadata["scope"]) == ("TOKEN_RATE_LIMIT", "tenant")
    assert again == pytest.approx(JUST_BEFORE, abs=1e-6)
    await h.advance(JUST_BEFORE)
    lease = await h.acquire(tenant="a", input_tokens=2500)
    assert lease.reserved_tokens == 2500


async def test_a_retry_at_the_hint_finds_the_slot_its_holder_gives_back_as_usual(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness({"lease": {"ttl": "2m"}, "pools": [{"name": "p", "max_concurrency": 2}]})
    for _ in range(3):  # calls of this pool are held 30 s
        lease = await h.acquire(input_tokens=1)
        await h.advance(30)
        await h.release(lease.lease_id)
    first = await h.acquire(input_tokens=1)
    await h.advance(10)
    await h.acquire(input_tokens=1)  # both slots held: one for 10 s, one just now
    await h.advance(5)
    reason, _, hint = await refused(h, input_tokens=1)
    assert reason == "CONCURRENCY_LIMIT"
    # The first holder is expected at 30 s: 15 s from now (not the old 30 s / 2 slots).
    assert hint == 15.0
    await h.advance(hint - JUST_BEFORE)
    assert (await refused(h, input_tokens=1))[0] == "CONCURRENCY_LIMIT"
    await h.advance(JUST_BEFORE)
    await h.release(first.lease_id)  # its holder, at its usual 30 s
    assert (await h.acquire(input_tokens=1)).lease_id


async def test_without_a_hold_seen_a_slot_is_expected_at_its_lease_s_expiry(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness(
        {"lease": {"ttl": "20s"}, "pools": [{"name": "p", "max_concurrency": 1}]}
    )
    await h.acquire(input_tokens=1)
    await h.advance(5)
    reason, _, hint = await refused(h, input_tokens=1)
    assert (reason, hint) == ("CONCURRENCY_LIMIT", 15.0)
    await h.advance(hint)  # the lease expires: its slot is free
    assert (await h.acquire(input_tokens=1)).lease_id


async def test_a_holder_past_its_usual_hold_is_expected_at_its_expiry(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness(
        {"lease": {"ttl": "60s"}, "pools": [{"name": "p", "max_concurrency": 1}]}
    )
    lease = await h.acquire(input_tokens=1)
    await h.advance(10)
    await h.release(lease.lease_id)  # held 10 s
    await h.acquire(input_tokens=1)
    await h.advance(12)  # held longer than usual: when it ends is anyone's guess
    reason, _, hint = await refused(h, input_tokens=1)
    assert (reason, hint) == ("CONCURRENCY_LIMIT", 48.0)


async def test_the_hint_waits_out_a_pause_and_the_bucket_behind_it(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness({"pools": [{"name": "p", "tokens_per_minute": 600}]})  # 10/s
    lease = await h.acquire(input_tokens=500)
    request = pb.ReleaseRequest(lease_id=lease.lease_id, provider_retry_after=seconds(4))
    request.usage.input_tokens = 500
    await h.stub.Release(request, timeout=10)  # a 429: paused 4 s, 100 tokens left
    # Paused for 4 s, then the bucket needs 30 s more for 400 tokens.
    reason, metadata, hint = await refused(h, input_tokens=400)
    assert (reason, metadata["limit"]) == ("TOKEN_RATE_LIMIT", "tokens_per_minute")
    assert metadata["also"] == "pool:p:availability"
    assert hint == 30.0
    await h.advance(hint - JUST_BEFORE)
    await refused(h, input_tokens=400)
    await h.advance(JUST_BEFORE)
    assert (await h.acquire(input_tokens=400)).reserved_tokens == 400


async def test_a_daily_quota_and_a_bucket_wait_for_the_day(make_harness: MakeHarness) -> None:
    h = await make_harness(
        {"pools": [{"name": "p", "tokens_per_minute": 600, "tokens_per_day": 1000}]}
    )
    await h.acquire(input_tokens=600)
    await h.advance(3600)
    await h.acquire(input_tokens=300)  # 900 of the day's 1000 used, 300 left in the bucket
    reason, metadata, hint = await refused(h, input_tokens=500)
    assert (reason, metadata["limit"]) == ("BUDGET_EXHAUSTED", "tokens_per_day")
    assert metadata["also"] == "pool:p:tokens_per_minute"  # 20 s: far shorter
    assert hint == 86_400 - 3600  # the ManualClock starts at midnight UTC
    await h.advance(hint - JUST_BEFORE)
    await refused(h, input_tokens=500)
    await h.advance(JUST_BEFORE)
    assert (await h.acquire(input_tokens=500)).reserved_tokens == 500
