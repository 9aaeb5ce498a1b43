"""Faults, injected for real on loopback: a replica killed with SIGKILL, Redis killed and
restarted under load (fail closed and fail open), clients that vanish without releasing, and
a Redis that stops answering.

No test sleeps to wait for time to pass: real-process tests poll a condition with a bounded
deadline (``until``), manual-clock tests move the clock. Margins are generous, because
these machines are 2 shared, noisy cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from admitd.v1 import admission_pb2 as pb
from admitd.v1 import admission_pb2_grpc as pb_grpc
from support.harness import Harness, MakeHarness, seconds, start_harness
from support.health import NOT_SERVING, SERVING, health
from support.polling import until
from support.processes import AdmitdProcess
from support.redis_server import RedisServer

Code = grpc.StatusCode
NO_RETRY = Retry(NoBackoff(), 0)
CLAIM_TIMEOUT = 10.0  # admitd gives back a grant nobody claims (its replica died) after this


def acquire_request(wait: float = 0.0, tenant: str = "a", tokens: int = 10) -> pb.AcquireRequest:
    request = pb.AcquireRequest(tenant=tenant, pool="p", input_tokens=tokens)
    if wait:
        request.wait_timeout.CopyFrom(seconds(wait))
    return request


@contextlib.asynccontextmanager
async def connect(
    target: str,
) -> AsyncIterator[tuple[pb_grpc.AdmissionAsyncStub, grpc.aio.Channel]]:
    channel = grpc.aio.insecure_channel(target)
    try:
        yield pb_grpc.AdmissionStub(channel), channel
    finally:
        await channel.close()


async def code_of(call: Awaitable[Any]) -> Code:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return Code.OK


def redis_keys(server: RedisServer, prefix: str, kind: str) -> list[str]:
    return list(server.client().scan_iter(match=f"{{{prefix}}}:{kind}:*", count=1000))


# -- (a) a replica killed while its clients hold leases and wait -------------------------------

TTL = 2.0


@pytest.mark.slow
async def test_a_killed_replica_leaves_no_stuck_slot_or_waiter(redis_server: RedisServer) -> None:
    """kill -9 one of two replicas while its clients hold the pool's two slots and two more
    wait in its queue. Their RPCs fail UNAVAILABLE at once; retried on the other replica they
    are admitted; the dead replica's leases expire within their TTL; nothing leaks.

    The dead replica's waiters stay in Redis's queue until their own wait runs out, ahead of
    the retries in the fair order: the slots the expired leases free are granted to them,
    and nobody claims those grants. Such a grant is a lease like any other: it comes back
    when it expires (TTL) or when the claim timeout gives it back, whichever is first. So the
    retries are admitted within TTL + min(TTL, CLAIM_TIMEOUT), not within the TTL."""
    prefix = f"kill9-{uuid.uuid4().hex[:8]}"
    config = {
        "backend": {"kind": "redis", "url": redis_server.url, "key_prefix": prefix, "timeout": 2},
        "lease": {"ttl": TTL, "reap_interval": 0.2},
        "queue": {"max_wait": 60},
        "pools": [{"name": "p", "max_concurrency": 2}],
        "tenants": [{"name": "a"}],
    }
    a = AdmitdProcess(config, "replica-a")
    b = AdmitdProcess(config, "replica-b")
    try:
        async with connect(a.target) as (on_a, _), connect(b.target) as (on_b, b_channel):
            holders = [await on_a.Acquire(acquire_request(), timeout=10) for _ in range(2)]
            granted = time.monotonic()
            waiters = [
                asyncio.ensure_future(on_a.Acquire(acquire_request(wait=20), timeout=60))
                for _ in range(2)
            ]

            async def queued(n: int) -> bool:
                status = await on_b.GetStatus(pb.GetStatusRequest(), timeout=5)
                return status.pools[0].queued == n

            await until(lambda: queued(2), 10, "both waiters queued")

            a.kill()
            for waiter in waiters:
                assert await asyncio.wait_for(code_of(waiter), 10) == Code.UNAVAILABLE

            retried = time.monotonic()
            retries = [
                asyncio.ensure_future(on_b.Acquire(acquire_request(wait=40), timeout=60))
                for _ in range(2)
            ]

            async def holders_expired() -> bool:
                expired = {
                    entry.get("lease_id")
                    for entry in map(_json, b.log_lines())
                    if entry.get("message") == "lease expired"
                }
                return all(holder.lease_id in expired for holder in holders)

            await until(holders_expired, TTL + 8, "the dead replica's leases expired")
            expired_after = time.monotonic() - granted
            assert expired_after < TTL + 8
            for holder in holders:  # gone for good: no one can renew a reclaimed lease
                renew = on_b.Renew(pb.RenewRequest(lease_id=holder.lease_id), timeout=5)
                assert await code_of(renew) == Code.NOT_FOUND

            bound = TTL + min(TTL, CLAIM_TIMEOUT) + 8
            leases = await asyncio.wait_for(asyncio.gather(*retries), bound)
            admitted_after = time.monotonic() - retried
            assert admitted_after < bound

            for lease in leases:
                settled = await on_b.Release(pb.ReleaseRequest(lease_id=lease.lease_id), timeout=5)
                assert not settled.already_released
            status = await on_b.GetStatus(pb.GetStatusRequest(), timeout=5)
            assert (status.pools[0].in_flight, status.pools[0].queued) == (0, 0)
            assert status.pools[0].concurrency.value == 0
            assert await health(b_channel) == SERVING
            assert redis_keys(redis_server, prefix, "lease") == []
            assert redis_keys(redis_server, prefix, "w") == []  # no waiter left behind

            async def no_unclaimed_grant() -> bool:  # the dead replica's, given back
                await on_b.GetStatus(pb.GetStatusRequest(), timeout=5)  # any call reaps
                return redis_server.client().zcard(f"{{{prefix}}}:unclaimed") == 0

            await until(no_unclaimed_grant, CLAIM_TIMEOUT + 8, "unclaimed grants given back")
        print(
            f"leases reclaimed {expired_after:.1f}s after grant (TTL {TTL:g}s); retries"
            f" admitted {admitted_after:.1f}s after the kill"
        )
    finally:
        a.kill()
        a.stop()
        b.stop()


def _json(line: str) -> dict[str, Any]:
    try:
        entry = json.loads(line)
    except ValueError:
        return {}
    return entry if isinstance(entry, dict) else {}


# -- (b) Redis killed under load and brought back ---------------------------------------------


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
    gauge = ("{" + prefix + "}:gauge", "pool:p:max_concurrency")
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


# -- (c) clients that vanish without releasing ------------------------------------------------


async def test_vanished_clients_are_reclaimed_by_expiry(make_harness: MakeHarness) -> None:
    """Clients take every slot (one renews for longer), others wait, then all of them vanish:
    channels closed, nothing released. Waiters leave the queue at once; the leases stay until
    they expire, then every slot comes back and the full reservations stay charged."""
    h = await make_harness(
        {
            "pools": [{"name": "p", "max_concurrency": 3, "tokens_per_minute": 6000}],
            "tenants": [{"name": "a", "tokens_per_day": 100_000}, {"name": "b"}],
            "lease": {"ttl": 30, "reap_interval": 1},
        }
    )
    target = f"127.0.0.1:{h.server.port}"
    channels = [grpc.aio.insecure_channel(target) for _ in range(5)]
    stubs = [pb_grpc.AdmissionStub(c) for c in channels]
    leases = [await stubs[i].Acquire(acquire_request(tokens=100), timeout=10) for i in range(3)]
    renewed = pb.RenewRequest(lease_id=leases[0].lease_id, extend_by=seconds(60))
    await stubs[0].Renew(renewed, timeout=10)
    waiting = [
        asyncio.ensure_future(stubs[i].Acquire(acquire_request(wait=50), timeout=60))
        for i in (3, 4)
    ]
    await h.until_queued("p", 2)

    for channel in channels:  # vanish
        await channel.close()
    await asyncio.wait_for(asyncio.wait(waiting), 5)
    assert all(task.cancelled() for task in waiting)  # closing a channel cancels its RPCs

    async def queue_empty() -> bool:
        return (await h.pool("p")).queued == 0

    await until(queue_empty, 5, "the vanished waiters left the queue")
    pool = await h.pool("p")
    assert (pool.in_flight, pool.concurrency.value) == (3, 3)

    await h.advance(31)  # the two leases not renewed expire
    assert (await h.pool("p")).in_flight == 1
    await h.advance(30)  # and the renewed one
    status = await h.status()
    pool = status.pools[0]
    tenant = next(t for t in status.tenants if t.name == "a")
    assert (pool.in_flight, pool.queued, pool.concurrency.value) == (0, 0, 0)
    assert (tenant.in_flight, tenant.queued) == (0, 0)
    assert tenant.tokens_per_day.value == 300  # expired: the full reservations are charged
    assert pool.tokens_per_minute.value == 6000  # refilled meanwhile
    fresh = [await h.acquire(input_tokens=1) for _ in range(3)]  # every slot is back
    assert len({lease.lease_id for lease in fresh}) == 3


# -- (d) a Redis that stops answering ---------------------------------------------------------

TIMEOUT = 1.0  # backend.timeout
MARGIN = 1.5  # noisy shared cores; a stalled call would take the whole DEBUG SLEEP (6 s)
STALL = 6


@pytest.mark.redis
@pytest.mark.slow  # DEBUG SLEEP stalls Redis for 6 s
async def test_a_stalled_redis_fails_calls_within_the_timeout_and_stalls_nothing_else() -> None:
    """DEBUG SLEEP blocks Redis for 6 s. Acquire, Release and GetStatus on the Redis-backed
    server fail UNAVAILABLE within backend.timeout (+ a margin), not after 6 s; a memory-backed
    server in the same process (same event loop) keeps answering at once."""
    slow = RedisServer(None, "--enable-debug-command", "yes").start()
    backend = {"kind": "redis", "url": slow.url, "key_prefix": "slow", "timeout": TIMEOUT}
    r = await start_harness({"backend": backend}, manual_clock=False)
    m = await start_harness({"backend": {"kind": "memory"}})
    blocker = redis.Redis(port=slow.port, socket_timeout=30)
    try:
        held_r = await r.acquire(input_tokens=1)
        held_m = await m.acquire(input_tokens=1)
        sleep = ("DEBUG", "SLEEP", str(STALL))
        sleeping = threading.Thread(target=blocker.execute_command, args=sleep)
        sleeping.start()
        probe = redis.Redis(
            port=slow.port, socket_timeout=0.05, socket_connect_timeout=0.5, retry=NO_RETRY
        )

        async def redis_blocked() -> bool:
            try:
                await asyncio.to_thread(probe.ping)
            except redis.TimeoutError:
                return True
            return False

        await until(redis_blocked, 5, "Redis is stalled by DEBUG SLEEP")
        stalled = time.monotonic()
        calls = {
            "Acquire": r.acquire(input_tokens=1),
            "Release": r.release(held_r.lease_id),
            "GetStatus": r.status(),
        }
        for name, call in calls.items():
            started = time.monotonic()
            failure = await r.fail(call)
            took = time.monotonic() - started
            assert failure.code == Code.UNAVAILABLE, (name, failure)
            assert took < TIMEOUT + MARGIN, f"{name} took {took:.2f}s"
            # Meanwhile the memory-backed server answers at once.
            started = time.monotonic()
            lease = await m.acquire(input_tokens=1, timeout=5)
            await m.release(lease.lease_id)
            await m.status()
            assert time.monotonic() - started < MARGIN
        assert time.monotonic() - stalled < STALL, "the checks ran while Redis was stalled"
        await asyncio.to_thread(sleeping.join, 10)

        async def admits_again() -> bool:
            return await code_of(r.acquire(input_tokens=1)) == Code.OK

        await until(admits_again, 10, "admitting again once Redis answers")
        assert not (await r.release(held_r.lease_id)).already_released
        await m.release(held_m.lease_id)
    finally:
        await r.close()
        await m.close()
        blocker.close()
        slow.stop()


@pytest.mark.slow
async def test_a_huge_prompt_does_not_stall_other_rpcs() -> None:
    """While one caller's largest allowed prompt is being counted, other callers' RPCs on the
    same replica (a real process) keep being answered promptly."""
    server = AdmitdProcess({"pools": [{"name": "p"}], "tenants": [{"name": "a"}]}, "big-prompt")
    try:
        async with connect(server.target) as (stub, channel):
            await stub.GetStatus(pb.GetStatusRequest(), timeout=10)  # warm
            big = pb.AcquireRequest(tenant="a", pool="p", prompt="\U0001f600" * 2_000_000)
            sent = time.monotonic()
            acquire = asyncio.ensure_future(stub.Acquire(big, timeout=60))
            slowest = 0.0
            while not acquire.done():
                started = time.monotonic()
                await health(channel)
                slowest = max(slowest, time.monotonic() - started)
            lease = await acquire
            counting = time.monotonic() - sent
            assert lease.input_tokens == 2_000_000
            # Counting on the event loop would hold a health check for about the whole count.
            # 0.5 s on an idle machine; on a loaded one the count takes longer, and so may a
            # health check: a third of the count is still far below a stalled loop.
            bound = max(0.5, counting / 3)
            assert slowest < bound, f"a health check waited {slowest:.2f}s of {counting:.2f}s"
    finally:
        server.stop()
