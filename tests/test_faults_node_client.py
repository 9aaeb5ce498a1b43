"""The Node client outlasts a replica restart and a Sentinel failover, as the Python client
does (tests/client/test_client_restart.py): real admitd processes sharing a real Redis (a
primary, its replica and three Sentinels for the failover), the Node CLI's ``lease`` command
(acquire, wait for a line on stdin, release) as the caller.

An Acquire whose first attempt failed (nothing serving the port) is retried within its
deadline and admitted once a replica listens; a Release sent while admitd cannot reach Redis
(the primary killed) is retried until admitd reaches the promoted replica, so the one slot is
free at once, not at the lease's TTL. (A Release across a replica restart:
tests/test_node_client.py.)
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest

from support.faults import one_slot
from support.node import PROCESS, finished, start_cli
from support.polling import until_sync
from support.processes import Replica
from support.redis_server import RedisServer, free_port
from support.sentinels import SentinelGroup

pytestmark = pytest.mark.slow  # admitd processes and the Node CLI


LEASE = (
    "lease", "--tenant", "a", "--pool", "p", "--input-tokens", "10", "--max-output-tokens", "5",
    "--used-input-tokens", "10", "--used-output-tokens", "2", "--timeout-ms", "30000",
)  # fmt: skip
RELEASED = {"charged_tokens": 12, "refunded_tokens": 3, "already_released": False, "charged_usd": 0}


async def one_slot_free(node: str, port: int) -> None:
    """The pool's one slot is free now: an Acquire that may not wait is admitted."""
    acquire = await start_cli(
        node, port, "acquire", "--tenant", "a", "--pool", "p", "--input-tokens", "1"
    )
    status, out = await finished(acquire)
    assert status == 0, out


async def test_an_acquire_sent_while_no_replica_listens_waits_for_one(
    node: str, redis_server: RedisServer
) -> None:
    port = free_port()
    conf = one_slot({"kind": "redis", "url": redis_server.url, "key_prefix": "node-absent"})
    replicas: list[Replica] = []
    try:
        # Something that takes the CLI's first attempt and drops it, so that the Acquire is
        # known to have failed (UNAVAILABLE) before any replica listens.
        with socket.create_server(("127.0.0.1", port)) as nobody:
            nobody.settimeout(PROCESS)
            process = await start_cli(node, port, *LEASE, stdin=True)
            attempt, _ = await asyncio.to_thread(nobody.accept)
            attempt.close()
        replicas.append(Replica(conf, port))  # a replica starts listening there
        await asyncio.to_thread(replicas[0].wait_listening)
        assert process.stdout is not None
        assert process.stdin is not None
        granted = json.loads(await asyncio.wait_for(process.stdout.readline(), timeout=PROCESS))
        assert granted["lease"]["reserved_tokens"] == 15
        process.stdin.write(b"release\n")
        await process.stdin.drain()
        status, out = await finished(process)
        assert status == 0, out
        assert out["release"] == RELEASED
        await one_slot_free(node, port)
    finally:
        for replica in replicas:
            replica.close()


@pytest.mark.redis
async def test_a_lease_releases_across_a_sentinel_failover(node: str) -> None:
    group = await asyncio.to_thread(SentinelGroup)
    primary, replica, sentinels = group.primary, group.replica, group.sentinels
    admitd: Replica | None = None
    try:
        base = "{nodefailover}"
        backend = {
            "kind": "redis",
            "sentinels": group.addresses,
            "key_prefix": base.strip("{}"),
            "timeout": "300ms",
        }
        port = free_port()
        admitd = Replica(one_slot(backend), port)
        await asyncio.to_thread(admitd.wait_listening)
        process = await start_cli(node, port, *LEASE, stdin=True)
        assert process.stdout is not None
        assert process.stdin is not None
        granted = json.loads(await asyncio.wait_for(process.stdout.readline(), timeout=PROCESS))
        key = f"{base}:lease:{granted['lease']['lease_id']}"

        def replicated() -> bool:
            return bool(replica.client().exists(key))

        await asyncio.to_thread(until_sync, replicated, 10, "the lease replicated")
        primary.kill()  # the primary dies while the lease is held
        process.stdin.write(b"release\n")  # the Release starts while admitd cannot reach Redis
        await process.stdin.drain()
        left = time.monotonic()
        status, out = await finished(process)
        took = time.monotonic() - left
        assert status == 0, out
        assert out["release"] == RELEASED
        assert sentinels[0].primary() == replica.port
        assert took > 0.4, "released before Sentinel could even see the primary down"
        assert not replica.client().exists(key)
        gauge = (f"{base}:level", "pool:p:max_concurrency")
        assert float(replica.client().hget(*gauge) or 0) == 0  # the slot is free
    finally:
        if admitd is not None:
            admitd.close()
        group.stop()
