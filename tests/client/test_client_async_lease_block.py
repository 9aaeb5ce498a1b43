"""AsyncAdmissionClient's ``lease()`` block against a real admitd on a socket (ManualClock:
time passes only in injected sleeps): renewal keeps a long call alive until the lease is
found gone; the release reports the block's outcome (an exception, a cancellation, or one
set in the block); singleflight shares one lease and one call among identical callers.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

import grpc
import pytest

from admitd._clock import settle
from admitd_client import (
    AsyncAdmissionClient,
    Lease,
    LeaseEnded,
    Outcome,
    Reason,
    Rejected,
    Settlement,
)
from support.client import (
    GPT4O,
    ClockSleep,
    ProviderRateLimit,
    aio_channel,
    approx,
    serve,
    target,
)


class LogSeen(logging.Handler):
    """Sets ``event`` when the client logs a message containing ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


async def test_renewal_keeps_a_long_call_alive() -> None:
    async with serve() as h:  # lease TTL 30 s
        assert h.clock is not None
        sleep = ClockSleep(h, limit=4)
        client = AsyncAdmissionClient(target(h), tenant="a", sleep=sleep, wall=h.clock.wall)
        async with client.lease(pool=GPT4O, input_tokens=10, max_output_tokens=5) as lease:
            assert lease.expires_at is not None
            first_expiry = lease.expires_at
            # Four renewals later (bounded wait); admitd's clock moved 40 s > the TTL.
            await asyncio.wait_for(sleep.done.wait(), timeout=30)
            assert sleep.slept == pytest.approx([10.0] * 4)  # a third of the time left
            assert (lease.renewals, lease.lost) == (4, False)
            assert lease.expires_at == first_expiry + timedelta(seconds=40)
            assert (await h.pool(GPT4O)).in_flight == 1
            lease.record(input_tokens=10, output_tokens=5)
        assert lease.settlement is not None
        assert lease.settlement.charged_tokens == 15
        assert not lease.settlement.already_released
        await client.close()


async def test_without_renewal_the_same_lease_expires() -> None:
    async with serve() as h, AsyncAdmissionClient(target(h), tenant="a") as client:
        lease = await client.acquire(pool=GPT4O, input_tokens=10, max_output_tokens=5)
        await h.advance(40)
        assert (await h.pool(GPT4O)).in_flight == 0  # reclaimed at its TTL
        with pytest.raises(LeaseEnded) as caught:
            await client.release(lease)
        assert caught.value.code is grpc.StatusCode.NOT_FOUND
        assert caught.value.reason is Reason.LEASE_EXPIRED
        assert (caught.value.charged_tokens, lease.expired) == (15, True)


async def test_a_lease_found_gone_stops_renewing_and_the_block_still_ends() -> None:
    async with serve() as h:
        sleep = ClockSleep(h, limit=1)
        client = AsyncAdmissionClient(target(h), tenant="a", sleep=sleep, renew_every=45.0)
        gone = LogSeen("can no longer be renewed")
        logging.getLogger("admitd_client").addHandler(gone)
        try:
            async with client.lease(pool=GPT4O, input_tokens=10) as lease:
                await asyncio.wait_for(gone.event.wait(), timeout=30)  # bounded, not a sleep
                assert sleep.slept == [45.0]
                assert (lease.lost, lease.expired) == (True, True)
                assert lease.renewals == 0
        finally:
            logging.getLogger("admitd_client").removeHandler(gone)
        # Its release was told LEASE_EXPIRED (logged, not raised): the reservation stands.
        assert lease.settlement == Settlement(10, 0, False, approx(2.5e-5))
        assert not sleep.done.is_set()  # no renewal after LEASE_EXPIRED
        await client.close()


@pytest.mark.parametrize(
    ("error", "outcome", "charged"),
    [
        (ProviderRateLimit(), Outcome.PROVIDER_RATE_LIMITED, 0),  # a 429 is not billed
        (TimeoutError("read timed out"), Outcome.TIMEOUT, 10),  # the input may have been
        (ValueError("bad response"), Outcome.PROVIDER_ERROR, 0),  # a failure is not billed
    ],
)
async def test_release_on_exception_reports_the_outcome(
    error: Exception, outcome: Outcome, charged: int
) -> None:
    async with serve() as h:
        channel, sent = aio_channel(target(h))
        client = AsyncAdmissionClient(channel, tenant="a")
        with pytest.raises(type(error)) as caught:
            async with client.lease(pool=GPT4O, input_tokens=10, max_output_tokens=5) as lease:
                raise error
        assert caught.value is error  # the block's own exception, untouched
        assert lease.outcome is outcome
        assert sent.last("Release").request.outcome == outcome
        # Only the 429 carries a retry-after (20 s): it pauses the pool.
        hint = 20.0 if outcome is Outcome.PROVIDER_RATE_LIMITED else None
        assert lease.provider_retry_after == hint
        paused = (await h.pool(GPT4O)).paused_for.ToTimedelta().total_seconds()
        assert paused == (hint or 0.0)
        assert not sent.last("Release").request.HasField("usage")
        assert lease.settlement is not None
        # Nothing recorded: admitd charges what the outcome implies of the 10 + 5 reserved.
        assert lease.settlement.charged_tokens == charged
        assert (await h.pool(GPT4O)).in_flight == 0
        await channel.close()


async def test_a_cancelled_block_still_releases_as_cancelled() -> None:
    async with serve() as h:
        channel, sent = aio_channel(target(h))
        client = AsyncAdmissionClient(channel, tenant="a")
        entered = asyncio.Event()
        leases: list[Lease] = []

        async def call() -> None:
            async with client.lease(pool=GPT4O, input_tokens=10) as lease:
                leases.append(lease)
                entered.set()
                await asyncio.Future()  # a provider call that never answers

        task = asyncio.ensure_future(call())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert leases[0].outcome is Outcome.CANCELLED
        assert sent.last("Release").request.outcome == Outcome.CANCELLED
        assert (await h.pool(GPT4O)).in_flight == 0
        await channel.close()


async def test_an_outcome_set_in_the_block_wins() -> None:
    async with serve() as h:
        channel, sent = aio_channel(target(h))
        client = AsyncAdmissionClient(channel, tenant="a")
        async with client.lease(pool=GPT4O, input_tokens=10) as lease:
            lease.outcome = Outcome.PROVIDER_ERROR  # e.g. an error returned, not raised
        assert sent.last("Release").request.outcome == Outcome.PROVIDER_ERROR
        await channel.close()


async def test_singleflight_shares_one_lease_and_one_call() -> None:
    async with serve() as h:
        channel, sent = aio_channel(target(h))
        client = AsyncAdmissionClient(channel, tenant="a")
        started, finish = asyncio.Event(), asyncio.Event()
        calls: list[str] = []

        async def call(lease: Lease) -> dict[str, Any]:
            calls.append(lease.lease_id)
            started.set()
            await finish.wait()
            lease.record(input_tokens=2, output_tokens=4)
            return {"answer": 42}

        args: dict[str, Any] = {"pool": GPT4O, "prompt": "hello world", "max_output_tokens": 10}
        first = asyncio.ensure_future(client.run(call, singleflight=True, **args))
        await started.wait()
        second = asyncio.ensure_future(client.run(call, singleflight=True, **args))
        await settle()  # the second caller joins the flight (no I/O before it does)
        finish.set()
        one, two = await asyncio.gather(first, second)
        assert one is two
        assert one == {"answer": 42}
        assert len(calls) == 1
        assert sent.methods() == ["Acquire", "Release"]

        # Without singleflight the second identical call asks for a lease of its own, and
        # the pool (max_concurrency 1) refuses it.
        started.clear()
        finish.clear()
        first = asyncio.ensure_future(client.run(call, **args))
        await started.wait()
        with pytest.raises(Rejected):
            await client.run(call, **args)
        finish.set()
        await first
        await channel.close()


async def test_singleflight_by_key_and_errors_are_shared() -> None:
    async with serve() as h:
        client = AsyncAdmissionClient(target(h), tenant="a")
        started, finish = asyncio.Event(), asyncio.Event()

        async def failing(lease: Lease) -> None:
            started.set()
            await finish.wait()
            raise ProviderRateLimit()

        # Different lease args, one key: one flight.
        first = asyncio.ensure_future(
            client.run(failing, singleflight="summary:42", pool=GPT4O, input_tokens=10)
        )
        await started.wait()
        second = asyncio.ensure_future(
            client.run(failing, singleflight="summary:42", pool=GPT4O, input_tokens=99)
        )
        await settle()
        finish.set()
        results = await asyncio.gather(first, second, return_exceptions=True)
        assert [type(r) for r in results] == [ProviderRateLimit, ProviderRateLimit]
        assert results[0] is results[1]
        assert (await h.pool(GPT4O)).in_flight == 0
        await client.close()
