"""The backend interface (state and atomicity, no policy) and the factory of the configured
backend: ``memory/`` keeps the state in this process, ``redis/`` in Redis for many replicas.

The engine (``_engine.py`` with ``_policy.py``) decides *which* limits a call must fit, in what
order waiters are served and what a rejection says. A backend keeps the counters, leases and
queues, and performs each operation below as one atomic step, so that every limit is reserved
all-or-nothing even with many replicas (the Redis backend does each in one Lua script).

Every operation that can free capacity also runs a dispatch pass over the queues and reports
what it granted in :class:`Progress`. A grant made for a waiter is *unclaimed* until the engine
holding that waiter's RPC claims it (with several replicas that may be another process).
Cancelling a waiter whose grant is still unclaimed gives the grant back, and a grant nobody
claims within ``Ticket.claim_timeout`` is given back by :meth:`expire`. With several
replicas, each one heartbeats (:meth:`beat`); the waiters and unclaimed grants of a replica
that missed its heartbeats (it died) are dropped at once, the claim timeout being the last
resort.

A ticket with a ``dedup_key`` while a call with the same key is in flight for its tenant
(queued or leased: the *leader*) reserves nothing: the result says whom it ``follows``. When
the leader's call ends the backend records a :class:`DedupEnd` (its shared result, if it
released one with outcome OK), reports it in ``Progress.finished`` and keeps it a minute for
followers that look later (:meth:`Backend.dedup_end`); with Redis, followers on other
replicas hear of it through ``subscribe``.

A *deferred* ticket (``Enqueue``) waits in the same queue with no RPC attached: its grant stays
unclaimed until a ``GetTicket``/``WaitTicket`` claims it, and when it leaves the queue unserved
(its wait ran out, it can never fit today, its grant went unclaimed, it was cancelled) the
backend keeps a :class:`TicketEnd` for one lease TTL, so a later look can say why.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Protocol

from .._clock import Clock
from .._config import Settings
from .._model import (
    AcquireResult,
    Beat,
    DedupEnd,
    ExpireResult,
    Gate,
    LeaseRecord,
    Limit,
    Look,
    Outcome,
    Progress,
    ReleaseResult,
    Snapshot,
    Ticket,
    UsageRow,
)
from .._usage import Unreported, Usage
from .memory import MemoryBackend


class Backend(Protocol):
    async def acquire(self, ticket: Ticket, *, wait: bool) -> AcquireResult:
        """Grant now, queue (when ``wait``) or deny; atomic with the dispatch it triggers."""
        ...

    async def cancel(self, lease_id: str) -> Progress:
        """Take a waiter out of the queue, or give back its grant if it was not claimed."""
        ...

    async def claim(self, lease_id: str) -> bool:
        """The waiter's RPC takes its grant: the lease is now the caller's. False when the
        grant was no longer unclaimed (given back meanwhile): it is nobody's."""
        ...

    async def release(
        self,
        lease_id: str,
        usage: Usage | Unreported,
        tenant: str | None,
        outcome: Outcome = Outcome.OK,
        retry_after: float = 0.0,
        result: bytes | None = None,
    ) -> ReleaseResult:
        """Settle the reported ``usage``, or what the rule for none charges (the policy
        picks it); idempotent. ``outcome`` and a provider's ``retry_after`` move the pool's
        gate; a dedup leader's ``result`` (with outcome OK) goes to its followers."""
        ...

    async def renew(self, lease_id: str, extend_by: float, tenant: str | None) -> LeaseRecord:
        """Set the lease's expiry to now + ``extend_by``."""
        ...

    async def charge(self, ticket: Ticket, usage: Usage) -> None:
        """Count (input, output) ``usage`` that nobody reserved, for a call that already
        happened (a gateway reporting after the call): each of the ticket's limits goes up
        by it as a settled lease's overuse would (into debt if need be), and the ledger gets
        the tokens and price without counting a call. Nothing is checked or refused."""
        ...

    async def expire(self) -> ExpireResult:
        """Reclaim every lease past its expiry, charging its full reservation."""
        ...

    async def dispatch(self) -> Progress:
        """Grant what fits now from every queue (after a refill)."""
        ...

    async def beat(self, dead_after: float) -> Beat:
        """This replica is alive, and promises its next beat within ``dead_after`` seconds.
        Past a replica's promise its waiters leave the queue and its unclaimed grants go
        back, at once (their RPCs died with it). One process (memory) has nothing to do."""
        ...

    async def look(self, lease_id: str, *, claim: bool) -> Look:
        """Where a waiter stands, or what became of a deferred ticket; ``claim`` takes an
        unclaimed grant for the caller (GetTicket)."""
        ...

    async def snapshot(self, limits: list[Limit]) -> Snapshot:
        """Current levels and occupancy, for GetStatus."""
        ...

    async def usage(self, days: list[int]) -> list[UsageRow]:
        """The cost ledger's rows of these days (``day_number``s)."""
        ...

    async def configure(self, limits: list[Limit], gates: list[Gate]) -> None:
        """Every limit and pool gate as configured now. Checks read capacities and rates
        from here, so a config change also applies to calls already queued; a key not
        listed no longer applies."""
        ...

    async def dedup_end(self, leader: str) -> DedupEnd | None:
        """How a dedup leader's call ended, if it did in the last minute."""
        ...

    def subscribe(
        self,
        waiting: Callable[[], Collection[str]],
        deliver: Callable[[LeaseRecord], None],
        finish: Callable[[DedupEnd], None],
        failed: Callable[[Exception], None],
    ) -> None:
        """Deliver grants made elsewhere (other replicas) for the waiters this process holds,
        and the ends of dedup leaders its followers wait for (``waiting`` lists those as
        ``end:<leader>``). ``failed`` hears each time the listener lost the store (it
        retries by itself)."""
        ...

    async def ping(self) -> None:
        """Raise :class:`~admitd._backends.errors.StoreUnreachable` unless the store answers."""
        ...

    async def close(self) -> None: ...


def make_backend(settings: Settings, clock: Clock, *, test_clock: bool = False) -> Backend:
    """The configured backend. Redis reads its own TIME unless a test injects its clock."""
    config = settings.backend
    if config.kind == "memory":
        return MemoryBackend(clock, aging=settings.queue.aging)
    from .redis import Lanes, RedisBackend, connect  # redis-py only when configured

    return RedisBackend(
        connect(config),
        key_prefix=config.key_prefix,
        aging=settings.queue.aging,
        clock=clock if test_clock else None,
        lanes=Lanes(config.pool_size, config.pool_timeout),
        learning=config.learning,
        window=settings.lease.ttl,
    )
