"""Pool gates driven by the outcomes callers report at Release: a provider's retry-after
pauses the pool, a circuit breaker opens on errors and probes its way back, and AIMD shrinks
the pool's limits on 429s and grows them back on successes. Both backends."""

from __future__ import annotations

from typing import Any

import grpc

from admitd.v1 import admission_pb2 as pb
from support.harness import Harness, MakeHarness, seconds

OK = pb.Outcome.OUTCOME_OK
RATE_LIMITED = pb.Outcome.OUTCOME_PROVIDER_RATE_LIMITED
ERROR = pb.Outcome.OUTCOME_PROVIDER_ERROR
TIMEOUT = pb.Outcome.OUTCOME_TIMEOUT
CANCELLED = pb.Outcome.OUTCOME_CANCELLED


async def end(h: Harness, outcome: int, retry_after: float = 0.0, **fields: Any) -> None:
    """One call through the pool that ends with ``outcome``."""
    lease = await h.acquire(input_tokens=1, **fields)
    request = pb.ReleaseRequest(lease_id=lease.lease_id, outcome=outcome)  # type: ignore[arg-type]
    if retry_after:
        request.provider_retry_after.CopyFrom(seconds(retry_after))
    await h.stub.Release(request, timeout=10)


# -- pause ----------------------------------------------------------------------------------


async def test_a_provider_retry_after_pauses_the_pool_for_everyone(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness({"pools": [{"name": "p"}, {"name": "q"}]})
    await end(h, RATE_LIMITED, retry_after=5)
    failure = await h.fail(h.acquire(tenant="b", input_tokens=1))
    assert (failure.reason, failure.metadata["cause"]) == ("POOL_UNAVAILABLE", "paused")
    assert failure.retry_after == 5.0
    assert (await h.pool("p")).paused_for.ToTimedelta().total_seconds() == 5.0
    assert (await h.acquire(pool="q", input_tokens=1)).pool == "q"  # other pools unaffected
    waiting = h.acquire_later(input_tokens=1, wait_timeout=60)
    await h.until_queued("p", 1)
    await h.advance(4.9)
    assert not waiting.done()
    await h.advance(0.1)  # the pause ends: the waiter is admitted without any release
    assert (await waiting).reserved_tokens == 1


# -- circuit breaker ------------------------------------------------------------------------

BREAKER: dict[str, Any] = {
    "pools": [
        {
            "name": "p",
            "breaker": {
                "failure_rate": 0.5,
                "min_calls": 4,
                "window": "30s",
                "open_for": "10s",
                "half_open_probes": 1,
            },
        }
    ]
}


async def test_errors_open_the_circuit_and_every_call_is_refused_at_once(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness({**BREAKER, "pools": [{**BREAKER["pools"][0], "max_concurrency": 1}]})
    for outcome in (OK, ERROR, TIMEOUT):
        await end(h, outcome)
    holder = await h.acquire(input_tokens=1)
    queued = h.acquire_later(input_tokens=1, wait_timeout=60)
    await h.until_queued("p", 1)
    request = pb.ReleaseRequest(lease_id=holder.lease_id, outcome=ERROR)
    await h.stub.Release(request, timeout=10)  # 3 of 4 failed: it opens
    assert (await h.fail(queued)).reason == "POOL_UNAVAILABLE"  # the queued call too
    failure = await h.fail(h.acquire(input_tokens=1, wait_timeout=60))  # never queued
    assert (failure.metadata["cause"], failure.retry_after) == ("open", 10.0)
    assert (await h.pool("p")).circuit == "open"


async def test_a_half_open_probe_closes_or_reopens_the_circuit(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness(BREAKER)
    for _ in range(4):
        await end(h, ERROR)
    await h.advance(10)
    assert (await h.pool("p")).circuit == "half_open"
    probe = await h.acquire(input_tokens=1)
    failure = await h.fail(h.acquire(input_tokens=1))  # the one probe is out
    assert failure.metadata["cause"] == "probing"
    await h.stub.Release(pb.ReleaseRequest(lease_id=probe.lease_id, outcome=ERROR), timeout=10)
    assert (await h.pool("p")).circuit == "open"  # the probe failed: open again
    await h.advance(10)
    await end(h, OK)  # this probe succeeds: closed
    assert (await h.pool("p")).circuit == "closed"
    for _ in range(3):
        await end(h, OK)


async def test_rate_limits_and_cancellations_do_not_open_the_circuit(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness(BREAKER)
    for outcome in (RATE_LIMITED, CANCELLED, RATE_LIMITED, CANCELLED, OK, ERROR):
        await end(h, outcome)
    assert (await h.pool("p")).circuit == "closed"


# -- AIMD -----------------------------------------------------------------------------------

ADAPTIVE: dict[str, Any] = {
    "pools": [
        {
            "name": "p",
            "max_concurrency": 10,
            "tokens_per_minute": 6000,
            "adaptive": {"decrease": 0.5, "increase": 0.1, "floor": 0.2, "cooldown": "1s"},
        }
    ]
}


async def concurrency_now(h: Harness) -> int:
    """How many leases the pool admits now, counted by acquiring until refused."""
    leases = []
    while True:
        try:
            leases.append(await h.acquire(input_tokens=1))
        except grpc.aio.AioRpcError as error:
            refused = error
            break
    assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    for lease in leases:
        await h.stub.Release(pb.ReleaseRequest(lease_id=lease.lease_id, outcome=CANCELLED))
    return len(leases)


async def test_429s_shrink_the_pool_and_successes_grow_it_back(make_harness: MakeHarness) -> None:
    h = await make_harness(ADAPTIVE)
    assert await concurrency_now(h) == 10
    await end(h, RATE_LIMITED)
    assert (await h.pool("p")).limit_factor == 0.5
    assert await concurrency_now(h) == 5
    await end(h, RATE_LIMITED)  # within the cooldown: the same overload, no second step
    assert (await h.pool("p")).limit_factor == 0.5
    await h.advance(1)
    await end(h, RATE_LIMITED)
    await h.advance(1)
    await end(h, RATE_LIMITED)  # 0.125, but never below the floor
    assert (await h.pool("p")).limit_factor == 0.2
    assert await concurrency_now(h) == 2
    for _ in range(3):
        await end(h, OK)
    assert round((await h.pool("p")).limit_factor, 9) == 0.5
    assert await concurrency_now(h) == 5


async def test_aimd_slows_the_token_refill_not_the_bucket(make_harness: MakeHarness) -> None:
    h = await make_harness(ADAPTIVE)
    await end(h, RATE_LIMITED)  # factor 0.5: 6000 a minute refill at 50 a second
    lease = await h.acquire(input_tokens=5999)  # the whole bucket still fits one call
    await h.stub.Release(pb.ReleaseRequest(lease_id=lease.lease_id, outcome=CANCELLED))
    assert (await h.fail(h.acquire(input_tokens=100))).reason == "TOKEN_RATE_LIMIT"
    await h.advance(1.0)  # 50 tokens back, not 100
    assert (await h.fail(h.acquire(input_tokens=100))).reason == "TOKEN_RATE_LIMIT"
    await h.advance(1.0)
    assert (await h.acquire(input_tokens=100)).reserved_tokens == 100


async def test_a_negative_retry_after_is_invalid(make_harness: MakeHarness) -> None:
    h = await make_harness()
    lease = await h.acquire(input_tokens=1)
    request = pb.ReleaseRequest(lease_id=lease.lease_id)
    request.provider_retry_after.seconds = -1
    failure = await h.fail(h.stub.Release(request, timeout=10))
    assert failure.field_violations == ["provider_retry_after"]
    assert (await h.pool("p")).in_flight == 1  # nothing settled


async def test_gates_are_exported_as_metrics(make_harness: MakeHarness) -> None:
    from support.metrics import scrape, value

    h = await make_harness({**ADAPTIVE, "observability": {"metrics_listen": "127.0.0.1:0"}})
    await end(h, RATE_LIMITED, retry_after=7)
    await h.engine.snapshot()  # the gauges read the latest snapshot
    text = await scrape(h)
    assert value(text, "admitd_pool_limit_factor", pool="p") == 0.5
    assert value(text, "admitd_pool_circuit", pool="p") == 0
    assert value(text, "admitd_pool_paused_seconds", pool="p") == 7
