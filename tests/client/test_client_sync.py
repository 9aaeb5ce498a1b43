"""AdmissionClient (blocking) against a real admitd on a socket (ManualClock).

The server runs on the test's event loop, so each blocking scenario runs in a worker thread
(``asyncio.to_thread``); a renewal thread's injected sleep advances the server's clock on
that loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import timedelta
from typing import Any

import grpc
import pytest

from admitd_client import (
    AdmissionClient,
    AdmitdError,
    Lease,
    Outcome,
    Reason,
    Rejected,
    RetryPolicy,
    Unavailable,
)
from support.client import (
    COOKBOOK_MESSAGES,
    GPT4,
    GPT4O,
    POOL_METADATA,
    Jitter,
    ProviderRateLimit,
    ThreadClockSleep,
    dead_target,
    load,
    serve,
    sync_channel,
    target,
)


async def test_happy_path_and_rejection() -> None:
    async with serve() as h:

        def scenario() -> None:
            channel, sent = sync_channel(target(h))
            with AdmissionClient(channel, tenant="a") as client:
                with client.lease(
                    pool=GPT4O, messages=COOKBOOK_MESSAGES, max_output_tokens=100
                ) as lease:
                    assert lease.admitted
                    assert (lease.input_tokens, lease.reserved_tokens) == (124, 224)
                    with pytest.raises(Rejected) as caught:
                        client.acquire(pool=GPT4O, input_tokens=1)
                    lease.record(load("anthropic_message.json"))
                rejected = caught.value
                assert rejected.reason is Reason.CONCURRENCY_LIMIT
                assert rejected.retry_after == 30.0
                assert rejected.metadata == POOL_METADATA
                assert lease.outcome is Outcome.OK
                assert lease.settlement is not None
                # Usage above the reservation is charged too: nothing to refund.
                assert lease.settlement.charged_tokens == 2095 + 503
                assert lease.settlement.refunded_tokens == 0
                assert sent.methods() == ["Acquire", "Acquire", "Release"]
                release = sent.last("Release").request
                assert (release.usage.input_tokens, release.usage.output_tokens) == (2095, 503)

                counted = client.acquire(pool=GPT4, messages=COOKBOOK_MESSAGES)
                assert counted.input_tokens == 129  # gpt-4: cl100k_base
                settlement = client.release(counted)
                assert settlement is not None
                assert settlement.charged_tokens == 129
                status = client.status()
                assert {p.name: p.in_flight for p in status.pools} == {GPT4O: 0, GPT4: 0}
            channel.close()

        await asyncio.to_thread(scenario)


async def test_deadlines_and_metadata() -> None:
    async with serve() as h:

        def scenario() -> None:
            channel, sent = sync_channel(target(h))
            client = AdmissionClient(channel, tenant="a", timeout=2.0, metadata=[("x-team", "s")])
            lease = client.acquire(pool=GPT4O, input_tokens=1, wait_timeout=0.5)
            client.release(lease)
            assert sent.last("Acquire").timeout == pytest.approx(2.5)
            assert sent.last("Release").timeout == 2.0
            assert all(("x-team", "s") in call.metadata for call in sent.sent)
            channel.close()

        await asyncio.to_thread(scenario)


def test_fail_closed_retries_with_jitter_then_raises() -> None:
    slept: list[float] = []
    channel, sent = sync_channel(dead_target())
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.2, multiplier=3.0, max_backoff=1.0)
    client = AdmissionClient(
        channel, tenant="a", sleep=slept.append, random=Jitter(0.25, 0.5), retry=policy
    )
    with pytest.raises(Unavailable) as caught, client.lease(pool=GPT4O, input_tokens=1):
        raise AssertionError("the block must not run")
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    assert sent.methods() == ["Acquire"] * 3
    assert slept == pytest.approx([0.05, 0.3])  # caps 0.2 and 0.6, times the jitter
    channel.close()


def test_fail_open_runs_unadmitted(caplog: pytest.LogCaptureFixture) -> None:
    slept: list[float] = []
    channel, sent = sync_channel(dead_target())
    client = AdmissionClient(
        channel,
        tenant="a",
        on_unavailable="fail_open",
        sleep=slept.append,
        random=lambda: 0.5,
        retry=RetryPolicy(max_attempts=2),
    )
    with caplog.at_level(logging.WARNING, logger="admitd_client"):
        with client.lease(pool=GPT4O, input_tokens=3) as lease:
            assert not lease.admitted
        assert client.release(lease) is None
    assert lease.settlement is None
    assert sent.methods() == ["Acquire"] * 2
    assert slept == [0.05]
    assert "failing open" in caplog.text
    channel.close()


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="fail_closed or fail_open, not 'open'"):
        AdmissionClient(dead_target(), on_unavailable="open")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_attempts must be at least 1"):
        RetryPolicy(max_attempts=0)


async def test_renewal_thread_keeps_a_long_call_alive() -> None:
    async with serve() as h:  # lease TTL 30 s
        assert h.clock is not None
        sleep = ThreadClockSleep(h, asyncio.get_running_loop(), limit=4)
        wall = h.clock.wall

        def scenario() -> Lease:
            client = AdmissionClient(target(h), tenant="a", sleep=sleep, wall=wall)
            with client.lease(pool=GPT4O, input_tokens=10, max_output_tokens=5) as lease:
                assert lease.expires_at is not None
                first_expiry = lease.expires_at
                assert sleep.done.wait(timeout=30)  # four renewals: 40 s > TTL on admitd
                assert sleep.slept == pytest.approx([10.0] * 4)
                assert lease.renewals >= 4
                assert not lease.lost
                assert lease.expires_at == first_expiry + timedelta(seconds=40)
                lease.record(input_tokens=10, output_tokens=1)
                sleep.finish.set()
            client.close()
            return lease

        lease = await asyncio.to_thread(scenario)
        assert lease.settlement is not None
        assert (lease.settlement.charged_tokens, lease.settlement.refunded_tokens) == (11, 4)
        assert not lease.settlement.already_released
        assert (await h.pool(GPT4O)).in_flight == 0


async def test_leaving_the_block_stops_a_waiting_renewal_thread_at_once() -> None:
    async with serve() as h:
        done = threading.Event()

        def scenario() -> None:
            # The real (interruptible) wait: an hour until the first renewal.
            client = AdmissionClient(target(h), tenant="a", renew_every=3600.0)
            with client.lease(pool=GPT4O, input_tokens=10) as lease:
                assert lease.admitted
            client.close()
            done.set()

        worker = threading.Thread(target=scenario)
        worker.start()
        # Bounded wait for the block to end; were the renewal thread not stopped, joining
        # it would take the hour.
        assert await asyncio.to_thread(done.wait, 30)
        worker.join()
        assert [t.name for t in threading.enumerate() if t.name.startswith("admitd-renew")] == []
        assert (await h.pool(GPT4O)).in_flight == 0


async def test_release_on_exception_reports_the_outcome() -> None:
    async with serve() as h:

        def scenario() -> list[int]:
            channel, sent = sync_channel(target(h))
            client = AdmissionClient(channel, tenant="a")
            error = ProviderRateLimit(headers={})  # no retry-after: the pool is not paused
            with pytest.raises(ProviderRateLimit), client.lease(pool=GPT4O, input_tokens=5):
                raise error
            with pytest.raises(KeyboardInterrupt), client.lease(pool=GPT4O, input_tokens=5):
                raise KeyboardInterrupt
            # Wrapped: the 429 is found through __cause__.
            with pytest.raises(RuntimeError), client.lease(pool=GPT4O, input_tokens=5):
                raise RuntimeError("retries exhausted") from error
            channel.close()
            return [call.request.outcome for call in sent.sent if call.method == "Release"]

        outcomes = await asyncio.to_thread(scenario)
        assert outcomes == [
            Outcome.PROVIDER_RATE_LIMITED,
            Outcome.CANCELLED,
            Outcome.PROVIDER_RATE_LIMITED,
        ]
        assert (await h.pool(GPT4O)).in_flight == 0


async def test_singleflight_across_threads() -> None:
    async with serve() as h:

        def scenario() -> None:
            channel, sent = sync_channel(target(h))
            client = AdmissionClient(channel, tenant="a")
            started, finish = threading.Event(), threading.Event()
            calls: list[str] = []
            results: list[Any] = []

            def call(lease: Lease) -> dict[str, int]:
                calls.append(lease.lease_id)
                started.set()
                assert finish.wait(timeout=30)
                return {"answer": 42}

            args: Any = {"pool": GPT4O, "input_tokens": 3}  # the lease arguments (LeaseArgs)

            def run() -> None:
                results.append(client.run(call, singleflight=True, **args))

            threads = [threading.Thread(target=run) for _ in range(3)]
            threads[0].start()
            assert started.wait(timeout=30)
            for thread in threads[1:]:
                thread.start()
            # Bounded wait until all three callers share the leader's flight.
            flights, key = client._flights, client._core.flight_key(args, True)
            with flights.changed:
                assert flights.changed.wait_for(lambda: flights.waiters(key) == 3, timeout=30)
            finish.set()
            for thread in threads:
                thread.join(timeout=30)
            assert len(calls) == 1
            assert len(results) == 3
            assert results[0] is results[1] is results[2]
            assert sent.methods() == ["Acquire", "Release"]
            channel.close()

        await asyncio.to_thread(scenario)


def test_client_side_validation() -> None:
    client = AdmissionClient(dead_target(), tenant="a")
    with pytest.raises(
        TypeError,
        match=r"acquire\(\) takes one of request, messages, prompt, input_tokens; got "
        "messages, prompt",
    ):
        client.acquire(pool=GPT4O, messages=[], prompt="x")
    client.close()
    assert issubclass(Rejected, AdmitdError)
    assert issubclass(Unavailable, AdmitdError)
