"""``usage``: admitd's cost ledger through the Python client, against a real admitd
(ManualClock: it starts at 2026-01-01T00:00:00Z and moves only when told)."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta, timezone

import grpc
import pytest

from admitd_client import AdmissionClient, AdmitdError, AsyncAdmissionClient, UsageRow
from admitd_client._ledger import day_text
from support.client import GPT4, GPT4O, approx, serve, target

DAY1, DAY2 = date(2026, 1, 1), date(2026, 1, 2)


async def test_usage_rows_per_day_tenant_and_pool() -> None:
    async with serve() as h:
        a = AsyncAdmissionClient(target(h), tenant="a")
        b = AsyncAdmissionClient(target(h), tenant="b")
        async with a.lease(pool=GPT4O, input_tokens=1000, max_output_tokens=500) as lease:
            lease.record(input_tokens=800, output_tokens=120)
        async with b.lease(pool=GPT4, input_tokens=30, max_output_tokens=10):
            pass  # nothing recorded: the whole reservation is charged
        await h.advance(86_400)
        async with a.lease(pool=GPT4O, input_tokens=10) as lease:
            lease.record(input_tokens=10, output_tokens=2)

        # $2.5 / $10 per million on gpt-4o; gpt-4 has no prices.
        first = UsageRow(DAY1, "a", GPT4O, 1, 800, 120, approx(0.0032))
        second = UsageRow(DAY1, "b", GPT4, 1, 30, 10, 0.0)
        third = UsageRow(DAY2, "a", GPT4O, 1, 10, 2, approx(4.5e-5))
        assert await a.usage() == [third]  # default: today (admitd's), every tenant
        assert await a.usage(from_day=DAY1) == [first, second]
        assert await a.usage(from_day=DAY1, to_day=DAY2) == [first, second, third]
        assert await a.usage(from_day="2026-01-01", to_day="2026-01-02", tenant="a") == [
            first,
            third,
        ]
        assert await a.usage(from_day=DAY1, pool=GPT4) == [second]
        # A datetime is taken on its UTC day: 2026-01-01T23:30 at UTC-1 is Jan 2 in UTC.
        late = datetime(2026, 1, 1, 23, 30, tzinfo=timezone(timedelta(hours=-1)))
        assert await a.usage(from_day=late) == [third]
        row = (await a.usage())[0]
        assert isinstance(row.day, date)
        with pytest.raises(AdmitdError) as caught:
            await a.usage(from_day="01/01/2026")
        assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert list(caught.value.field_violations) == ["from_day"]
        await a.close()
        await b.close()


async def test_the_blocking_client_reads_the_ledger_too() -> None:
    async with serve() as h:

        def scenario() -> list[UsageRow]:
            with AdmissionClient(target(h), tenant="a") as client:
                with client.lease(pool=GPT4O, input_tokens=5) as lease:
                    lease.record(input_tokens=5, output_tokens=1)
                return client.usage(from_day=DAY1, tenant="a")

        rows = await asyncio.to_thread(scenario)
        assert rows == [UsageRow(DAY1, "a", GPT4O, 1, 5, 1, approx(2.25e-5))]


def test_days_as_getusage_takes_them() -> None:
    assert day_text(None) == ""
    assert day_text(DAY1) == "2026-01-01"
    assert day_text("2026-01-31") == "2026-01-31"
    assert day_text(datetime(2026, 3, 4, 23, 59)) == "2026-03-04"  # naive: already UTC
    assert day_text(datetime(2026, 3, 4, 23, 59, tzinfo=UTC)) == "2026-03-04"
