"""A replica killed with SIGKILL while callers hold its leases and wait in its queue: its
leases stay valid until their TTL, and its waiters stop holding freed slots once it has
missed its heartbeats, long before a grant nobody claims would go back (the claim timeout).

Real processes on loopback (admitd replicas and redis-server). No test sleeps to wait for time
to pass: waits for real-world conditions are bounded polls (``until``), and bounds come from
the settings plus what the test measures on this machine, because these are 2 shared, noisy
cores.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from typing import Any

import pytest

from admitd._backends.redis import codec
from admitd.v1 import admission_pb2 as pb
from support.faults import Code, acquire_request, code_of, connect, log_json, redis_keys
from support.health import SERVING, health
from support.polling import until
from support.processes import AdmitdProcess
from support.redis_server import RedisServer

CLAIM_TIMEOUT = 10.0  # admitd gives back a grant nobody claims after this (the last resort)
HEARTBEAT, DEAD_AFTER = 0.5, 1.5  # backend.heartbeat_interval and dead_after (the defaults)
TTL = 2.0


def backend(server: RedisServer, prefix: str) -> dict[str, Any]:
    return {
        "kind": "redis",
        "url": server.url,
        "key_prefix": prefix,
        "timeout": 2,
        "heartbeat_interval": HEARTBEAT,
        "dead_after": DEAD_AFTER,
    }


@pytest.mark.slow
async def test_a_killed_replica_leaves_no_stuck_slot_or_waiter(redis_server: RedisServer) -> None:
    """kill -9 one of two replicas while its clients hold the pool's two slots and two more
    wait in its queue. Their RPCs fail UNAVAILABLE at once; retried on the other replica they
    are admitted; the dead replica's leases expire within their TTL; nothing leaks.

    The dead replica's waiters stay in Redis's queue, ahead of the retries in the fair order,
    until it misses its heartbeats (dead_after): a slot an expired lease frees before that is
    granted to one of them, and goes back at the next heartbeat of the live replica. So the
    retries are admitted within max(TTL, DEAD_AFTER + HEARTBEAT), not after the claim
    timeout."""
    prefix = f"kill9-{uuid.uuid4().hex[:8]}"
    config = {
        "backend": backend(redis_server, prefix),
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
                    for entry in map(log_json, b.log_lines())
                    if entry.get("message") == "lease expired"
                }
                return all(holder.lease_id in expired for holder in holders)

            await until(holders_expired, TTL + 8, "the dead replica's leases expired")
            expired_after = time.monotonic() - granted
            assert expired_after < TTL + 8
            for holder in holders:  # gone for good: no one can renew a reclaimed lease
                renew = on_b.Renew(pb.RenewRequest(lease_id=holder.lease_id), timeout=5)
                assert await code_of(renew) == Code.NOT_FOUND

            bound = max(TTL, DEAD_AFTER + HEARTBEAT) + 8
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

            await until(no_unclaimed_grant, DEAD_AFTER + HEARTBEAT + 8, "grants given back")
        print(
            f"leases reclaimed {expired_after:.1f}s after grant (TTL {TTL:g}s); retries"
            f" admitted {admitted_after:.1f}s after the kill"
        )
    finally:
        a.kill()
        a.stop()
        b.stop()


SLOTS = 6


@pytest.mark.slow
async def test_a_killed_replicas_waiters_hold_no_slot_past_its_heartbeats(
    redis_server: RedisServer,
) -> None:
    """Three replicas share a pool of SLOTS. Callers on b and c hold every slot; SLOTS + 2
    callers on a queue, then SLOTS callers on b and c behind them. kill -9 a, and the holders
    release at once: each freed slot goes to one of a's waiters at the head of the queue,
    which nobody will claim (a phantom slot: in flight, held by no live caller). Once a is
    past its heartbeat promise, those grants go back and b's and c's waiters get every slot,
    within DEAD_AFTER + HEARTBEAT of the kill plus what a hand-over of a slot to a waiter
    takes on this machine (measured first), instead of the claim timeout."""
    prefix = f"phantom-{uuid.uuid4().hex[:8]}"
    config = {
        "backend": backend(redis_server, prefix),
        "lease": {"ttl": 60},
        "queue": {"max_wait": 60},
        "pools": [{"name": "p", "max_concurrency": SLOTS}],
        "tenants": [{"name": "a"}],
    }
    redis = redis_server.client()
    replicas_key = f"{{{prefix}}}:{codec.REPLICAS}"
    a = AdmitdProcess(config, "replica-a")  # it beats before it listens: the only one yet
    (a_id,) = redis.hkeys(replicas_key)
    b = AdmitdProcess(config, "replica-b")
    c = AdmitdProcess(config, "replica-c")
    # The live replicas' heartbeats as Redis saw them (each promise is its beat's Redis TIME
    # + DEAD_AFTER): how late they came on this machine is part of the bound.
    ids = [str(rid) for rid in redis.hkeys(replicas_key)]
    promises: dict[str, list[float]] = {rid: [] for rid in ids if rid != a_id}

    async def watch_beats() -> None:
        while True:
            for rid, promise in zip(
                promises, redis.hmget(replicas_key, list(promises)), strict=True
            ):
                if promise is not None and float(promise) not in promises[rid][-1:]:
                    promises[rid].append(float(promise))
            await asyncio.sleep(0.01)  # polling Redis, far more often than replicas beat

    watcher = asyncio.ensure_future(watch_beats())
    try:
        async with (
            connect(a.target) as (on_a, _),
            connect(b.target) as (on_b, _),
            connect(c.target) as (on_c, _),
        ):
            live = (on_b, on_c)

            async def pool() -> pb.PoolStatus:
                return (await on_b.GetStatus(pb.GetStatusRequest(), timeout=10)).pools[0]

            async def queued(n: int) -> bool:
                return (await pool()).queued == n

            # What one hand-over takes here: a slot freed on one replica, to a waiter on another.
            holders = [
                await live[i % 2].Acquire(acquire_request(), timeout=10) for i in range(SLOTS)
            ]
            handoffs = []
            for i in range(3):
                waiter = asyncio.ensure_future(
                    live[(i + 1) % 2].Acquire(acquire_request(wait=30), timeout=60)
                )
                await until(lambda: queued(1), 10, "the waiter queued")
                started = time.monotonic()
                await live[i % 2].Release(
                    pb.ReleaseRequest(lease_id=holders[i].lease_id), timeout=10
                )
                holders[i] = await asyncio.wait_for(waiter, 10)
                handoffs.append(time.monotonic() - started)
            handoff = max(handoffs)

            doomed = [
                asyncio.ensure_future(on_a.Acquire(acquire_request(wait=30), timeout=60))
                for _ in range(SLOTS + 2)
            ]
            await until(lambda: queued(SLOTS + 2), 10, "a's callers queued")
            waiters = [
                asyncio.ensure_future(live[i % 2].Acquire(acquire_request(wait=30), timeout=60))
                for i in range(SLOTS)
            ]
            await until(lambda: queued(2 * SLOTS + 2), 10, "b's and c's callers queued behind")

            a.kill()
            killed = time.monotonic()
            releases = [
                live[i % 2].Release(pb.ReleaseRequest(lease_id=h.lease_id), timeout=10)
                for i, h in enumerate(holders)
            ]
            await asyncio.gather(*releases)
            after = await pool()
            seconds, micros = redis.time()
            promise_left = float(redis.hget(replicas_key, a_id) or 0) - (seconds + micros / 1e6)
            if promise_left > 0:  # a still counted alive: every freed slot went to its waiters
                assert (after.in_flight, sum(w.done() for w in waiters)) == (SLOTS, 0)

            leases = await asyncio.wait_for(asyncio.gather(*waiters), CLAIM_TIMEOUT)
            served_after = time.monotonic() - killed
            watcher.cancel()
            gaps = [
                later - sooner for p in promises.values() for sooner, later in itertools.pairwise(p)
            ]
            late = max(0.0, max(gaps) - HEARTBEAT)
            # a is dead DEAD_AFTER after its last beat at the latest; a live replica's next
            # beat (HEARTBEAT, plus how late beats came here) gives back its grants and the
            # slots go to the live waiters (what a hand-over takes here, with room to spare).
            bound = DEAD_AFTER + HEARTBEAT + late + 4 * handoff
            assert served_after < bound, f"{served_after:.2f}s, bound {bound:.2f}s"
            assert {await code_of(call) for call in doomed} == {Code.UNAVAILABLE}
            final = await pool()
            assert (final.in_flight, final.queued) == (SLOTS, 0)  # every slot held by a live caller
            assert redis_keys(redis_server, prefix, "w") == []  # a's waiters left the queue
            assert redis.hlen(f"{{{prefix}}}:claimer") == 0
            for i, lease in enumerate(leases):
                await live[i % 2].Release(pb.ReleaseRequest(lease_id=lease.lease_id), timeout=10)
        print(
            f"phantom slots gone {served_after:.2f}s after kill -9 (dead_after {DEAD_AFTER:g}s,"
            f" heartbeat {HEARTBEAT:g}s, {late * 1000:.0f}ms late at most, hand-over"
            f" {handoff * 1000:.0f}ms, bound {bound:.2f}s;"
            f" {after.in_flight} in flight, none held, {promise_left:.2f}s before a was dead)"
        )
    finally:
        watcher.cancel()
        for replica in (a, b, c):
            replica.kill()
            replica.stop()
