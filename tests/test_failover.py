"""Failover without over-grant: a Redis primary dies with writes its replica never got (the
replication link held back by a loopback proxy), the replica is promoted, and admitd must
not grant the lost leases' slots again.

Here admitd reaches Redis through a second proxy that is moved to the promoted replica, as a
virtual IP would be, on a manual clock; ``test_failover_sentinel.py`` does it with Sentinel,
real processes and real time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from admitd._backends.redis import codec
from support.harness import Harness, start_harness
from support.polling import until
from support.proxy import Proxy
from support.redis_server import RedisServer

TTL = 30.0


@dataclass
class Pair:
    """A primary, its replica (fed through ``link``), and ``front``, where admitd connects."""

    primary: RedisServer
    replica: RedisServer
    link: Proxy
    front: Proxy

    async def replicated(self, key: str) -> None:
        async def there() -> bool:
            return bool(self.replica.client().exists(key))

        await until(there, 10, f"{key} on the replica")

    def fail_over(self) -> None:
        """The primary dies; its replica is promoted and takes its address."""
        self.primary.kill()
        self.replica.client().execute_command("REPLICAOF", "NO", "ONE")  # type: ignore[no-untyped-call]
        self.front.retarget(self.replica.port)
        self.front.cut()


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    primary = RedisServer(None, "--repl-diskless-sync-delay", "0").start()
    link = Proxy(primary.port)
    replica = RedisServer(None, "--replicaof", "127.0.0.1", str(link.port)).start()
    front = Proxy(primary.port)

    async def linked() -> bool:
        return bool(replica.client().info("replication").get("master_link_status") == "up")

    await until(linked, 10, "the replica to sync")
    yield Pair(primary, replica, link, front)
    for proxy in (front, link):
        proxy.close()
    for server in (replica, primary):
        server.stop()


def config(pair: Pair, **backend: Any) -> dict[str, Any]:
    return {
        "backend": {
            "kind": "redis",
            "url": f"redis://127.0.0.1:{pair.front.port}/0",
            "key_prefix": "fo",
            **backend,
        },
        "lease": {"ttl": TTL},
        "pools": [{"name": "p", "max_concurrency": 2, "tokens_per_minute": 600}],
    }


async def lose_one_lease(h: Harness, pair: Pair) -> tuple[str, str]:
    """Two leases fill the pool; the second never reaches the replica. Then the failover."""
    kept = (await h.acquire(input_tokens=10)).lease_id
    await pair.replicated(f"{{fo}}:{codec.LEASE}:{kept}")
    pair.link.pause()
    lost = (await h.acquire(input_tokens=10)).lease_id
    pair.fail_over()
    assert not pair.replica.client().exists(f"{{fo}}:{codec.LEASE}:{lost}")
    return kept, lost


@pytest.mark.redis
async def test_after_a_lossy_failover_nothing_is_granted_beyond_what_is_proven_free(
    pair: Pair,
) -> None:
    h = await start_harness(config(pair))
    try:
        kept, lost = await lose_one_lease(h, pair)
        # The new primary knows one lease of two: without learning it would grant a slot the
        # lost lease's caller still holds. Every concurrency limit counts as full instead,
        # until one lease TTL has passed; the hint says when.
        refused = await h.fail(h.acquire(input_tokens=10))
        assert refused.reason == "CONCURRENCY_LIMIT"
        assert refused.retry_after == pytest.approx(TTL, abs=1)
        assert h.engine.backend.watch.changes == 1
        assert (await h.pool("p")).concurrency.value == 2
        # The lost lease's holder is told so, distinctly; the known one settles as usual.
        for call in (h.release(lost), h.renew(lost)):
            gone = await h.fail(call)
            assert (gone.code, gone.reason) == (grpc.StatusCode.NOT_FOUND, "LEASE_LOST")
        assert not (await h.release(kept)).already_released
        # A release of a lease granted before the change proves nothing: it may be a retry
        # of one the old primary had settled, whose slot went to a lost lease.
        assert (await h.fail(h.acquire(input_tokens=10))).reason == "CONCURRENCY_LIMIT"
        waiter = h.acquire_later(input_tokens=10, wait_timeout=TTL + 10)
        await h.until_queued("p", 1)
        # The token bucket started empty (the lost lease's reservation may have emptied it),
        # and has refilled meanwhile; after one TTL the waiter is served and leases known
        # again after that are NOT_FOUND as ever.
        await h.advance(TTL)
        granted = await waiter
        assert granted.reserved_tokens == 10
        assert (await h.fail(h.release(lost))).reason == ""
    finally:
        await h.close()


@pytest.mark.redis
async def test_without_learning_the_new_primary_is_trusted_at_once(pair: Pair) -> None:
    """``backend.learning: false``: the lost lease's slot is granted again at once (what
    learning prevents); its holder still hears LEASE_LOST."""
    h = await start_harness(config(pair, learning=False))
    try:
        _, lost = await lose_one_lease(h, pair)
        assert (await h.acquire(input_tokens=10)).reserved_tokens == 10
        assert (await h.fail(h.release(lost))).reason == "LEASE_LOST"
    finally:
        await h.close()


@pytest.mark.redis
async def test_a_new_store_and_a_reconnect_to_the_same_primary_are_no_change(pair: Pair) -> None:
    h = await start_harness(config(pair))
    try:
        lease = await h.acquire(input_tokens=10)
        pair.front.cut()  # the same primary again: nothing was lost
        assert (await h.acquire(input_tokens=10)).reserved_tokens == 10
        assert not (await h.release(lease.lease_id)).already_released
        assert h.engine.backend.watch.changes == 0
    finally:
        await h.close()
