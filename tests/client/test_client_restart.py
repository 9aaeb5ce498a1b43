"""A lease block across a replica restart and across a Sentinel failover: real admitd
processes sharing a real Redis (a primary, its replica and three Sentinels for the failover).

The replica that granted the lease is killed inside the block and a new one started on the
same port; the block's Release, sent while no replica listens, is retried until the new
one answers, so the slot is freed at once rather than at the lease's TTL (issue 17). A block
entered while no replica listens waits for one (Acquire is retried within its deadline). The
Redis primary killed inside the block: the Release is retried while admitd answers
UNAVAILABLE, and lands on the promoted replica.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from admitd._backends.redis import codec
from admitd_client import AdmissionClient, AsyncAdmissionClient, Settlement
from support.faults import one_slot
from support.polling import until_sync
from support.processes import Replica
from support.redis_server import RedisServer, free_port
from support.sentinels import SentinelGroup

pytestmark = pytest.mark.slow  # each test starts admitd processes twice: about 10 s


def config(redis: RedisServer) -> dict[str, Any]:
    """Replicas sharing ``redis``."""
    return one_slot({"kind": "redis", "url": redis.url, "key_prefix": "restart"})


def restart_in_background(conf: dict[str, Any], port: int) -> tuple[threading.Thread, list[Any]]:
    started: list[Any] = []

    def run() -> None:
        replica = Replica(conf, port)
        started.append(replica)
        started.append(replica.wait_listening())

    thread = threading.Thread(target=run)
    thread.start()
    return thread, started


def test_a_lease_block_releases_across_a_replica_restart(redis_server: RedisServer) -> None:
    conf, port = config(redis_server), free_port()
    first = Replica(conf, port)
    replicas = [first]
    try:
        first.wait_listening()
        with AdmissionClient(f"127.0.0.1:{port}", tenant="a") as client:
            with client.lease(pool="p", input_tokens=10, max_output_tokens=5) as lease:
                first.kill()  # the replica dies under the block...
                thread, started = restart_in_background(conf, port)  # ...and comes back
                lease.record(input_tokens=10, output_tokens=2)
            # The block's exit retried Release until the new replica answered.
            thread.join(60)
            replicas.append(started[0])
            assert started[1] > 0.2, "the restart was too quick to test anything"
            assert lease.settlement == Settlement(12, 3, False, 0.0)
            pool = next(p for p in client.status().pools if p.name == "p")
            assert pool.in_flight == 0
            # The one slot is free now, not at the lease's TTL.
            again = client.acquire(pool="p", input_tokens=1)
            assert client.release(again) is not None
    finally:
        for replica in replicas:
            replica.close()


async def test_the_async_client_too(redis_server: RedisServer) -> None:
    conf, port = config(redis_server), free_port()
    first = Replica(conf, port)
    replicas = [first]
    try:
        first.wait_listening()
        async with AsyncAdmissionClient(f"127.0.0.1:{port}", tenant="a") as client:
            async with client.lease(pool="p", input_tokens=10, max_output_tokens=5) as lease:
                first.kill()
                thread, started = restart_in_background(conf, port)
                lease.record(input_tokens=10, output_tokens=2)
            thread.join(60)
            replicas.append(started[0])
            assert lease.settlement == Settlement(12, 3, False, 0.0)
            pool = next(p for p in (await client.status()).pools if p.name == "p")
            assert pool.in_flight == 0
    finally:
        for replica in replicas:
            replica.close()


def test_a_lease_block_entered_while_no_replica_listens_waits_for_one(
    redis_server: RedisServer,
) -> None:
    conf, port = config(redis_server), free_port()
    first = Replica(conf, port)
    replicas = [first]
    try:
        first.wait_listening()
        first.kill()
        thread, started = restart_in_background(conf, port)
        with AdmissionClient(f"127.0.0.1:{port}", tenant="a", timeout=30) as client:
            # Acquire is retried (UNAVAILABLE: nobody listens) within its deadline.
            with client.lease(pool="p", input_tokens=10) as lease:
                lease.record(input_tokens=10, output_tokens=0)
            thread.join(60)
            replicas.append(started[0])
            assert started[1] > 0.2, "the restart was too quick to test anything"
            assert lease.settlement == Settlement(10, 0, False, 0.0)
            assert next(p for p in client.status().pools if p.name == "p").in_flight == 0
    finally:
        for replica in replicas:
            replica.close()


@pytest.mark.redis
def test_a_lease_block_releases_across_a_sentinel_failover() -> None:
    group = SentinelGroup()
    primary, replica, sentinels = group.primary, group.replica, group.sentinels
    admitd: Replica | None = None
    try:
        base = "{failover}"
        conf = {
            **config(primary),
            "backend": {
                "kind": "redis",
                "sentinels": group.addresses,
                "key_prefix": base.strip("{}"),
                "timeout": "300ms",
            },
        }
        port = free_port()
        admitd = Replica(conf, port)
        admitd.wait_listening()
        gauge = (f"{base}:gauge", "pool:p:max_concurrency")
        with AdmissionClient(f"127.0.0.1:{port}", tenant="a") as client:
            with client.lease(pool="p", input_tokens=10, max_output_tokens=5) as lease:
                key = f"{base}:{codec.LEASE}:{lease.lease_id}"
                until_sync(lambda: bool(replica.client().exists(key)), 10, "the lease replicated")
                primary.kill()  # the primary dies under the block
                lease.record(input_tokens=10, output_tokens=2)
                left = time.monotonic()
            # The block's exit retried Release (admitd: UNAVAILABLE, the store unreachable)
            # until admitd reached the promoted replica through Sentinel.
            took = time.monotonic() - left
            assert sentinels[0].primary() == replica.port
            assert took > 0.4, "released before Sentinel could even see the primary down"
            assert lease.settlement == Settlement(12, 3, False, 0.0)
            assert next(p for p in client.status().pools if p.name == "p").in_flight == 0
            assert float(replica.client().hget(*gauge) or 0) == 0  # the slot is free
            assert not replica.client().exists(key)
    finally:
        if admitd is not None:
            admitd.close()
        group.stop()
