"""The memory backend's dispatch pass: grant a pool's waiters in fair order while they fit.

Its twin for Redis is ``dispatch_pool`` in ``_backends/redis/lua/_lib5_queue.lua``. Every
operation of ``backend.py`` that can free capacity runs it over every pool, and an Acquire
over its own pool, watching its own ticket. The pass decides who is served and who leaves;
the backend makes each grant and records each end (the callables it is given), as those touch
the leases, the idempotency keys and the dedup leaders.
"""

from __future__ import annotations

from collections.abc import Callable

from ..._model import MAX_EXAMINED, Denial, EndKind, Kind, LeaseRecord, Progress, Scope, Ticket
from .counters import Counters
from .fairqueue import Entry
from .queue import Queues

Grant = Callable[[Ticket, float, float, str, bool], LeaseRecord]
"""Reserve a waiter's limits and make its lease: ``(ticket, now, queued_for, shadowed,
claimed)``; ``claimed`` for the watched ticket, whose caller takes its grant at once (any
other grant waits to be claimed by the replica holding its RPC)."""
End = Callable[[Ticket, EndKind, float, Denial | None], None]
"""A waiter left its queue unserved: ``(ticket, why, now, denial)``."""


class Dispatch:
    """The dispatch pass over the memory backend's ``queues`` and ``counters``."""

    def __init__(self, queues: Queues, counters: Counters, grant: Grant, end: End) -> None:
        self._queues = queues
        self._counters = counters
        self._grant = grant
        self._end = end

    def pool(self, pool: str, now: float, progress: Progress, watch: str = "") -> Denial | None:
        """Grant waiters of ``pool`` in fair order until a pool-wide limit blocks the head.

        A waiter blocked by its own tenant's limit is passed over (with the rest of that
        tenant's waiters, keeping it FIFO) so one tenant cannot hold up the others. Returns
        the denial of the ``watch`` ticket when it was examined and not granted.
        """
        skipped: dict[str, Denial] = {}  # tenant -> the limit holding its waiters back
        served: list[Entry] = []
        gone: list[Entry] = []
        never: list[tuple[Entry, Denial]] = []
        watched: Denial | None = None
        for examined, entry in enumerate(self._queues.ordered(pool, now)):
            if examined >= MAX_EXAMINED:
                break
            if entry.tenant in skipped:
                if entry.lease_id == watch:
                    watched = skipped[entry.tenant]  # behind its tenant's held waiter
                continue
            ticket = self._queues.ticket(entry.lease_id)
            if entry.lease_id != watch and now > entry.enqueued_at + ticket.wait:
                gone.append(entry)  # its RPC has ended (its replica may have died)
                continue
            shut = self._counters.shut(pool, now)
            if shut is not None and shut.cause == "open":
                never.append((entry, shut))  # refused at once, queued calls too
                watched = shut if entry.lease_id == watch else watched
                continue
            if shut is not None:
                progress.blocked[pool] = shut
                watched = shut if entry.lease_id == watch else watched
                break
            denial, shadowed = self._counters.check(ticket, now)
            if denial is None:
                queued_for = now - entry.enqueued_at
                claimed = entry.lease_id == watch
                progress.grants.append(self._grant(ticket, now, queued_for, shadowed, claimed))
                served.append(entry)
                continue
            if entry.lease_id == watch:
                watched = denial
            if denial.limit.kind is Kind.DAILY:
                never.append((entry, denial))  # cannot fit before the day turns
            elif denial.limit.scope is Scope.TENANT:
                skipped[entry.tenant] = denial
                progress.passed_over.append(denial)
            else:
                progress.blocked[pool] = denial
                break
        queues = self._queues
        for entry in served:
            queues.remove(entry.lease_id, served=True)
        for entry, denial in never:
            self._end(queues.remove(entry.lease_id, served=False), "rejected", now, denial)
            progress.rejections.append((entry.lease_id, denial))
        for entry in gone:
            self._end(queues.remove(entry.lease_id, served=False), "timeout", now, None)
        return watched
