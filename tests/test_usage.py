"""The cost ledger: every release (and expiry) is charged per UTC day, tenant and pool in
the store, and GetUsage / `admitd usage` report it."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from admitd._cli import main as cli
from admitd.v1 import admission_pb2 as pb
from support.harness import MakeHarness

PRICED: dict[str, Any] = {
    "lease": {"ttl": 60},
    "pools": [
        {"name": "p", "price": {"input_per_million": 2.5, "output_per_million": 10}},
        {"name": "q"},
    ],
}
DAY1, DAY2 = "2026-01-01", "2026-01-02"  # the ManualClock starts at 2026-01-01T00:00:00Z


async def test_releases_and_expiries_are_charged_per_day_tenant_and_pool(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness(PRICED)
    first = await h.acquire(tenant="a", input_tokens=1000, max_output_tokens=500)
    await h.release(first.lease_id, (800, 120))  # actual usage
    second = await h.acquire(tenant="a", input_tokens=100, max_output_tokens=50)
    await h.release(second.lease_id)  # no usage: the full reservation
    await h.acquire(tenant="b", pool="q", input_tokens=30)  # never released: expires
    await h.advance(61)
    assert await h.usage() == [
        # 900 in, 170 out at $2.5/$10 per million: 0.00225 + 0.0017
        (DAY1, "a", "p", 2, 900, 170, 0.00395),
        (DAY1, "b", "q", 1, 30, 0, 0.0),
    ]
    assert await h.usage(tenant="b") == [(DAY1, "b", "q", 1, 30, 0, 0.0)]
    assert await h.usage(pool="p", tenant="b") == []


async def test_each_utc_day_has_its_own_rows(make_harness: MakeHarness) -> None:
    h = await make_harness(PRICED)
    lease = await h.acquire(input_tokens=10)
    await h.release(lease.lease_id, (10, 0))
    await h.advance(86_400)
    lease = await h.acquire(input_tokens=20)
    await h.release(lease.lease_id, (20, 5))
    assert [row[:6] for row in await h.usage(from_day=DAY1, to_day=DAY2)] == [
        (DAY1, "a", "p", 1, 10, 0),
        (DAY2, "a", "p", 1, 20, 5),
    ]
    assert [row[0] for row in await h.usage()] == [DAY2]  # default: today


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"from_day": "yesterday"}, "from_day"),
        ({"from_day": DAY2, "to_day": DAY1}, "to_day"),
        ({"from_day": "2025-01-01", "to_day": "2026-01-02"}, "to_day"),  # over 366 days
    ],
)
async def test_bad_day_ranges_are_invalid(
    make_harness: MakeHarness, fields: dict[str, str], field: str
) -> None:
    h = await make_harness(PRICED)
    failure = await h.fail(h.stub.GetUsage(pb.GetUsageRequest(**fields), timeout=10))
    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.field_violations == [field]


async def test_usage_cli_prints_the_ledger_with_totals(
    make_harness: MakeHarness, capsys: pytest.CaptureFixture[str]
) -> None:
    h = await make_harness(PRICED)
    lease = await h.acquire(input_tokens=1200, max_output_tokens=300)
    request = pb.ReleaseRequest(lease_id=lease.lease_id)
    request.usage.input_tokens, request.usage.output_tokens = 1200, 250
    request.usage.cached_input_tokens = 1024  # no cache prices: at the input price
    await h.stub.Release(request, timeout=10)
    target = f"127.0.0.1:{h.server.port}"
    assert await asyncio.to_thread(cli, ["usage", "--target", target, "--from", DAY1]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "DAY         TENANT  POOL  CALLS  INPUT  CACHE READ  CACHE WRITE  OUTPUT      USD",
        "2026-01-01  a       p         1  1,200       1,024            0     250  $0.0055",
        "total                         1  1,200       1,024            0     250  $0.0055",
    ]
