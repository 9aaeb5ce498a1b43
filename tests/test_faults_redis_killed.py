"""Redis killed under load and brought back, with the Redis backend failing closed (every
Acquire UNAVAILABLE, health NOT_SERVING, normal again by itself) and failing open (admitted
unchecked, and nothing granted twice after recovery).

No test sleeps to wait for time to pass: waits for real-world conditions are bounded polls
(``until``). Margins are generous, because these machines are 2 shared, noisy cores.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from admitd.v1 import admission_pb2 as pb
from admitd.v1 import admission_pb2_grpc as pb_grpc
from support.faults import acquire_request, code_of, redis_keys
from support.harness import Harness, start_harness
from support.health import NOT_SERVING, SERVING, health
from support.polling import until
from support.redis_server import RedisServer

Code = grpc.StatusCode


class Load:
    """Workers that acquire (fail fast) and release in a loop; each outcome is counted under
    the phase in which its call started."""

    def __init__(self, stub: pb_grpc.AdmissionAsyncStub, workers: int = 6) -> None:
        self.stub = stub
        self.phase = "up"
        self.outcomes: Counter[tuple[str, str, str]] = Counter()  # (phase, rpc, code)
        self.unchecked = 0
        self.retried_releases = 0
        self._running = True
        self._tasks = [asyncio.ensure_future(self._work()) for _ in range(workers)]

    def count(self, phase: str, rpc: str = "Acquire", code: str = "OK") -> int:
        return self.outcomes[(phase, rpc, code)]

    def codes(self, phase: str, rpc: str = "Acquire") -> set[str]:
        return {c for (p, r, c), n in self.outcomes.items() if p == phase and r == rpc and n}

    async def _work(self) -> None:
        while self._running:
            phase = self.phase
            try:
                lease = await self.stub.Acquire(acquire_request(), timeout=5)
            except grpc.aio.AioRpcError as error:
                self.outcomes[(phase, "Acquire", error.code().name)] += 1
                await asyncio.sleep(0.01)  # pacing: a failing loop must not spin
                continue
            self.outcomes[(phase, "Acquire", "OK")] += 1
            if lease.lease_id.startswith("unchecked-"):
                self.unchecked += 1
            self.outcomes[(phase, "Release", (await self._release(lease.lease_id)).name)] += 1

    async def _release(self, lease_id: str) -> Code:
        """As clients do: a Release that fails UNAVAILABLE is retried a few times (the first
        call on a pooled Redis connection that died with the server fails)."""
        for _ in range(10):
            code = await code_of(self.stub.Release(pb.ReleaseRequest(lease_id=lease_id), timeout=5))
            if code != Code.UNAVAILABLE:
                return code
            self.retried_releases += 1
            await asyncio.sleep(0.1)  # pacing between retries
        return code

    async def stop(self) -> None:
        self._running = False
        await asyncio.gather(*self._tasks)


def redis_config(server: RedisServer, prefix: str, on_error: str) -> dict[str, Any]:
    return {
        "backend": {
            "kind": "redis",
            "url": server.url,
            "key_prefix": prefix,
            # Not short: a dead Redis refuses connections at once anyway, and a reply that
            # is merely late on a loaded machine would fail a call whose script did run.
            "timeout": 2,
            "on_store_error": on_error,
        },
        # Redis restarts empty under admitd: the pool counts as full for one TTL (learning:
        # leases it forgot may still run), then admits again.
        "lease": {"ttl": 2},
        "pools": [{"name": "p", "max_concurrency": 4}],
        "tenants": [{"name": "a"}],
    }


@pytest.fixture
async def redis_harness(
    redis_server: RedisServer,
) -> AsyncIterator[Callable[..., Awaitable[Harness]]]:
    started: list[Harness] = []

    async def start(on_error: str) -> Harness:
        prefix = f"load-{uuid.uuid4().hex[:8]}"
        h = await start_harness(redis_config(redis_server, prefix, on_error), manual_clock=False)
        started.append(h)
        return h

    yield start
    for h in started:
        await h.close()


async def test_redis_killed_under_load_fails_closed_then_recovers(
    redis_harness: Callable[..., Awaitable[Harness]], redis_server: RedisServer
) -> None:
    h = await redis_harness("fail_closed")
    load = Load(h.stub)
    try:
        await until(lambda: _at_least(load.count("up"), 30), 15, "admissions while Redis is up")
        load.phase = "down"
        redis_server.kill()
        await until(_health_is(h, NOT_SERVING), 5, "health NOT_SERVING")
        await until(
            lambda: _at_least(sum(load.outcomes[k] for k in load.outcomes if k[0] == "down"), 20),
            10,
            "calls while down",
        )
        assert load.codes("down") == {"UNAVAILABLE"}, load.outcomes  # none admitted unchecked
        load.phase = "restarting"
        redis_server.start()  # same port, empty: nothing was persisted
        await until(_health_is(h, SERVING), 10, "health SERVING again")
        load.phase = "recovered"
        await until(lambda: _at_least(load.count("recovered"), 30), 15, "admissions after")
    finally:
        await load.stop()
    every = {code for (_, _, code) in load.outcomes}
    assert every <= {"OK", "UNAVAILABLE", "RESOURCE_EXHAUSTED", "NOT_FOUND"}, load.outcomes
    assert load.unchecked == 0
    status = await h.status()
    assert (status.pools[0].in_flight, status.pools[0].concurrency.value) == (0, 0), load.outcomes


async def test_redis_killed_under_load_fails_open_and_grants_nothing_twice(
    redis_harness: Callable[..., Awaitable[Harness]], redis_server: RedisServer
) -> None:
    """fail_open: while Redis is down every call is admitted unchecked (and health stays
    SERVING). Those leases are unknown to Redis, so after recovery Redis counts exactly the
    leases it granted: never above the limit, and releasing an unchecked lease later does not
    free a slot somebody else holds."""
    h = await redis_harness("fail_open")
    prefix = h.engine.settings.backend.key_prefix
    gauge = ("{" + prefix + "}:level", "pool:p:max_concurrency")
    load = Load(h.stub)
    try:
        await until(lambda: _at_least(load.count("up"), 30), 15, "admissions while Redis is up")
        load.phase = "down"
        redis_server.kill()
        await until(lambda: _at_least(load.unchecked, 20), 10, "unchecked admissions")
        held = [await h.acquire(input_tokens=1) for _ in range(6)]  # above the limit of 4
        assert all(lease.lease_id.startswith("unchecked-") for lease in held)
        assert await _health_is(h, SERVING)()
        load.phase = "restarting"
        redis_server.start()
        await until(lambda: h.server.check_store(), 10, "the store answers again")
        load.phase = "recovered"
        client = redis_server.client()

        async def checked_admissions() -> bool:
            leases = len(redis_keys(redis_server, prefix, "lease"))
            assert leases <= 4, f"{leases} leases in Redis, limit 4"
            return load.count("recovered") >= 30

        await until(checked_admissions, 15, "checked admissions after recovery")
        for lease in held:  # unchecked leases come back after recovery: no slot is freed
            settled = await h.release(lease.lease_id, (1, 0))
            assert settled.charged_tokens == 1
    finally:
        await load.stop()
    in_redis = len(redis_keys(redis_server, prefix, "lease"))
    slots = float(client.hget(*gauge) or 0)
    assert (in_redis, slots) == (0, 0.0), (in_redis, slots)
    # Every call admitted unchecked, but one that began while Redis was down and reached it
    # restarted: that one met learning (the pool counts as full for one TTL).
    assert load.codes("down") <= {"OK", "RESOURCE_EXHAUSTED"}, load.outcomes
    assert load.count("down", code="RESOURCE_EXHAUSTED") <= 6, load.outcomes  # one per worker
    acquired = {code for (_, rpc, code) in load.outcomes if rpc == "Acquire"}
    assert acquired <= {"OK", "RESOURCE_EXHAUSTED"}, load.outcomes
    # Settling a lease Redis granted needs Redis: UNAVAILABLE while it is down, NOT_FOUND
    # after it restarted empty.
    released = {code for (_, rpc, code) in load.outcomes if rpc == "Release"}
    assert released <= {"OK", "UNAVAILABLE", "NOT_FOUND"}, load.outcomes


def _at_least(value: int, n: int) -> Awaitable[bool]:
    async def check() -> bool:
        return value >= n

    return check()


def _health_is(h: Harness, status: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await health(h.channel) == status

    return check
