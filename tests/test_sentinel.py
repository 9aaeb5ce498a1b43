"""Redis Sentinel: admitd finds the primary through Sentinel and survives a failover."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest
import redis

from admitd._backends.redis import codec
from support.harness import start_harness
from support.polling import until_sync
from support.redis_server import RedisServer, Sentinel, free_port


@pytest.fixture
def sentinel_setup() -> Iterator[tuple[RedisServer, RedisServer, Sentinel]]:
    primary = RedisServer().start()
    replica = RedisServer(free_port(), "--replicaof", "127.0.0.1", str(primary.port)).start()
    sentinel = Sentinel(primary.port).start()
    yield primary, replica, sentinel
    for server in (sentinel, replica, primary):
        server.stop()


@pytest.mark.redis
@pytest.mark.slow
async def test_failover_to_the_promoted_replica(
    sentinel_setup: tuple[RedisServer, RedisServer, Sentinel],
) -> None:
    primary, replica, sentinel = sentinel_setup
    watcher = redis.Redis(port=sentinel.port, decode_responses=True)

    def known_primary() -> int:
        asked = ("SENTINEL", "get-master-addr-by-name", "mymaster")
        _host, port = watcher.execute_command(*asked)  # type: ignore[no-untyped-call]
        return int(port)

    def replica_linked() -> bool:
        info = replica.client().info("replication")
        return bool(info.get("master_link_status") == "up")

    until_sync(replica_linked, 10, "the replica to sync")
    h = await start_harness(
        {
            "backend": {
                "kind": "redis",
                "sentinels": [f"127.0.0.1:{sentinel.port}"],
                "key_prefix": "ha",
                "timeout": "300ms",
            },
            # Learning after the failover counts the pool as full for one TTL: a short one.
            "lease": {"ttl": 2},
            "pools": [{"name": "p", "max_concurrency": 10}],
        },
        manual_clock=False,
    )
    try:
        assert (await h.acquire(input_tokens=1)).reserved_tokens == 1
        primary.kill()
        await asyncio.to_thread(
            until_sync,
            lambda: known_primary() == replica.port,
            30,
            "Sentinel to promote the replica",
        )
        # admitd asks Sentinel again on the next connection and carries on.
        lease = None
        codes = set()
        for _ in range(100):
            try:
                lease = await h.acquire(input_tokens=1)
                break
            except grpc.aio.AioRpcError as error:
                # A failover in progress may only fail closed, then learning refuses.
                codes.add(error.code())
                await asyncio.sleep(0.1)
        assert codes <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert lease is not None, "admitd never reached the promoted primary"
        assert replica.client().exists(f"{{ha}}:{codec.LEASE}:{lease.lease_id}")
        assert not (await h.release(lease.lease_id)).already_released
    finally:
        await h.close()
    # Closed, admitd keeps no connection to Sentinel open: only this test's own is left.
    until_sync(lambda: len(watcher.client_list()) == 1, 10, "admitd's Sentinel clients closed")
