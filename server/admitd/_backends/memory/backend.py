"""The in-memory backend: one process, every operation atomic because none awaits midway.

Its twin for Redis is ``_backends/redis/`` (one Lua script per operation, the library
``lua/_lib*.lua`` in front); the conformance suite runs every scenario against both. The
state lives in small pieces beside this file: limit levels and pool gates
(``counters.py``, ``gates.py``), waiters (``queue.py``, ``fairqueue.py``), leases, dedup
leaders and the cost ledger (``leases.py``), expired leases (``tombstones.py``), grant rates
(``rate.py``); the dispatch pass that grants waiters is ``dispatch.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import replace

from ..._clock import Clock
from ..._model import (
    LEDGER_DAYS,
    AcquireResult,
    Beat,
    DedupEnd,
    Denial,
    EndKind,
    ExpireResult,
    Gate,
    Kind,
    LeaseRecord,
    Limit,
    Look,
    Outcome,
    Progress,
    ReleaseResult,
    Settlement,
    Snapshot,
    Ticket,
    TicketEnd,
    UsageRow,
)
from ..._usage import Unreported, Usage
from ..errors import NotOwner
from .counters import Counters
from .dispatch import Dispatch
from .expiring import Expiring
from .leases import Dedup, Idempotency, Lease, Leases, Ledger, Unclaimed
from .queue import Queues
from .rate import GrantRate
from .tombstones import Tombstones


class MemoryBackend:
    """State in this process. ``aging`` is the queue's anti-starvation step (policy input)."""

    def __init__(self, clock: Clock, *, aging: float) -> None:
        self._clock = clock
        self._leases = Leases()
        self._counters = Counters(self._leases.ends)
        self._released: Expiring[str, Settlement] = Expiring()  # for retried releases
        self._idempotency = Idempotency()
        self._queues = Queues(aging)
        self._expired: list[LeaseRecord] = []  # reaped (maybe lazily), not yet reported
        self._unclaimed = Unclaimed()
        self._ended: Expiring[str, TicketEnd] = Expiring()  # why deferred tickets ended
        self._rates: dict[str, GrantRate] = {}
        self._dedup = Dedup()
        self._ledger = Ledger()
        self._tombstones = Tombstones(self._counters, self._ledger)  # expired leases, one TTL
        self._dispatch = Dispatch(self._queues, self._counters, self._grant, self._end)

    # -- operations -----------------------------------------------------------------------

    async def acquire(self, ticket: Ticket, *, wait: bool) -> AcquireResult:
        now = self._tick()
        replay = self._replay(ticket, now)
        if replay is not None:
            return replay
        if ticket.dedup_key:
            leader = self._dedup.leader(ticket)
            if leader is not None:
                return AcquireResult(follows=leader, progress=self._progress())
        granted = self._at_once(ticket, now, wait=wait)
        if granted is not None:
            return granted
        daily, _ = self._counters.check(ticket, now, kinds=(Kind.DAILY,))
        if daily is not None:
            return AcquireResult(denial=self._counters.refusal(ticket, now, daily))
        shut = self._counters.shut(ticket.pool, now)
        if shut is not None and shut.cause == "open":  # refused at once, never queued
            return AcquireResult(denial=self._counters.refusal(ticket, now, shut))
        if wait:
            full = self._queues.full(ticket)
            if full is not None:
                rate = self._grants_per_second(ticket.pool, now)
                return AcquireResult(denial=replace(full, grants_per_second=rate))
        self._queues.push(ticket, now)
        if ticket.idempotency_key:
            self._idempotency.remember(ticket, now)
        if ticket.dedup_key:
            self._dedup.lead(ticket)
        progress = Progress()
        own_denial = self._dispatch.pool(ticket.pool, now, progress, watch=ticket.lease_id)
        progress.finished = self._dedup.take()
        result = AcquireResult(waiting_on=ticket.lease_id, progress=progress)
        for i, lease in enumerate(progress.grants):
            if lease.lease_id == ticket.lease_id:
                del progress.grants[i]
                result.lease = lease
                return result
        if wait:
            result.queued = True
            return result
        self._queues.remove(ticket.lease_id, served=False)
        if ticket.idempotency_key:
            self._idempotency.forget(ticket)
        if ticket.dedup_key:
            self._dedup.forget(ticket)
        held_by = own_denial or progress.blocked.get(ticket.pool)
        result.denial = self._counters.refusal(ticket, now, held_by)
        return result

    async def cancel(self, lease_id: str) -> Progress:
        now = self._tick()
        if lease_id in self._queues:
            ticket = self._queues.remove(lease_id, served=False)
            if ticket.idempotency_key:
                self._idempotency.forget(ticket)
            self._end(ticket, "cancelled", now)
            # It may have been the head that held its pool back: who is behind may fit now.
            return self._dispatch_all(now)
        elif self._unclaimed.claim(lease_id):
            self._give_back(lease_id, "cancelled", now)  # granted while its RPC gave up
            return self._dispatch_all(now)
        return self._progress()

    async def claim(self, lease_id: str) -> bool:
        return self._unclaimed.claim(lease_id)

    async def release(
        self,
        lease_id: str,
        usage: Usage | Unreported,
        tenant: str | None,
        outcome: Outcome = Outcome.OK,
        retry_after: float = 0.0,
        result: bytes | None = None,
    ) -> ReleaseResult:
        now = self._tick()
        settlement = self._released.get(lease_id, now)
        if settlement is not None:
            if tenant and settlement.lease.tenant != tenant:
                raise NotOwner(lease_id)
            return ReleaseResult(replace(settlement, already_released=True))
        if lease_id not in self._leases:
            self._tombstones.release(lease_id, usage, tenant, now)
        lease = self._leases.live(lease_id, tenant)
        t = lease.ticket
        used, charged_usd = t.settle(usage)
        charged_tokens = used.tokens
        self._leases.held(lease, now)
        self._settle(lease, charged_tokens - t.tokens, charged_usd - t.nano_usd, now)
        self._ledger.charge(self._counters.day_number, t, used, charged_usd)
        self._counters.report(t.pool, outcome, retry_after, lease.probe, now)
        self._dedup.finish(t, result if outcome is Outcome.OK else None, now)
        settlement = Settlement(
            lease=lease.record(now),
            charged_tokens=charged_tokens,
            refunded_tokens=max(0, t.tokens - charged_tokens),
            charged_nano_usd=charged_usd,
            already_released=False,
        )
        self._queues.credit(t, settlement.refunded_tokens)
        # Kept for one TTL so that a retried Release gets the same answer.
        self._released.put(lease_id, settlement, now + t.ttl)
        return ReleaseResult(settlement, self._dispatch_all(now))

    async def charge(self, ticket: Ticket, usage: Usage) -> None:
        now = self._tick()
        nano_usd = ticket.prices().of(usage)
        self._counters.give(ticket, self._counters.day, usage.tokens, nano_usd, False, now)
        self._ledger.charge(self._counters.day_number, ticket, usage, nano_usd, calls=0)

    async def renew(self, lease_id: str, extend_by: float, tenant: str | None) -> LeaseRecord:
        now = self._tick()
        if lease_id not in self._leases:
            self._tombstones.renew(lease_id, tenant, now)
        lease = self._leases.live(lease_id, tenant)
        self._leases.extend(lease, now + extend_by)
        return lease.record(now)

    async def expire(self) -> ExpireResult:
        now = self._tick()
        given_back = False
        for lease_id in self._unclaimed.due(now):
            self._give_back(lease_id, "unclaimed", now)
            given_back = True
        expired, self._expired = self._expired, []
        self._released.prune(now)
        progress = self._dispatch_all(now) if expired or given_back else self._progress()
        # The reaper comes back at the next lease expiry or unclaimed grant's deadline.
        deadlines = [self._unclaimed.next_deadline(), self._leases.next_expiry()]
        due = [deadline for deadline in deadlines if deadline is not None]
        return ExpireResult(expired, progress, min(due) - now if due else None)

    async def beat(self, dead_after: float) -> Beat:
        return Beat(self._progress())  # one process: its waiters live and die with it

    async def dispatch(self) -> Progress:
        return self._dispatch_all(self._tick())

    async def look(self, lease_id: str, *, claim: bool) -> Look:
        now = self._tick()
        waiter = self._queues.get(lease_id)
        if waiter is not None:
            ticket = waiter.ticket
            wait_left = waiter.entry.enqueued_at + ticket.wait - now
            if wait_left >= 0:
                rate = self._grants_per_second(ticket.pool, now)
                return Look(queued=self._queues.spot(waiter, now, rate, wait_left))
            self._queues.remove(lease_id, served=False)  # its wait ran out unseen
            self._end(ticket, "timeout", now)
        lease = self._leases.get(lease_id)
        if lease is not None:
            unclaimed = lease_id in self._unclaimed
            if claim:
                self._unclaimed.claim(lease_id)
            return Look(lease=lease.record(now), claimed=not unclaimed)
        return Look(ended=self._ended.get(lease_id, now))

    async def snapshot(self, limits: list[Limit]) -> Snapshot:
        now = self._tick()
        levels = {limit.key: self._counters.level(limit, now) for limit in limits}
        in_flight_by_pool, in_flight_by_tenant = self._leases.in_flight()
        queued_by_pool, queued_by_tenant = self._queues.depths()
        return Snapshot(
            levels=levels,
            in_flight_by_pool=in_flight_by_pool,
            in_flight_by_tenant=in_flight_by_tenant,
            queued_by_pool=queued_by_pool,
            queued_by_tenant=queued_by_tenant,
            gates=self._counters.gates(now),
        )

    async def dedup_end(self, leader: str) -> DedupEnd | None:
        return self._dedup.end(leader, self._tick())

    async def usage(self, days: list[int]) -> list[UsageRow]:
        return self._ledger.rows(days)

    async def configure(self, limits: list[Limit], gates: list[Gate]) -> None:
        self._counters.configure(limits, gates)

    def subscribe(
        self,
        waiting: Callable[[], Collection[str]],
        deliver: Callable[[LeaseRecord], None],
        finish: Callable[[DedupEnd], None],
        failed: Callable[[Exception], None],
    ) -> None:
        """Nothing to do: every grant is made in this process and returned by the call."""

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None

    # -- state ----------------------------------------------------------------------------

    def _tick(self) -> float:
        """Read the clock once per operation; start a new UTC day's counters when it turns."""
        now = self._clock.now()
        wall = self._clock.wall()
        if self._counters.turn_day(wall):
            self._ledger.keep_after(self._counters.day_number - LEDGER_DAYS)
        self._reap(now)
        return now

    def _grant(
        self, ticket: Ticket, now: float, queued_for: float, shadowed: str, claimed: bool
    ) -> LeaseRecord:
        """Reserve a waiter's limits and make its lease (``dispatch.Grant``)."""
        probe = self._counters.take(ticket, now)
        expires = now + ticket.ttl
        lease = Lease(ticket, self._counters.day, now, expires, queued_for, shadowed, probe)
        self._leases.add(lease)
        rate = self._rates.get(ticket.pool)
        if rate is None:  # not setdefault: that made a GrantRate on every grant
            rate = self._rates[ticket.pool] = GrantRate(now)
        rate.add(now)
        if ticket.idempotency_key:
            self._idempotency.remember(ticket, now)
        if not claimed:
            self._unclaimed.add(ticket.lease_id, now + ticket.claim_timeout)
        return lease.record(now)

    def _settle(self, lease: Lease, token_delta: float, usd_delta: float, now: float) -> None:
        """End a lease: free its slots and move token/USD counters by charged - reserved."""
        self._leases.remove(lease)
        self._counters.give(lease.ticket, lease.day, token_delta, usd_delta, lease.probe, now)

    def _give_back(self, lease_id: str, why: EndKind, now: float) -> None:
        """End a grant nobody used: everything it reserved is refunded."""
        lease = self._leases.get(lease_id)
        if lease is not None:
            t = lease.ticket
            self._end(t, why, now)
            self._settle(lease, -t.tokens, -t.nano_usd, now)

    def _reap(self, now: float) -> None:
        """Every operation reaps first, so no expired lease ever holds capacity; the next
        :meth:`expire` reports them (and hands the freed capacity to waiters)."""
        for lease in self._leases.due(now):
            self._expired.append(lease.record(now))
            self._settle(lease, 0.0, 0.0, now)  # the full reservation stays charged
            t = lease.ticket
            used, charged_usd = t.settle(Unreported.RESERVATION)
            self._ledger.charge(self._counters.day_number, t, used, charged_usd)
            self._tombstones.bury(lease, self._counters.day_number, now)
            self._dedup.finish(t, None, now)

    def _end(self, ticket: Ticket, kind: EndKind, now: float, denial: Denial | None = None) -> None:
        """A waiter or grant left unserved: remember why for a deferred ticket (one lease
        TTL), and tell the dedup followers of a leader to retry."""
        if ticket.deferred:
            end = TicketEnd(kind, ticket.tenant, denial)
            self._ended.put(ticket.lease_id, end, now + ticket.ttl)
        self._dedup.finish(ticket, None, now)

    def _progress(self) -> Progress:
        """An operation's Progress when it dispatched nothing (finished dedup leaders)."""
        return Progress(finished=self._dedup.take())

    def _grants_per_second(self, pool: str, now: float) -> float | None:
        rate = self._rates.get(pool)
        return rate.per_second(now) if rate is not None else None

    def _replay(self, ticket: Ticket, now: float) -> AcquireResult | None:
        ref = self._idempotency.known(ticket, now)
        if ref is None:
            return None
        if ref in self._queues:
            return AcquireResult(queued=True, replayed=True, waiting_on=ref)
        lease = self._leases.get(ref)
        if lease is not None:
            if not ticket.deferred:  # this retry's caller has the grant now: not unclaimed
                self._unclaimed.claim(ref)
            return AcquireResult(lease=lease.record(now), replayed=True)
        done = self._released.get(ref, now)
        if done is not None:
            return AcquireResult(lease=replace(done.lease, expires_in=0.0), replayed=True)
        return None  # the lease expired: a retry may reserve again

    def _at_once(self, ticket: Ticket, now: float, *, wait: bool) -> AcquireResult | None:
        """The grant of a ticket that fits now in a pool where nobody waits (None otherwise):
        what queueing it, dispatching its pool and finding it served first does, without
        the fair queue. A pool's queue holding one waiter keeps no state once it is served
        (an empty queue is dropped), so the fair order is the same either way."""
        if self._queues.holds(ticket.pool) or (wait and self._queues.full(ticket) is not None):
            return None  # waiters first; a full queue refuses even a call that would fit
        if self._counters.shut(ticket.pool, now) is not None:
            return None
        denial, shadowed = self._counters.check(ticket, now)
        if denial is not None:
            return None
        if ticket.dedup_key:
            self._dedup.lead(ticket)
        lease = self._grant(ticket, now, 0.0, shadowed, True)
        return AcquireResult(lease=lease, waiting_on=ticket.lease_id, progress=self._progress())

    def _dispatch_all(self, now: float) -> Progress:
        progress = Progress()
        for pool in self._queues.pools():
            self._dispatch.pool(pool, now, progress)
        progress.finished = self._dedup.take()
        return progress
