"""Stalls that must stay local: a Redis that stops answering fails calls within
``backend.timeout`` (and a memory-backed server on the same event loop keeps answering), and
the largest prompt being counted does not hold up other RPCs of its replica.

No test sleeps to wait for time to pass: waits for real-world conditions are bounded polls
(``until``). Margins are generous, because these machines are 2 shared, noisy cores.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import grpc
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from admitd import parse_config
from admitd._backends.memory import MemoryBackend
from admitd._backends.redis import codec
from admitd._clock import ManualClock
from admitd._engine import Engine
from admitd._requests import AcquireSpec
from admitd.v1 import admission_pb2 as pb
from support.faults import code_of, connect
from support.harness import Harness, Replicas, start_harness
from support.health import health
from support.polling import until
from support.processes import AdmitdProcess
from support.redis_server import RedisServer

Code = grpc.StatusCode
NO_RETRY = Retry(NoBackoff(), 0)

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


@pytest.mark.redis
async def test_a_replica_back_from_a_stall_beats_before_its_next_call_and_keeps_its_waiters(
    replicas: Replicas, redis_server: RedisServer
) -> None:
    """A replica whose event loop stalled past ``dead_after`` (a long garbage collection
    with tens of thousands of waiters parked did so in the scale bench) is dead to Redis
    until it beats again. Its first call after the stall must go after a beat: a Release
    that dispatched first found its own waiter's replica dead and dropped the waiter from the
    queue, so the freed slot went to nobody and the waiter waited out its wait."""
    (h,) = await replicas(1, {"pools": [{"name": "p", "max_concurrency": 1}]})
    holder = await h.acquire(pool="p", input_tokens=1)
    waiter = h.acquire_later(pool="p", input_tokens=1, wait_timeout=30)
    await h.until_queued("p", 1)
    # The stall, written here (no test waits for time to pass): no beat since long ago, as
    # the replica's loop sees it, and past its promise, as Redis does.
    heartbeat = h.engine.heartbeat
    await heartbeat.stop()
    heartbeat._landed -= 10 * h.engine.settings.backend.dead_after
    promises = redis_server.client()
    replicas_key = f"{{{h.engine.settings.backend.key_prefix}}}:{codec.REPLICAS}"
    promises.hset(replicas_key, h.engine.backend.replica, "0")
    await h.release(holder.lease_id)
    lease = await asyncio.wait_for(waiter, 10)  # the slot went to the waiter
    assert lease.lease_id
    assert float(promises.hget(replicas_key, h.engine.backend.replica) or 0) > 0  # beat


async def test_a_memory_replica_back_from_a_stall_answers_without_waiting_for_a_beat() -> None:
    """The memory backend is one process: nothing judges it dead, so after a stall its
    calls go at once, with no beat ahead of them (they are not made to wait for one)."""
    h = await start_harness({"backend": {"kind": "memory"}})
    try:
        heartbeat = h.engine.heartbeat
        await heartbeat.stop()
        assert heartbeat._landed is not None
        heartbeat._landed -= 10 * h.engine.settings.backend.dead_after  # the stall, written here
        lease = await asyncio.wait_for(h.acquire(input_tokens=1), 10)
        assert lease.lease_id
        assert heartbeat.due() is not None  # no beat went ahead of the call (this asks one)
    finally:
        await h.close()


class _JudgedMemory(MemoryBackend):
    """A memory backend that says which waiters kept their place, as one that judges
    replicas dead by their heartbeats does (``Places``), yet whose calls never wait for a
    connection: ``Store.call`` itself sends a late beat ahead of them."""

    async def placed(self, lease_ids: Sequence[str]) -> set[str]:
        return set(lease_ids)


async def test_a_call_after_a_stall_goes_after_a_beat_that_does_not_wait_for_itself() -> None:
    """The beat a call waits for after a stall goes through ``Store.call`` itself: it must
    not wait for itself (every store call then hung for good)."""
    settings = parse_config({"pools": [{"name": "p", "max_concurrency": 10}]})
    clock = ManualClock()
    engine = Engine(settings, _JudgedMemory(clock, aging=settings.queue.aging), clock)
    await engine.start()
    try:
        heartbeat = engine.heartbeat
        await heartbeat.stop()
        assert heartbeat._landed is not None
        heartbeat._landed -= 10 * settings.backend.dead_after  # the stall, written here
        spec = AcquireSpec(tenant="default", pool="p", input_tokens=1)
        lease = await asyncio.wait_for(engine.acquire(spec), 10)
        assert lease.lease_id
        assert heartbeat.due() is None  # it beat first
    finally:
        await engine.close()


@pytest.mark.redis
async def test_a_call_that_waited_for_a_connection_through_a_stall_beats_before_it_is_sent(
    replicas: Replicas, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The heartbeat's check holds when a store call is sent, not when it is made: a call
    waits for a connection as long as the event loop stalls, so a replica whose beat was on
    time when its Release was made can be dead to Redis when that Release goes out, and the
    Release's dispatch then dropped the replica's own waiter."""
    (h,) = await replicas(1, {"pools": [{"name": "p", "max_concurrency": 1}]})
    holder = await h.acquire(pool="p", input_tokens=1)
    waiter = h.acquire_later(pool="p", input_tokens=1, wait_timeout=30)
    await h.until_queued("p", 1)
    backend, heartbeat = h.engine.backend, h.engine.heartbeat
    await heartbeat.stop()
    promises, replicas_key = _promises(h, redis_server)
    take, stalled = backend.lanes.take, list[bool]()

    async def take_through_a_stall(*, admit: bool) -> None:
        """The first call of an RPC to get a connection waited for it through a stall
        (written here: no beat since long ago, and past its promise for Redis)."""
        await take(admit=admit)
        if not stalled and asyncio.current_task() is not backend._listener:
            stalled.append(True)
            heartbeat._landed -= 10 * h.engine.settings.backend.dead_after
            promises.hset(replicas_key, backend.replica, "0")

    monkeypatch.setattr(backend.lanes, "take", take_through_a_stall)
    await h.release(holder.lease_id)
    lease = await asyncio.wait_for(waiter, 10)  # the slot went to the waiter
    assert stalled
    assert lease.lease_id
    assert float(promises.hget(replicas_key, backend.replica) or 0) > 0  # it beat first


@pytest.mark.redis
async def test_waiters_dropped_while_their_replica_was_counted_dead_are_told_to_retry(
    replicas: Replicas, redis_server: RedisServer
) -> None:
    """A replica past its promise loses its queued waiters to other replicas' dispatches (by
    design: a dead replica's waiters must not hold the queue). If it was only stalled, its
    next beat finds it lapsed, and the waiters it holds that lost their place are answered
    UNAVAILABLE at once (clients retry), instead of waiting out their wait with no place in
    the queue; those the dispatches did not reach keep their place and are served."""
    pools = [{"name": "p", "max_concurrency": 1}, {"name": "q", "max_concurrency": 1}]
    a, b = await replicas(2, {"pools": pools})
    on_p = await a.acquire(pool="p", input_tokens=1)
    on_q = await a.acquire(pool="q", input_tokens=1)
    lost = b.acquire_later(pool="p", input_tokens=1, wait_timeout=60)
    await b.until_queued("p", 1)
    ahead = a.acquire_later(pool="q", input_tokens=1, wait_timeout=60)
    await a.until_queued("q", 1)
    kept = b.acquire_later(pool="q", input_tokens=1, wait_timeout=60)
    await b.until_queued("q", 2)
    # b stalls past its promise (written here, as above); a finds it dead.
    await b.engine.heartbeat.stop()
    promises, replicas_key = _promises(b, redis_server)
    promises.hset(replicas_key, b.engine.backend.replica, "0")
    await a.release(on_p.lease_id)  # p's head is b's waiter: dropped, the slot stays free
    assert (await a.pool("p")).queued == 0
    assert (await a.pool("q")).queued == 2  # q's head is a's own waiter, still blocked
    await b.engine.heartbeat.beat()  # b is back: lapsed
    failure = await b.fail(asyncio.wait_for(lost, 10))
    assert failure.code == Code.UNAVAILABLE, failure
    assert "lost its place in the queue" in failure.message
    await a.release(on_q.lease_id)  # to a's waiter, then b's, which kept its place
    first = await asyncio.wait_for(ahead, 10)
    await a.release(first.lease_id)
    assert (await asyncio.wait_for(kept, 10)).lease_id


def _promises(h: Harness, redis_server: RedisServer) -> tuple[redis.Redis, str]:
    """A client of the test's Redis, and the key of the replicas' heartbeat promises."""
    prefix = h.engine.settings.backend.key_prefix
    return redis_server.client(), f"{{{prefix}}}:{codec.REPLICAS}"
