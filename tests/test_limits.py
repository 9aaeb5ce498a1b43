"""Limits are checked and reserved atomically, settled on release, and explained on rejection."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from support.harness import MakeHarness

ONE_MINUTE_TPM = {"name": "p", "tokens_per_minute": 1200}  # refills 20 tokens/s


@pytest.mark.parametrize(("callers", "limit"), [(50, 7), (40, 1)])
async def test_exactly_k_of_n_concurrent_acquires_are_admitted(
    make_harness: MakeHarness, callers: int, limit: int
) -> None:
    h = await make_harness({"pools": [{"name": "p", "max_concurrency": limit}]})
    results = await asyncio.gather(
        *(h.acquire(input_tokens=10) for _ in range(callers)), return_exceptions=True
    )
    leases = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(leases) == limit
    assert len(errors) == callers - limit
    assert {e.code() for e in errors} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert len({lease.lease_id for lease in leases}) == limit
    assert (await h.pool("p")).in_flight == limit


async def test_tenant_and_pool_limits_are_reserved_all_or_nothing(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness(
        {
            "pools": [{"name": "p", "tokens_per_minute": 1000}],
            "tenants": [{"name": "a", "max_concurrency": 1}, {"name": "b"}],
        }
    )
    await h.acquire(tenant="a", input_tokens=100)
    failure = await h.fail(h.acquire(tenant="a", input_tokens=100))
    assert failure.reason == "CONCURRENCY_LIMIT"
    assert failure.metadata["scope"] == "tenant"
    # The refused call took nothing from the pool bucket: b can still take the other 900.
    await h.acquire(tenant="b", input_tokens=900)
    assert (await h.pool("p")).tokens_per_minute.value == 0


async def test_release_refunds_unused_tokens_to_every_bucket_and_quota(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness(
        {
            "pools": [{"name": "p", "tokens_per_minute": 10_000, "tokens_per_day": 50_000}],
            "tenants": [{"name": "a", "tokens_per_minute": 5_000, "tokens_per_day": 8_000}],
            "budget": {"tokens_per_day": 100_000},
        }
    )
    lease = await h.acquire(input_tokens=400, max_output_tokens=600)
    status = await h.status()
    assert status.pools[0].tokens_per_minute.value == 9_000
    assert status.tenants[0].tokens_per_minute.value == 4_000
    assert status.tenants[0].tokens_per_day.value == 1_000

    settled = await h.release(lease.lease_id, (380, 120))
    assert (settled.charged_tokens, settled.refunded_tokens) == (500, 500)
    status = await h.status()
    assert status.pools[0].tokens_per_minute.value == 9_500
    assert status.pools[0].tokens_per_day.value == 500
    assert status.tenants[0].tokens_per_minute.value == 4_500
    assert status.tenants[0].tokens_per_day.value == 500
    assert status.budget.tokens_per_day.value == 500
    assert status.pools[0].in_flight == 0


async def test_release_without_usage_charges_the_full_reservation(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness({"pools": [{"name": "p", "tokens_per_day": 10_000}]})
    lease = await h.acquire(input_tokens=300, max_output_tokens=200)
    settled = await h.release(lease.lease_id)
    assert (settled.charged_tokens, settled.refunded_tokens) == (500, 0)
    assert (await h.pool("p")).tokens_per_day.value == 500


async def test_usage_above_the_reservation_is_charged_and_puts_the_bucket_in_debt(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness({"pools": [{"name": "p", "tokens_per_minute": 1200}]})
    lease = await h.acquire(input_tokens=100, max_output_tokens=100)
    settled = await h.release(lease.lease_id, (100, 1300))
    assert (settled.charged_tokens, settled.refunded_tokens) == (1400, 0)
    pool = await h.pool("p")
    assert pool.tokens_per_minute.value == -200
    failure = await h.fail(h.acquire(input_tokens=1))
    # 201 tokens short at 20 tokens/s.
    assert failure.reason == "TOKEN_RATE_LIMIT"
    assert failure.retry_after == pytest.approx(201 / 20)


async def test_token_bucket_rejection_says_exactly_when_it_refills(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness({"pools": [ONE_MINUTE_TPM]})
    await h.acquire(input_tokens=1000)
    failure = await h.fail(h.acquire(input_tokens=500))
    assert failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert failure.domain == "admitd"
    assert failure.reason == "TOKEN_RATE_LIMIT"
    assert failure.metadata["limit"] == "tokens_per_minute"
    assert failure.metadata["pool"] == "p"
    assert failure.retry_after == pytest.approx((500 - 200) / 20)
    await h.advance(14.9)
    await h.fail(h.acquire(input_tokens=500))
    await h.advance(0.1)
    assert (await h.acquire(input_tokens=500)).reserved_tokens == 500


async def test_request_bucket_limits_requests_per_minute(make_harness: MakeHarness) -> None:
    h = await make_harness({"pools": [{"name": "p", "requests_per_minute": 2}]})
    await h.acquire(input_tokens=1)
    await h.acquire(input_tokens=1)
    failure = await h.fail(h.acquire(input_tokens=1))
    assert failure.reason == "REQUEST_RATE_LIMIT"
    assert failure.retry_after == pytest.approx(30.0)
    await h.advance(30)
    await h.acquire(input_tokens=1)


async def test_concurrency_retry_delay_follows_observed_hold_times(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness({"pools": [{"name": "p", "max_concurrency": 2}]})
    first = await h.acquire(input_tokens=1)
    await h.advance(8)
    await h.release(first.lease_id)  # held 8 s
    await h.acquire(input_tokens=1)
    await h.acquire(input_tokens=1)
    failure = await h.fail(h.acquire(input_tokens=1))
    assert failure.reason == "CONCURRENCY_LIMIT"
    # Two leases just granted, each held 8 s as usual: the first slot frees in 8 s.
    assert failure.retry_after == 8.0


async def test_a_call_bigger_than_a_bucket_is_rejected_at_once_without_retry(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness({"pools": [ONE_MINUTE_TPM]})
    failure = await h.fail(h.acquire(input_tokens=1000, max_output_tokens=201, wait_timeout=30))
    assert failure.reason == "TOKEN_RATE_LIMIT"
    assert failure.retry_after is None
    assert "can never fit" in failure.message
    assert (await h.pool("p")).queued == 0


async def test_global_daily_budget_rejects_at_once_until_the_day_turns(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness({"budget": {"tokens_per_day": 1000}})
    await h.acquire(input_tokens=600)
    failure = await h.fail(h.acquire(input_tokens=600, wait_timeout=30))
    assert failure.reason == "BUDGET_EXHAUSTED"
    assert failure.metadata["scope"] == "global"
    # The manual clock starts at midnight UTC: the budget resets in exactly one day.
    assert failure.retry_after == pytest.approx(86_400)
    assert (await h.pool("p")).queued == 0
    await h.advance(86_400)
    await h.acquire(input_tokens=600)
    assert (await h.status()).budget.tokens_per_day.value == 600


async def test_tenant_usd_quota_uses_the_pool_price_table(make_harness: MakeHarness) -> None:
    h = await make_harness(
        {
            "pools": [{"name": "p", "price": {"input_per_million": 2.5, "output_per_million": 10}}],
            "tenants": [{"name": "a", "usd_per_day": 0.01}],
        }
    )
    # 1000 in + 500 out = $0.0025 + $0.005 = $0.0075
    lease = await h.acquire(input_tokens=1000, max_output_tokens=500)
    assert lease.reserved_usd == pytest.approx(0.0075)
    failure = await h.fail(h.acquire(input_tokens=1000, max_output_tokens=500))
    assert failure.reason == "TENANT_QUOTA"
    assert failure.metadata["limit"] == "usd_per_day"
    settled = await h.release(lease.lease_id, (1000, 100))  # $0.0035 actually
    assert settled.charged_usd == pytest.approx(0.0035)
    tenant = (await h.status()).tenants[0]
    assert tenant.usd_per_day.value == pytest.approx(0.0035)
    # $0.0065 left: a $0.0055 call fits again.
    await h.acquire(input_tokens=1000, max_output_tokens=300)


async def test_pool_daily_budget_is_budget_exhausted(make_harness: MakeHarness) -> None:
    h = await make_harness({"pools": [{"name": "p", "tokens_per_day": 100}]})
    await h.acquire(input_tokens=80)
    failure = await h.fail(h.acquire(input_tokens=30))
    assert failure.reason == "BUDGET_EXHAUSTED"
    assert failure.metadata == {
        "scope": "pool",
        "pool": "p",
        "limit": "tokens_per_day",
        "limit_value": "100",
        "requested": "30",
    }
