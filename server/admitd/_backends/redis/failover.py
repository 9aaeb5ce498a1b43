"""Failover without over-grant: which Redis primary admitd talks to, and learning after it
changes.

Replication from a Redis primary to its replicas is asynchronous: a replica that Sentinel
promotes lacks the writes the old primary had not sent yet, among them leases whose callers
are running. Granting their slots again would run more calls than the limits allow. So
every new connection first asks the server who it is (``INFO``: ``master_replid``, which a
promotion changes, and ``run_id``, which a restart changes), before any command runs on it.
When that is not the primary recorded in the store (``<prefix>:primary``), ``failover.lua``
records the new one and begins *learning* (Doorman's answer to the same problem): for one
lease TTL every concurrency limit counts as full and every token or USD bucket starts empty,
because the new primary cannot prove any of that capacity free; a lease it does not know
answers ``LEASE_LOST`` meanwhile. The first admitd replica that connects decides; the others
find the new primary recorded, and every script reads the window from the store. Learning
ends by itself (``expire.lua`` dispatches the queues then).

A new store (no primary recorded, and this process never talked to another one) is not a
change. A Redis that restarted empty under a running admitd is: its callers still hold the
leases it forgot.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from redis.asyncio.connection import AbstractConnection

log = logging.getLogger("admitd")


class PrimaryWatch:
    """Checks each new connection's server against the primary recorded in the store.

    Args:
        base: the keys' namespace ``{prefix}``.
        source: ``failover.lua`` as loaded (prologue and library in front).
        args: the scripts' common arguments now (time, aging), as the backend sends them.
        learning: learn after a change (``backend.learning``), or only answer LEASE_LOST.
        window: how long learning lasts, seconds (the lease TTL).
    """

    def __init__(
        self,
        base: str,
        source: str,
        args: Callable[[], list[str]],
        *,
        learning: bool,
        window: float,
    ) -> None:
        self._base = base
        self._source = source
        self._args = args
        self.learning = learning
        self.window = window
        self.primary: str | None = None
        """The identity of the primary this process last talked to."""
        self.changes = 0
        """Changes of primary this process began learning for (or found begun)."""

    def saw_ttl(self, ttl: float) -> None:
        """A lease granted for ``ttl``: learning must outlast it."""
        if ttl > self.window:
            self.window = ttl

    async def on_connect(self, connection: AbstractConnection) -> None:
        """redis-py's ``redis_connect_func``: the usual handshake, then who the server is;
        a new primary is recorded (and learned) before the connection serves a command."""
        await connection.on_connect()
        await connection.send_command("INFO", "server", "replication")
        identity = identity_of(await connection.read_response())
        if identity == self.primary:
            return
        seen = "0" if self.primary is None else "1"
        learn = "1" if self.learning else "0"
        args = [*self._args(), identity, seen, repr(self.window), learn]
        await connection.send_command("EVAL", self._source, 1, self._base, *args)
        doc: dict[str, Any] = json.loads(await connection.read_response())
        if doc.get("changed"):
            self.changes += 1
            log.warning(
                "the Redis primary changed (now %s); learning for %gs: no grant beyond what"
                " it can prove free",
                identity,
                float(doc.get("learning") or 0),
            )
        self.primary = identity


def identity_of(info: Any) -> str:
    """``<master_replid>/<run_id>`` from an ``INFO server replication`` reply."""
    text = info.decode() if isinstance(info, bytes) else str(info)
    fields = dict(
        line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#")
    )
    try:
        return f"{fields['master_replid'].strip()}/{fields['run_id'].strip()}"
    except KeyError:
        raise ValueError(f"INFO names no master_replid and run_id: {text[:200]!r}") from None
