"""Under load admitd causes no failure itself: 256 concurrent callers through two replicas
on one Redis, with fewer store connections than callers, get leases or explicit refusals
(SERVER_OVERLOADED, with a retry hint), never UNAVAILABLE from the replicas' own connection
pools nor CANCELLED shedding, and every lease is released in the end.

Not timed: it counts what the callers were told, and what the store holds afterwards.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
import pytest

from admitd.v1 import admission_pb2 as pb
from admitd.v1 import admission_pb2_grpc as pb_grpc
from support.decoding import decode
from support.processes import AdmitdProcess
from support.redis_server import RedisServer

CALLERS = 256
PAIRS = 3  # Acquire + Release per caller
DEADLINE = 60.0  # seconds, each RPC: generous, the machine may be busy


@pytest.mark.slow
async def test_256_callers_through_two_replicas_get_no_unavailable_and_no_cancelled(
    redis_server: RedisServer,
) -> None:
    config = {
        # Four connections each for 128 callers: store calls must wait their turn.
        "backend": {
            "kind": "redis",
            "url": redis_server.url,
            "key_prefix": "load",
            "pool_size": 4,
            "pool_timeout": "30s",
        },
        "overload": {"max_queue_delay": "500ms"},  # on, as in production
        # Fewer slots than callers: some Acquires wait in the fair queue.
        "pools": [{"name": "p", "max_concurrency": 64}],
        "tenants": [{"name": "a"}, {"name": "b"}],
    }
    replicas = [AdmitdProcess(config, name=f"load-{i}") for i in range(2)]
    channels = [grpc.aio.insecure_channel(r.target) for r in replicas]
    stubs = [pb_grpc.AdmissionStub(channel) for channel in channels]
    told: Counter[str] = Counter()

    async def caller(i: int) -> None:
        stub = stubs[i % len(stubs)]
        request = pb.AcquireRequest(
            tenant="ab"[i % 2], pool="p", input_tokens=10, max_output_tokens=10
        )
        request.wait_timeout.FromSeconds(30)
        done = 0
        while done < PAIRS:
            try:
                lease = await stub.Acquire(request, timeout=DEADLINE)
            except grpc.aio.AioRpcError as error:
                failure = decode(error)
                told[f"Acquire {failure.code.name} {failure.reason}".strip()] += 1
                if failure.reason != "SERVER_OVERLOADED":
                    return
                assert failure.retry_after is not None
                await asyncio.sleep(failure.retry_after)  # as the replica asked (real time)
                continue
            told["Acquire OK"] += 1
            release = pb.ReleaseRequest(lease_id=lease.lease_id, tenant=lease.tenant)
            try:
                await stub.Release(release, timeout=DEADLINE)
                told["Release OK"] += 1
            except grpc.aio.AioRpcError as error:
                told[f"Release {error.code().name}"] += 1
            done += 1

    try:
        await asyncio.gather(*(caller(i) for i in range(CALLERS)))
        statuses = [await stub.GetStatus(pb.GetStatusRequest(), timeout=DEADLINE) for stub in stubs]
    finally:
        for channel in channels:
            await channel.close()
        for replica in replicas:
            replica.stop()
    fine = ("OK", "SERVER_OVERLOADED")
    unexpected = {what: n for what, n in told.items() if not what.endswith(fine)}
    assert unexpected == {}, (unexpected, told)
    assert told["Acquire OK"] == told["Release OK"] == CALLERS * PAIRS, told
    for status in statuses:  # both replicas see the one store
        pool = next(p for p in status.pools if p.name == "p")
        assert (pool.in_flight, pool.queued) == (0, 0)
