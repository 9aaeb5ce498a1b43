"""A Release or Renew of a lease that expired says so (NOT_FOUND with reason LEASE_EXPIRED,
and what was charged), and a Release records the usage it reports: the ledger and the daily
budgets end up with what the provider billed, the rate buckets are refunded nothing (they
refilled meanwhile).

Both backends (``make_harness``), on the manual clock.
"""

from __future__ import annotations

from typing import Any

import grpc

from support.decoding import Failure
from support.harness import Harness, MakeHarness

Code = grpc.StatusCode
DAY1 = "2026-01-01"  # the ManualClock's first day
# 4 USD per million input tokens and 10 per million output: a 100 + 200 token reservation
# is $0.0024; 100 in and 5 out are $0.00045.
CONFIG: dict[str, Any] = {
    "lease": {"ttl": "10s"},
    "budget": {"usd_per_day": 100},
    "pools": [
        {
            "name": "p",
            "max_concurrency": 1,
            "tokens_per_minute": 1000,
            "tokens_per_day": 10_000,
            "price": {"input_per_million": 4, "output_per_million": 10},
        }
    ],
}


def expired(failure: Failure) -> dict[str, str]:
    assert (failure.code, failure.reason, failure.domain) == (
        Code.NOT_FOUND,
        "LEASE_EXPIRED",
        "admitd",
    ), failure
    assert failure.retry_after is None  # no retry changes the answer
    return failure.metadata


async def levels(h: Harness) -> tuple[float, float, float, int]:
    """The pool's tokens left this minute (rounded), its tokens used today, the global USD
    budget used today, and its slots in flight."""
    pool = await h.pool("p")
    budget = (await h.status()).budget
    return (
        round(pool.tokens_per_minute.value, 6),
        pool.tokens_per_day.value,
        round(budget.usd_per_day.value, 9),
        pool.in_flight,
    )


async def test_a_release_after_expiry_records_its_usage_and_says_what_was_charged(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness(CONFIG)
    lease = await h.acquire(tenant="a", input_tokens=100, max_output_tokens=200)
    await h.advance(10)  # expired: the full reservation is charged
    assert await h.usage() == [(DAY1, "a", "p", 1, 100, 200, 0.0024)]
    assert await levels(h) == (866.666667, 300, 0.0024, 0)

    renewal = expired(await h.fail(h.renew(lease.lease_id)))
    assert renewal == {
        "field": "lease_id",
        "reserved_tokens": "300",
        "reserved_usd": "0.0024",
        "charged_tokens": "300",
        "charged_usd": "0.0024",
        "settled": "false",
        "already_released": "false",
    }

    failure = await h.fail(h.release(lease.lease_id, (100, 5), tenant="a"))
    assert "expired: its full reservation (300 tokens, $0.002400)" in failure.message
    assert expired(failure) == {
        **renewal,
        "charged_tokens": "105",
        "charged_usd": "0.00045",
        "settled": "true",
    }
    # The ledger and the daily budgets hold what the provider billed; the rate bucket got
    # no refund (it refilled while the lease was held); no slot moved.
    assert await h.usage() == [(DAY1, "a", "p", 1, 100, 5, 0.00045)]
    assert await levels(h) == (866.666667, 105, 0.00045, 0)

    # Released again (a retry): the same answer, nothing recorded twice.
    again = expired(await h.fail(h.release(lease.lease_id, (1, 1))))
    assert again == {**renewal, "charged_tokens": "105", "charged_usd": "0.00045",
                     "settled": "true", "already_released": "true"}  # fmt: skip
    assert expired(await h.fail(h.renew(lease.lease_id))) == again
    assert await h.usage() == [(DAY1, "a", "p", 1, 100, 5, 0.00045)]
    assert (await levels(h))[1:] == (105, 0.00045, 0)


async def test_usage_above_an_expired_reservation_is_debt_in_the_bucket_too(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness(CONFIG)
    lease = await h.acquire(input_tokens=100, max_output_tokens=200)
    await h.advance(10)
    left = (await levels(h))[0]
    metadata = expired(await h.fail(h.release(lease.lease_id, (100, 400))))
    assert (metadata["charged_tokens"], metadata["charged_usd"]) == ("500", "0.0044")
    # 200 tokens above the reservation: charged to the bucket (never a refund), the day,
    # the budget and the ledger, as a Release in time would have.
    assert await levels(h) == (left - 200, 500, 0.0044, 0)
    assert await h.usage() == [(DAY1, "a", "p", 1, 100, 400, 0.0044)]


async def test_a_release_without_usage_settles_by_its_outcome(make_harness: MakeHarness) -> None:
    h = await make_harness(CONFIG)
    lease = await h.acquire(input_tokens=100, max_output_tokens=200)
    await h.advance(10)
    failed = expired(await h.fail(h.release(lease.lease_id, outcome=3)))  # PROVIDER_ERROR
    assert (failed["charged_tokens"], failed["settled"]) == ("0", "true")
    assert await h.usage() == [(DAY1, "a", "p", 1, 0, 0, 0.0)]
    assert (await levels(h))[1:3] == (0, 0.0)


async def test_only_the_owner_hears_of_an_expired_lease(make_harness: MakeHarness) -> None:
    h = await make_harness(CONFIG)
    lease = await h.acquire(tenant="a", input_tokens=100)
    await h.advance(10)
    foreign = (h.release(lease.lease_id, (1, 1), tenant="b"), h.renew(lease.lease_id, tenant="b"))
    for call in foreign:
        assert (await h.fail(call)).code == Code.PERMISSION_DENIED
    assert await h.usage() == [(DAY1, "a", "p", 1, 100, 0, 0.0004)]


async def test_an_expired_lease_is_remembered_one_ttl_then_not_found(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness(CONFIG)
    lease = await h.acquire(input_tokens=100)
    await h.advance(19.9)  # expired 9.9 s ago
    expired(await h.fail(h.renew(lease.lease_id)))
    await h.advance(0.1)
    for call in (h.renew(lease.lease_id), h.release(lease.lease_id, (1, 1))):
        failure = await h.fail(call)
        assert (failure.code, failure.reason) == (Code.NOT_FOUND, "")
        assert "unknown, released, or expired over a lease TTL ago" in failure.message
    assert await h.usage() == [(DAY1, "a", "p", 1, 100, 0, 0.0004)]
    unknown = await h.fail(h.release("0" * 32))
    assert (unknown.code, unknown.reason) == (Code.NOT_FOUND, "")
