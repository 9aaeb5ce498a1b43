"""AsyncAdmissionClient against a real admitd on a socket (ManualClock: no time passes):
acquire, count, reject, errors, deadlines and metadata, and a store that cannot be reached
(fail closed, fail open). The ``lease()`` block (renewal, the outcome its release reports,
singleflight): ``test_client_async_lease_block.py``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from admitd_client import (
    AdmitdError,
    AsyncAdmissionClient,
    Outcome,
    Reason,
    Rejected,
    RetryPolicy,
    Settlement,
    Unavailable,
)
from support.client import (
    COOKBOOK_MESSAGES,
    GPT4,
    GPT4O,
    POOL_METADATA,
    Jitter,
    aio_channel,
    approx,
    dead_target,
    load,
    serve,
    target,
)


async def test_happy_path_counts_acquires_records_and_releases() -> None:
    async with serve() as h:
        channel, sent = aio_channel(target(h))
        async with (
            AsyncAdmissionClient(channel, tenant="a") as client,
            client.lease(
                pool=GPT4O, messages=COOKBOOK_MESSAGES, max_output_tokens=100, labels={"job": "t"}
            ) as lease,
        ):
            assert lease.admitted
            assert len(lease.lease_id) == 32
            assert (lease.tenant, lease.pool) == ("a", GPT4O)
            assert lease.input_tokens == 124  # gpt-4o: o200k_base, as the API counts it
            assert lease.reserved_tokens == 224
            assert lease.reserved_usd == pytest.approx(124 * 2.5e-6 + 100 * 10e-6)
            assert lease.queued_for == 0.0
            assert h.clock is not None
            assert lease.expires_at == datetime.fromtimestamp(h.clock.wall() + 30, UTC)
            assert (await h.pool(GPT4O)).in_flight == 1
            assert lease.record(load("openai_chat_completion.json")) is True
        assert lease.outcome is Outcome.OK
        assert lease.settlement == Settlement(
            charged_tokens=139,
            refunded_tokens=85,
            already_released=False,
            charged_usd=approx(124 * 2.5e-6 + 15 * 10e-6),
        )
        assert (await h.pool(GPT4O)).in_flight == 0
        assert sent.methods() == ["Acquire", "Release"]
        acquire = sent.last("Acquire").request
        assert (acquire.tenant, acquire.pool, acquire.input_tokens) == ("a", GPT4O, 124)
        assert acquire.max_output_tokens == 100
        assert len(acquire.idempotency_key) == 32
        assert dict(acquire.labels) == {"job": "t"}
        release = sent.last("Release").request
        assert (release.lease_id, release.tenant) == (lease.lease_id, "a")
        assert (release.usage.input_tokens, release.usage.output_tokens) == (124, 15)
        assert release.outcome == Outcome.OK
        await channel.close()


async def test_counts_with_the_pools_model_and_settles_acquire_release() -> None:
    async with serve() as h, AsyncAdmissionClient(target(h), tenant="b") as client:
        lease = await client.acquire(pool=GPT4, messages=COOKBOOK_MESSAGES, max_output_tokens=1)
        assert lease.input_tokens == 129  # gpt-4: cl100k_base
        assert lease.reserved_tokens == 130
        lease.record(input_tokens=129, output_tokens=1)
        settlement = await client.release(lease)
        assert settlement is not None
        assert (settlement.charged_tokens, settlement.refunded_tokens) == (130, 0)
        again = await client.release(lease)
        assert again is not None
        assert again.already_released


async def test_rejection_carries_reason_retry_after_and_metadata() -> None:
    async with serve() as h:
        channel, sent = aio_channel(target(h))
        client = AsyncAdmissionClient(channel, tenant="a", on_unavailable="fail_open")
        async with client.lease(pool=GPT4O, input_tokens=10):
            with pytest.raises(Rejected) as caught:
                await client.acquire(pool=GPT4O, input_tokens=10, max_output_tokens=5)
            # The same rejection decoded independently, with googleapis' own messages.
            raw = await h.fail(h.acquire(pool=GPT4O, tenant="a", input_tokens=10))
        rejected = caught.value
        assert isinstance(rejected, AdmitdError)
        assert rejected.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert rejected.reason is Reason.CONCURRENCY_LIMIT
        assert rejected.retry_after == raw.retry_after == 30.0  # the holder's lease TTL
        assert rejected.metadata == raw.metadata == POOL_METADATA
        assert "max_concurrency" in rejected.message
        # A rejection is an answer: never retried, never failed open.
        assert sent.methods() == ["Acquire", "Acquire", "Release"]
        await channel.close()


async def test_token_rate_rejections_say_when_or_never() -> None:
    async with serve() as h, AsyncAdmissionClient(target(h), tenant="a") as client:
        held = await client.acquire(pool=GPT4, input_tokens=500)
        with pytest.raises(Rejected) as later:
            await client.acquire(pool=GPT4, input_tokens=200)
        # 100 tokens missing from a bucket refilling at 600/min = 10/s.
        assert later.value.reason is Reason.TOKEN_RATE_LIMIT
        assert later.value.retry_after == pytest.approx(10.0)
        with pytest.raises(Rejected) as never:
            await client.acquire(pool=GPT4, input_tokens=700)
        assert never.value.reason is Reason.TOKEN_RATE_LIMIT
        assert never.value.retry_after is None  # bigger than the bucket: no retry can succeed
        await client.release(held)


async def test_invalid_and_unknown_are_errors_not_rejections() -> None:
    async with serve() as h, AsyncAdmissionClient(target(h), tenant="a") as client:
        with pytest.raises(AdmitdError) as invalid:
            await client.acquire(pool=GPT4O, input_tokens=1, max_output_tokens=-1)
        assert not isinstance(invalid.value, Rejected)
        assert invalid.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert list(invalid.value.field_violations) == ["max_output_tokens"]
        with pytest.raises(AdmitdError) as unknown:
            await client.acquire(pool="nope", input_tokens=1)
        assert unknown.value.code is grpc.StatusCode.NOT_FOUND
        assert "nope" in unknown.value.message
        with pytest.raises(TypeError, match=r"got prompt, input_tokens$"):
            await client.acquire(pool=GPT4O, prompt="x", input_tokens=1)


async def test_deadlines_and_metadata_on_every_call() -> None:
    async with serve() as h:
        channel, sent = aio_channel(target(h))
        client = AsyncAdmissionClient(channel, tenant="a", timeout=3.0, metadata=[("x-team", "s")])
        lease = await client.acquire(pool=GPT4O, input_tokens=1, wait_timeout=1.5)
        await client.renew(lease)
        await client.release(lease)
        acquire = sent.last("Acquire")
        assert acquire.timeout == pytest.approx(4.5)  # the wait in the queue on top
        assert acquire.request.wait_timeout.ToTimedelta() == timedelta(seconds=1.5)
        assert sent.last("Renew").timeout == sent.last("Release").timeout == 3.0
        assert all(("x-team", "s") in call.metadata for call in sent.sent)
        lease = await client.acquire(pool=GPT4O, input_tokens=1, timeout=0.25)  # per call
        assert sent.last("Acquire").timeout == pytest.approx(0.25)
        assert not sent.last("Acquire").request.HasField("wait_timeout")
        await client.release(lease)
        await channel.close()


async def test_fail_closed_retries_with_jitter_then_raises() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    channel, sent = aio_channel(dead_target())
    policy = RetryPolicy(max_attempts=4, initial_backoff=0.1, multiplier=2.0, max_backoff=0.15)
    jitter = Jitter(0.0, 1.0, 0.5)
    client = AsyncAdmissionClient(channel, tenant="a", sleep=sleep, random=jitter, retry=policy)
    ran = False
    with pytest.raises(Unavailable) as caught:
        async with client.lease(pool=GPT4O, input_tokens=1):
            ran = True
    assert not ran
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    assert sent.methods() == ["Acquire"] * 4
    # Caps 0.1, 0.15 (0.2 capped), 0.15, each scaled by the injected jitter.
    assert slept == [0.0, 0.15, 0.075]
    assert jitter.draws == 3
    # Every attempt carries the same idempotency key: a retry never reserves twice.
    assert len({call.request.idempotency_key for call in sent.sent}) == 1
    await channel.close()


async def test_fail_open_runs_the_call_unadmitted(caplog: pytest.LogCaptureFixture) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    def wall() -> float:  # time passes only in the client's sleeps
        return 1_000_000.0 + sum(slept)

    channel, sent = aio_channel(dead_target())
    client = AsyncAdmissionClient(
        channel,
        tenant="a",
        on_unavailable="fail_open",
        sleep=sleep,
        random=lambda: 1.0,
        timeout=1.0,
        wall=wall,
    )
    with caplog.at_level(logging.WARNING, logger="admitd_client"):
        async with client.lease(pool=GPT4O, input_tokens=7, max_output_tokens=3) as lease:
            assert not lease.admitted
            assert (lease.lease_id, lease.expires_at, lease.reserved_tokens) == ("", None, 10)
            lease.record(input_tokens=7, output_tokens=2)
    assert lease.settlement is None
    # The default policy: retried while the deadline (1 s) leaves room; nothing to release.
    assert sent.methods() == ["Acquire"] * 4
    assert slept == [0.1, 0.2, 0.4]  # full jitter at its cap: 0.1 * 2 ** n; 0.8 is too late
    assert "failing open" in caplog.text
    await channel.close()
