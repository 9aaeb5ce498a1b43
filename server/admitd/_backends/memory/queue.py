"""The memory backend's waiters: each pool's fair queue (``fairqueue.py``), each waiter's
ticket, and how many each tenant has queued.

Its twin for Redis is the bookkeeping half of ``_backends/redis/lua/_lib5_queue.lua`` (a
sorted set per pool and priority class, a hash per waiter); the dispatch pass over it is
``dispatch.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from ..._model import MAX_EXACT_POSITION, QueueFull, QueueSpot, Ticket
from .fairqueue import Entry, FairQueue


@dataclass(slots=True)
class Waiter:
    ticket: Ticket
    entry: Entry


class Queues:
    """``aging`` is the queue's anti-starvation step (policy input)."""

    def __init__(self, aging: float) -> None:
        self.aging = aging
        self._pools: dict[str, FairQueue] = {}
        self._waiters: dict[str, Waiter] = {}
        self._by_tenant: dict[str, int] = {}

    def __contains__(self, lease_id: str) -> bool:
        return lease_id in self._waiters

    def get(self, lease_id: str) -> Waiter | None:
        return self._waiters.get(lease_id)

    def ticket(self, lease_id: str) -> Ticket:
        return self._waiters[lease_id].ticket

    def holds(self, pool: str) -> bool:
        """Whether ``pool`` has waiters."""
        return pool in self._pools

    def pools(self) -> list[str]:
        """The pools with waiters."""
        return list(self._pools)

    def push(self, ticket: Ticket, now: float) -> None:
        queue = self._pools.setdefault(ticket.pool, FairQueue())
        entry = queue.push(ticket.lease_id, ticket.tenant, ticket.priority, ticket.cost, now)
        self._waiters[ticket.lease_id] = Waiter(ticket, entry)
        self._by_tenant[ticket.tenant] = self._by_tenant.get(ticket.tenant, 0) + 1

    def remove(self, lease_id: str, *, served: bool) -> Ticket:
        """Take a waiter out (``served``: it was granted) and return its ticket."""
        waiter = self._waiters.pop(lease_id)
        queue = self._pools[waiter.ticket.pool]
        queue.remove(waiter.entry, served=served)
        if not len(queue):
            del self._pools[waiter.ticket.pool]
        tenant = waiter.ticket.tenant
        self._by_tenant[tenant] -= 1
        if not self._by_tenant[tenant]:
            del self._by_tenant[tenant]
        return waiter.ticket

    def credit(self, ticket: Ticket, refunded_tokens: int) -> None:
        """A lease of ``ticket`` used ``refunded_tokens`` less than it reserved: its tenant's
        place in the pool's queue moves up by that part of its cost (VTC: fair on usage)."""
        queue = self._pools.get(ticket.pool)
        if queue is not None and refunded_tokens > 0:
            queue.credit(ticket.tenant, ticket.priority, ticket.credit(refunded_tokens))

    def ordered(self, pool: str, now: float) -> Iterator[Entry]:
        """The pool's waiters in service order. Take none out while iterating."""
        queue = self._pools.get(pool)
        return queue.ordered(now, self.aging) if queue is not None else iter(())

    def full(self, ticket: Ticket) -> QueueFull | None:
        """Whether ``ticket`` would overfill its tenant's queue or the whole queue (the
        pool's grant rate is the caller's to fill in)."""
        mine = self._by_tenant.get(ticket.tenant, 0)
        total = len(self._waiters)
        scope: Literal["global", "tenant"]
        if mine >= ticket.max_queued_tenant:
            scope, depth, limit = "tenant", mine, ticket.max_queued_tenant
        elif total >= ticket.max_queued_total:
            scope, depth, limit = "global", total, ticket.max_queued_total
        else:
            return None
        queue = self._pools.get(ticket.pool)
        pool_depth = len(queue) if queue is not None else 0
        return QueueFull(scope, depth, limit, pool_depth)

    def spot(
        self, waiter: Waiter, now: float, grants_per_second: float | None, wait_left: float
    ) -> QueueSpot:
        """Where ``waiter`` stands in its pool's queue."""
        ticket, queue = waiter.ticket, self._pools[waiter.ticket.pool]
        return QueueSpot(
            tenant=ticket.tenant,
            pool=ticket.pool,
            position=queue.position(waiter.entry, now, self.aging, MAX_EXACT_POSITION),
            depth=len(queue),
            grants_per_second=grants_per_second,
            wait_left=wait_left,
        )

    def depths(self) -> tuple[dict[str, list[int]], dict[str, int]]:
        """Waiters by pool (per priority class) and by tenant."""
        by_pool = {pool: queue.depth_by_class() for pool, queue in self._pools.items()}
        return by_pool, dict(self._by_tenant)
