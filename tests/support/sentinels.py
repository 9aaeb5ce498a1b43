"""The cast of the Sentinel failover tests, started and ready: a Redis primary, one replica
fed through a loopback :class:`~support.proxy.Proxy` (pause it to lose writes), and three
Sentinels with quorum 2 that know the replica and each other."""

from __future__ import annotations

from support.polling import until_sync
from support.proxy import Proxy
from support.redis_server import RedisServer, Sentinel


class SentinelGroup:
    """Blocks until the replica has synced and every Sentinel could fail over (async tests
    start one with ``asyncio.to_thread``); :meth:`stop` ends every process."""

    def __init__(self) -> None:
        self.primary = RedisServer(None, "--repl-diskless-sync-delay", "0").start()
        self.link = Proxy(self.primary.port)
        self.replica = RedisServer(None, "--replicaof", "127.0.0.1", str(self.link.port)).start()
        self.sentinels = [Sentinel(self.primary.port, quorum=2).start() for _ in range(3)]
        try:
            until_sync(
                self._ready, 30, "the replica synced, the Sentinels knowing it and each other"
            )
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        linked = self.replica.client().info("replication").get("master_link_status") == "up"
        return linked and all(s.sees(replicas=1, sentinels=2) for s in self.sentinels)

    @property
    def addresses(self) -> list[str]:
        """The Sentinels, as admitd's ``backend.sentinels`` lists them."""
        return [f"127.0.0.1:{s.port}" for s in self.sentinels]

    def stop(self) -> None:
        self.link.close()
        for server in (*self.sentinels, self.replica, self.primary):
            server.stop()
