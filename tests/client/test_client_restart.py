"""A lease block across a replica restart: real admitd processes sharing a real Redis.

The replica that granted the lease is killed inside the block and a new one started on the
same port; the block's Release, sent while no replica listens, is retried until the new
one answers, so the slot is freed at once rather than at the lease's TTL (issue 17).
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from admitd_client import AdmissionClient, AsyncAdmissionClient, Settlement
from support.processes import Replica
from support.redis_server import RedisServer, free_port

pytestmark = pytest.mark.slow  # each test starts admitd processes twice: about 10 s


def config(redis: RedisServer) -> dict[str, Any]:
    """Replicas sharing ``redis``; a pool with one slot, so a leaked slot shows."""
    return {
        "backend": {"kind": "redis", "url": redis.url, "key_prefix": "restart"},
        "lease": {"ttl": "120s"},
        "pools": [{"name": "p", "max_concurrency": 1}],
        "tenants": [{"name": "a"}],
        "drain_delay": 0,
        "shutdown_grace": 0,
        "observability": {"metrics_listen": None, "log_format": "json"},
    }


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
