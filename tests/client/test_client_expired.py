"""A lease that expired before its release, through the Python client: the release records
the usage all the same, and the lease says it expired and what was charged (``LeaseEnded``,
reason LEASE_EXPIRED, for an explicit release or renewal). A real admitd on the ManualClock.
"""

from __future__ import annotations

import asyncio
from datetime import date

import pytest

from admitd_client import (
    AdmissionClient,
    AsyncAdmissionClient,
    LeaseEnded,
    Reason,
    Settlement,
    UsageRow,
)
from support.client import GPT4O, approx, serve, target

DAY1 = date(2026, 1, 1)
TTL = 30.0  # support.client.CONFIG's lease TTL


async def test_a_lease_block_that_outlived_its_lease_records_its_usage() -> None:
    async with serve() as h:
        assert h.clock is not None
        async with AsyncAdmissionClient(target(h), tenant="a", wall=h.clock.wall) as client:
            async with client.lease(pool=GPT4O, input_tokens=1000, max_output_tokens=500) as lease:
                await h.advance(TTL)  # the call outlives the lease: admitd reclaims it
                lease.record(input_tokens=800, output_tokens=120)
            # The block's release was told LEASE_EXPIRED (logged, not raised) and recorded
            # the usage: 920 tokens charged instead of the 1500 reserved.
            assert lease.expired
            assert lease.settlement == Settlement(920, 580, False, approx(0.0032))
            assert await client.usage(from_day=DAY1) == [
                UsageRow(DAY1, "a", GPT4O, 1, 800, 120, approx(0.0032))
            ]
            pool = next(p for p in (await client.status()).pools if p.name == GPT4O)
            assert pool.in_flight == 0


async def test_release_and_renew_of_an_expired_lease_raise_lease_ended() -> None:
    async with serve() as h:
        assert h.clock is not None
        wall = h.clock.wall

        def scenario() -> None:
            with AdmissionClient(target(h), tenant="a", wall=wall) as client:
                lease = client.acquire(pool=GPT4O, input_tokens=1000, max_output_tokens=500)
                asyncio.run_coroutine_threadsafe(h.advance(TTL), loop).result(10)
                with pytest.raises(LeaseEnded) as renewal:
                    client.renew(lease)
                assert renewal.value.reason is Reason.LEASE_EXPIRED
                assert (renewal.value.charged_tokens, renewal.value.settled) == (1500, False)
                assert renewal.value.charged_usd == approx(0.0075)

                lease.record(input_tokens=800, output_tokens=120)
                with pytest.raises(LeaseEnded) as release:
                    client.release(lease)
                ended = release.value
                assert (ended.reserved_tokens, ended.charged_tokens) == (1500, 920)
                assert (ended.settled, ended.already_released) == (True, False)
                assert "expired" in ended.message
                assert lease.expired
                assert lease.settlement == Settlement(920, 580, False, approx(0.0032))

                with pytest.raises(LeaseEnded) as again:  # idempotent: recorded once
                    client.release(lease)
                assert again.value.already_released
                assert client.usage(from_day=DAY1)[0].output_tokens == 120

        loop = asyncio.get_running_loop()
        await asyncio.to_thread(scenario)
