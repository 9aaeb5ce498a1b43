"""What a Release charges, on both backends: the reported usage, priced with cached input at
its own prices; without usage, what the call's outcome implies (README, "How admission
works"). The same charge reaches the answer, the token bucket, the daily quotas, the USD
budget and the ledger."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from admitd.v1 import admission_pb2 as pb
from support.harness import Harness, MakeHarness

# Nano-USD per token: 2.5 input, 1.25 cached, 3.125 cache write, 10 output.
PRICE = {
    "input_per_million": 2.5,
    "cached_input_per_million": 1.25,
    "cache_write_input_per_million": 3.125,
    "output_per_million": 10,
}
CONFIG: dict[str, Any] = {
    "pools": [{"name": "p", "tokens_per_minute": 6000, "tokens_per_day": 100_000, "price": PRICE}],
    "tenants": [{"name": "a", "usd_per_day": 1.0}],
}
INPUT, OUTPUT = 1000, 500
# The reservation's input is priced at the dearer of the input and cache-write prices.
RESERVED_NANO = INPUT * 3125 + OUTPUT * 10_000


def release_request(
    lease_id: str, outcome: str, usage: tuple[int, ...] | None
) -> pb.ReleaseRequest:
    request = pb.ReleaseRequest(lease_id=lease_id, outcome=pb.Outcome.Value(f"OUTCOME_{outcome}"))
    if usage is not None:
        u = request.usage
        u.input_tokens, u.output_tokens, u.cached_input_tokens, u.cache_write_input_tokens = usage
    return request


async def charged(h: Harness) -> tuple[float, float, float, tuple[Any, ...]]:
    """Tokens taken from the bucket and today's quota, USD from the tenant's daily budget,
    and the ledger's row (calls, input, output, cached, cache write, nano-USD)."""
    status = await h.status()
    pool = next(p for p in status.pools if p.name == "p")
    tenant = next(t for t in status.tenants if t.name == "a")
    (row,) = (await h.stub.GetUsage(pb.GetUsageRequest(), timeout=10)).rows
    ledger = (
        row.calls,
        row.input_tokens,
        row.output_tokens,
        row.cached_input_tokens,
        row.cache_write_input_tokens,
        round(row.usd * 1e9),
    )
    bucket_taken = 6000 - pool.tokens_per_minute.value
    return bucket_taken, pool.tokens_per_day.value, round(tenant.usd_per_day.value * 1e9), ledger


@pytest.mark.parametrize(
    ("outcome", "tokens", "nano_usd"),
    [
        ("OK", (INPUT, OUTPUT), RESERVED_NANO),  # the full reservation, at its own price
        ("PROVIDER_RATE_LIMITED", (0, 0), 0),  # a 429 or 529 is not billed
        ("PROVIDER_ERROR", (0, 0), 0),  # nor a failed request
        ("TIMEOUT", (INPUT, 0), INPUT * 2500),  # the prompt may have been processed
        ("CANCELLED", (INPUT, 0), INPUT * 2500),
    ],
)
async def test_a_release_without_usage_is_charged_by_its_outcome(
    make_harness: MakeHarness, outcome: str, tokens: tuple[int, int], nano_usd: int
) -> None:
    h = await make_harness(CONFIG)
    lease = await h.acquire(input_tokens=INPUT, max_output_tokens=OUTPUT)
    assert round(lease.reserved_usd * 1e9) == RESERVED_NANO
    answer = await h.stub.Release(release_request(lease.lease_id, outcome, None), timeout=10)
    total = sum(tokens)
    assert (answer.charged_tokens, answer.refunded_tokens) == (total, INPUT + OUTPUT - total)
    assert round(answer.charged_usd * 1e9) == nano_usd
    assert await charged(h) == (total, total, nano_usd, (1, *tokens, 0, 0, nano_usd))


@pytest.mark.parametrize("outcome", ["PROVIDER_RATE_LIMITED", "PROVIDER_ERROR", "TIMEOUT"])
async def test_reported_usage_is_charged_whatever_the_outcome(
    make_harness: MakeHarness, outcome: str
) -> None:
    h = await make_harness(CONFIG)
    lease = await h.acquire(input_tokens=INPUT, max_output_tokens=OUTPUT)
    usage = (INPUT, 120, 0, 0)  # e.g. a stream cut by a timeout after 120 tokens
    answer = await h.stub.Release(release_request(lease.lease_id, outcome, usage), timeout=10)
    nano_usd = INPUT * 2500 + 120 * 10_000
    assert (answer.charged_tokens, round(answer.charged_usd * 1e9)) == (INPUT + 120, nano_usd)
    assert await charged(h) == (1120, 1120, nano_usd, (1, INPUT, 120, 0, 0, nano_usd))


async def test_cached_input_is_priced_apart(make_harness: MakeHarness) -> None:
    h = await make_harness(CONFIG)
    lease = await h.acquire(input_tokens=INPUT, max_output_tokens=OUTPUT)
    # 1000 input tokens: 600 read from the cache, 250 written to it, 150 neither.
    usage = (INPUT, 100, 600, 250)
    answer = await h.stub.Release(release_request(lease.lease_id, "OK", usage), timeout=10)
    nano_usd = 150 * 2500 + 600 * 1250 + 250 * 3125 + 100 * 10_000
    assert (answer.charged_tokens, round(answer.charged_usd * 1e9)) == (1100, nano_usd)
    # Token limits count every input token, cached or not.
    assert await charged(h) == (1100, 1100, nano_usd, (1, INPUT, 100, 600, 250, nano_usd))


async def test_prices_without_cache_fields_charge_cached_input_as_input(
    make_harness: MakeHarness,
) -> None:
    plain = {"input_per_million": 2.5, "output_per_million": 10}
    h = await make_harness({"pools": [{"name": "p", "price": plain}]})
    lease = await h.acquire(input_tokens=INPUT, max_output_tokens=OUTPUT)
    assert round(lease.reserved_usd * 1e9) == INPUT * 2500 + OUTPUT * 10_000
    usage = (INPUT, 100, 600, 250)
    answer = await h.stub.Release(release_request(lease.lease_id, "OK", usage), timeout=10)
    assert round(answer.charged_usd * 1e9) == INPUT * 2500 + 100 * 10_000


@pytest.mark.parametrize(
    ("usage", "field"),
    [
        ((100, 0, 80, 30), "usage.cached_input_tokens"),  # parts above the whole
        ((100, 0, -1, 0), "usage.cached_input_tokens"),
        ((100, 0, 0, -5), "usage.cache_write_input_tokens"),
    ],
)
async def test_cached_counts_must_be_parts_of_the_input(
    make_harness: MakeHarness, usage: tuple[int, int, int, int], field: str
) -> None:
    h = await make_harness(CONFIG)
    lease = await h.acquire(input_tokens=INPUT, max_output_tokens=OUTPUT)
    request = release_request(lease.lease_id, "OK", usage)
    failure = await h.fail(h.stub.Release(request, timeout=10))
    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.field_violations == [field]
    assert (await h.pool("p")).in_flight == 1  # nothing settled
