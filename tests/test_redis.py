"""What only the Redis backend does: replicas sharing one controller, surviving restarts and
SCRIPT FLUSH, failing closed while Redis is down and recovering by itself."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2

from admitd import AcquireSpec, Engine, ManualClock, parse_config
from admitd._backends.redis import codec
from admitd._backends.redis.backend import RedisBackend, connect
from admitd._model import DAY_SECONDS, LEDGER_DAYS, Look
from admitd._usage import Unreported
from support.harness import Replicas
from support.health import health
from support.polling import until
from support.queueing import CREDITED, grant_order, refund_moves_its_tenant_ahead
from support.redis_server import RedisServer


async def test_exact_global_concurrency_across_replicas(replicas: Replicas) -> None:
    a, b = await replicas(2, {"pools": [{"name": "p", "max_concurrency": 5}]})
    calls = [(a if i % 2 else b).acquire(input_tokens=10) for i in range(40)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    leases = [r for r in results if not isinstance(r, BaseException)]
    assert len(leases) == 5
    assert all(isinstance(r, grpc.aio.AioRpcError) for r in results if r not in leases)
    assert (await a.pool("p")).in_flight == 5
    assert (await b.pool("p")).in_flight == 5


async def test_release_and_renew_through_another_replica(replicas: Replicas) -> None:
    a, b = await replicas(2, {"pools": [{"name": "p", "tokens_per_minute": 1000}]})
    lease = await a.acquire(input_tokens=400)
    renewed = await b.renew(lease.lease_id, extend_by=300)
    assert renewed.expires_at.ToSeconds() > lease.expires_at.ToSeconds()
    settled = await b.release(lease.lease_id, (100, 0))
    assert (settled.charged_tokens, settled.refunded_tokens) == (100, 300)
    assert (await a.pool("p")).in_flight == 0
    assert (await a.release(lease.lease_id)).already_released


async def test_a_waiter_on_one_replica_gets_the_slot_freed_on_another(
    replicas: Replicas,
) -> None:
    a, b = await replicas(2, {"pools": [{"name": "p", "max_concurrency": 1}]})
    holder = await a.acquire(input_tokens=1)
    waiting = b.acquire_later(input_tokens=1, wait_timeout=30)
    await b.until_queued("p", 1)
    await a.release(holder.lease_id)
    lease = await asyncio.wait_for(waiting, 10)  # bounded: delivered by pub/sub (or polling)
    assert (await a.pool("p")).in_flight == 1
    assert not (await a.release(lease.lease_id)).already_released


async def test_weights_hold_across_replicas(replicas: Replicas) -> None:
    a, b = await replicas(
        2,
        {
            "pools": [{"name": "p", "max_concurrency": 1}],
            "tenants": [{"name": "a", "weight": 1}, {"name": "b", "weight": 3}],
        },
    )
    holder = await a.acquire(tenant="a", input_tokens=1)
    labels = ["a", "b"] * 8  # a's waiters on replica a, b's on replica b
    tasks = []
    for i, tenant in enumerate(labels, start=1):
        replica = a if tenant == "a" else b
        tasks.append(replica.acquire_later(tenant=tenant, input_tokens=100, wait_timeout=30))
        await a.until_queued("p", i)
    order = await grant_order(a, holder, tasks, labels)
    # Finish tags: a at 100, 200, 300..., b at 33, 67, 100 (after a's, which came first)...
    assert "".join(order) == "bbabbbabbbaaaaaa"


async def test_a_refund_moves_its_tenant_ahead_across_replicas(replicas: Replicas) -> None:
    a, b = await replicas(2, CREDITED)
    await refund_moves_its_tenant_ahead(holding=a, queueing=b)


async def test_leases_survive_an_admitd_restart(replicas: Replicas) -> None:
    (first,) = await replicas(1, {"pools": [{"name": "p", "max_concurrency": 1}]})
    lease = await first.acquire(input_tokens=100)
    await first.close()
    (second,) = await replicas(1, {"pools": [{"name": "p", "max_concurrency": 1}]})
    assert (await second.pool("p")).in_flight == 1
    settled = await second.release(lease.lease_id, (10, 0))
    assert not settled.already_released
    assert (await second.pool("p")).in_flight == 0


async def test_scripts_and_functions_are_reloaded_after_script_flush_and_function_flush(
    replicas: Replicas, redis_server: RedisServer
) -> None:
    (h,) = await replicas(1)
    lease = await h.acquire(input_tokens=1)
    redis_server.client().script_flush()
    redis_server.client().function_flush()
    assert redis_server.client().function_list() == []
    assert not (await h.release(lease.lease_id)).already_released
    await h.acquire(input_tokens=1)
    assert len(redis_server.client().function_list()) == 1  # loaded again, once


async def test_redis_down_fails_closed_and_recovers_by_itself(
    replicas: Replicas, redis_server: RedisServer
) -> None:
    (h,) = await replicas(1)
    await h.acquire(input_tokens=1)
    redis_server.kill()
    failure = await h.fail(h.acquire(input_tokens=1))
    assert failure.code == grpc.StatusCode.UNAVAILABLE
    assert "state store unreachable" in failure.message
    assert not await h.server.check_store()
    assert await health(h.channel) == health_pb2.HealthCheckResponse.NOT_SERVING
    # Alive all the same: a liveness probe must not restart a replica for Redis's outage.
    assert await health(h.channel, "admitd.liveness") == health_pb2.HealthCheckResponse.SERVING

    redis_server.start()  # same port, empty: nothing was persisted
    assert await h.server.check_store()
    assert await health(h.channel) == health_pb2.HealthCheckResponse.SERVING
    assert (await h.acquire(input_tokens=1)).reserved_tokens == 1


async def test_a_dead_replicas_waiters_and_grants_are_reclaimed(
    redis_server: RedisServer,
) -> None:
    """A replica that dies leaves waiters and maybe an unclaimed grant in Redis; they must not
    hold capacity even when nothing says it died (it never heartbeat: the last resort):
    waiters are dropped once their wait is over, an unclaimed grant is given back after the
    claim timeout."""
    settings = parse_config(
        {
            "backend": {"kind": "redis", "url": redis_server.url, "key_prefix": "dead"},
            "pools": [{"name": "p", "max_concurrency": 1}],
            "tenants": [{"name": "a"}],
        }
    )
    clock = ManualClock()
    backend = RedisBackend(connect(settings.backend), key_prefix="dead", aging=10, clock=clock)
    engine = Engine(settings, backend, clock)  # only to build tickets; never started

    def ticket(wait: float) -> Any:
        return engine.requests.ticket(
            AcquireSpec(tenant="a", pool="p", input_tokens=5, wait_timeout=wait), deadline=None
        )[0]

    holder = await backend.acquire(ticket(0), wait=False)
    assert holder.lease is not None
    ghost = ticket(30)  # queued by a replica that then dies: nobody claims its grant
    assert (await backend.acquire(ghost, wait=True)).queued
    released = await backend.release(holder.lease.lease_id, Unreported.RESERVATION, None)
    assert [g.lease_id for g in released.progress.grants] == [ghost.lease_id]
    snapshot = await backend.snapshot(engine.policy.all_limits())
    assert snapshot.in_flight_by_pool == {"p": 1}

    await clock.advance(10)  # claim timeout
    expired = await backend.expire()
    assert expired.expired == []
    snapshot = await backend.snapshot(engine.policy.all_limits())
    assert snapshot.in_flight_by_pool == {}

    late = ticket(5)  # another dead replica's waiter, its wait long over
    holder = await backend.acquire(ticket(0), wait=False)
    assert holder.lease is not None
    assert (await backend.acquire(late, wait=True)).queued
    await clock.advance(6)
    released = await backend.release(holder.lease.lease_id, Unreported.RESERVATION, None)
    assert released.progress.grants == []
    snapshot = await backend.snapshot(engine.policy.all_limits())
    assert (snapshot.in_flight_by_pool, snapshot.queued_by_pool) == ({}, {})
    await backend.close()


async def test_a_replica_past_its_heartbeat_loses_its_waiters_and_grants_at_once(
    redis_server: RedisServer,
) -> None:
    """Replicas a and b beat. a dies with two waiters queued ahead of b's: a grant made for
    the first before anyone could tell goes back at b's next heartbeat once a is past its
    promise, a's other waiter leaves the queue, and b's waiter gets the slot, long before
    the claim timeout. A deferred ticket a queued has no RPC there: it stays."""
    prefix = "beats"
    settings = parse_config(
        {
            "backend": {"kind": "redis", "url": redis_server.url, "key_prefix": prefix},
            "pools": [{"name": "p", "max_concurrency": 1}],
            "tenants": [{"name": "a"}],
        }
    )
    clock = ManualClock()
    a, b = (
        RedisBackend(connect(settings.backend), key_prefix=prefix, aging=10, clock=clock)
        for _ in range(2)
    )
    engine = Engine(settings, a, clock)  # only to build tickets; never started

    def ticket(wait: float) -> Any:
        return engine.requests.ticket(
            AcquireSpec(tenant="a", pool="p", input_tokens=5, wait_timeout=wait), deadline=None
        )[0]

    for replica in (a, b):
        assert not (await replica.beat(60)).lapsed
    holder = await b.acquire(ticket(0), wait=False)
    assert holder.lease is not None
    granted, dropped, live = ticket(30), ticket(30), ticket(30)
    deferred = dataclasses.replace(ticket(30), deferred=True)
    for replica, waiter in ((a, granted), (a, dropped), (b, live), (a, deferred)):
        assert (await replica.acquire(waiter, wait=True)).queued
    released = await b.release(holder.lease.lease_id, Unreported.RESERVATION, None)
    assert [g.lease_id for g in released.progress.grants] == [granted.lease_id]

    # a is past its promise (written here: no test waits for time to pass).
    redis_server.client().hset(f"{{{prefix}}}:{codec.REPLICAS}", a.replica, "0")
    beat = await b.beat(60)
    assert [g.lease_id for g in beat.progress.grants] == [live.lease_id]
    assert not await b.claim(granted.lease_id)  # went back: a's late claim would get nothing
    assert await b.claim(live.lease_id)
    assert (await b.look(dropped.lease_id, claim=False)) == Look()
    snapshot = await b.snapshot(engine.policy.all_limits())
    assert snapshot.in_flight_by_pool == {"p": 1}
    assert sum(snapshot.queued_by_pool["p"]) == 1  # the deferred ticket
    assert (await a.beat(60)).lapsed  # a, back after all, hears that it was given up
    for replica in (a, b):
        await replica.close()


async def test_fail_open_admits_unchecked_while_redis_is_down(
    replicas: Replicas, redis_server: RedisServer
) -> None:
    (h,) = await replicas(
        1,
        {
            "backend": {
                "kind": "redis",
                "url": redis_server.url,
                "key_prefix": "open",
                "on_store_error": "fail_open",
            },
            "pools": [{"name": "p", "max_concurrency": 1}],
        },
    )
    await h.acquire(input_tokens=1)
    redis_server.kill()
    # The limit would refuse this call; with the store down it is admitted unchecked.
    lease = await h.acquire(input_tokens=1)
    assert lease.lease_id.startswith("unchecked-")
    assert h.engine.unchecked_admissions == 1
    assert not await h.server.check_store()
    assert await health(h.channel) == health_pb2.HealthCheckResponse.SERVING
    settled = await h.release(lease.lease_id, (1, 2))
    assert settled.charged_tokens == 3
    redis_server.start()
    assert await h.server.check_store()
    # Back to checked admission. Redis restarted empty under admitd, which forgot the lease
    # held before: it may still run, so the pool counts as full for one lease TTL (learning).
    refused = await h.fail(h.acquire(input_tokens=1))
    assert refused.reason == "CONCURRENCY_LIMIT"
    assert h.engine.backend.watch.changes == 1


async def test_a_lost_grant_message_only_delays_the_grant(
    replicas: Replicas, redis_server: RedisServer
) -> None:
    a, b = await replicas(2, {"pools": [{"name": "p", "max_concurrency": 1}]})
    holder = await a.acquire(input_tokens=1)
    waiting = b.acquire_later(input_tokens=1, wait_timeout=30)
    await b.until_queued("p", 1)
    # Cut every subscriber off: the grant's message is published to nobody.
    killed = redis_server.client().client_kill_filter(_type="pubsub")
    assert killed >= 2
    await a.release(holder.lease_id)
    lease = await asyncio.wait_for(waiting, 10)  # found by b's poll of its waiters' grants
    assert not (await b.release(lease.lease_id)).already_released


async def test_a_days_ledger_is_kept_ledger_days_from_its_first_row(
    replicas: Replicas, redis_server: RedisServer
) -> None:
    """The ledger hash of a day gets its time to live when a row is made in it (a Release
    adding to a row already there leaves it alone): it must never be kept for ever."""
    (h,) = await replicas(1, {"pools": [{"name": "p"}]})
    client = redis_server.client()
    prefix = "{" + h.engine.settings.backend.key_prefix + "}"
    keep = LEDGER_DAYS * DAY_SECONDS

    async def pair(tenant: str) -> int:
        lease = await h.acquire(tenant=tenant, input_tokens=10)
        await h.release(lease.lease_id, (10, 5))
        (ledger,) = client.keys(f"{prefix}:ledger:*")
        ttl: int = client.ttl(ledger)
        client.persist(ledger)  # so that only what comes next can give it one again
        return ttl

    assert keep - 60 < await pair("a") <= keep  # the day's first row
    assert await pair("a") == -1  # a row already there: left alone
    assert keep - 60 < await pair("b") <= keep  # a new row


async def test_the_backup_poll_reads_no_key_per_waiter(redis_server: RedisServer) -> None:
    """With 10,000 waiters and nothing granted, the poll behind pub/sub reads only the ids of
    the unclaimed grants (none here), never the waiters' grant keys: its cost does not grow
    with the waiters (an MGET of a sixth of them per poll took 28% of a core with 97,868).
    No engine runs here, so every ZRANGE that Redis counts is the listener's."""
    client = aioredis.Redis.from_url(redis_server.url)
    backend = RedisBackend(client, key_prefix="t", aging=1.0, poll_interval=0.05)
    waiters = {f"w{i}" for i in range(10_000)}
    redis = redis_server.client()
    redis.config_resetstat()

    def calls(command: str) -> int:
        stats: dict[str, dict[str, int]] = redis.info("commandstats")
        return stats.get(f"cmdstat_{command}", {}).get("calls", 0)

    async def polled_thrice() -> bool:
        return calls("zrange") >= 3

    try:
        backend.subscribe(lambda: waiters, lambda lease: None, lambda end: None, print)
        await until(polled_thrice, 10, "three polls")
        assert calls("mget") == 0
    finally:
        await backend.close()


def test_the_poll_looks_up_every_dedup_end_once_per_cycle_not_all_at_every_poll() -> None:
    from admitd._backends.redis.listener import POLL_CYCLE, _PollRotation

    polls_per_cycle = 6
    rotation = _PollRotation(POLL_CYCLE / polls_per_cycle)
    waiting = [f"end:w{i}" for i in range(60)]
    cycle = [rotation.next(waiting) for _ in range(polls_per_cycle)]
    assert [len(ids) for ids in cycle] == [10] * polls_per_cycle
    assert sorted(i for ids in cycle for i in ids) == sorted(waiting)
    # A follower that arrived during the cycle is looked up in the next one.
    waiting.append("end:late")
    assert "end:late" in [i for _ in range(polls_per_cycle) for i in rotation.next(waiting)]
    # One follower alone is looked up at every poll; none, nothing is.
    alone = _PollRotation(POLL_CYCLE / polls_per_cycle)
    assert [alone.next(["end:only"]) for _ in range(3)] == [["end:only"]] * 3
    assert _PollRotation(POLL_CYCLE / polls_per_cycle).next([]) == []
