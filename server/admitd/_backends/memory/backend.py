"""The in-memory backend: one process, every operation atomic because none awaits midway."""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from typing import Literal

from ..._clock import Clock
from ..._model import (
    DEDUP_KEEP,
    LEDGER_DAYS,
    MAX_EXACT_POSITION,
    AcquireResult,
    DedupEnd,
    Denial,
    EndKind,
    ExpireResult,
    FingerprintMismatch,
    Gate,
    Kind,
    LeaseGone,
    LeaseRecord,
    Limit,
    Look,
    NotOwner,
    Outcome,
    Progress,
    QueueFull,
    QueueSpot,
    ReleaseResult,
    Scope,
    Settlement,
    Snapshot,
    Ticket,
    TicketEnd,
    UsageRow,
    day_number,
)
from .counters import Counters
from .expiring import Expiring
from .fairqueue import Entry, FairQueue
from .rate import GrantRate

# A dispatch pass looks at most this many waiters per pool, so that one tenant with a long
# queue blocked by its own limits cannot make every release slow.
MAX_EXAMINED_PER_PASS = 1024


@dataclass(slots=True)
class _Lease:
    ticket: Ticket
    day: str
    granted_at: float
    expires_at: float
    queued_for: float
    shadowed: str = ""
    probe: bool = False  # went through a half-open circuit as a probe

    def record(self, now: float) -> LeaseRecord:
        t = self.ticket
        return LeaseRecord(
            lease_id=t.lease_id,
            tenant=t.tenant,
            pool=t.pool,
            input_tokens=t.input_tokens,
            max_output_tokens=t.max_output_tokens,
            nano_usd=t.nano_usd,
            expires_in=self.expires_at - now,
            queued_for=self.queued_for,
            held_for=now - self.granted_at,
            shadowed=self.shadowed,
        )


@dataclass(slots=True)
class _Waiter:
    ticket: Ticket
    entry: Entry


class MemoryBackend:
    """State in this process. ``aging`` is the queue's anti-starvation step (policy input)."""

    def __init__(self, clock: Clock, *, aging: float) -> None:
        self._clock = clock
        self._aging = aging
        self._counters = Counters()
        self._day_number = 0
        self._leases: dict[str, _Lease] = {}
        self._expiry: list[tuple[float, str]] = []  # heap; stale entries skipped
        self._released: Expiring[str, Settlement] = Expiring()  # for retried releases
        # (tenant, idempotency key) -> (the waiter or lease it names, its fingerprint)
        self._idempotency: Expiring[tuple[str, str], tuple[str, str]] = Expiring()
        self._queues: dict[str, FairQueue] = {}
        self._waiters: dict[str, _Waiter] = {}
        self._queued_by_tenant: dict[str, int] = {}
        self._expired: list[LeaseRecord] = []  # reaped (maybe lazily), not yet reported
        self._unclaimed: OrderedDict[str, float] = OrderedDict()  # granted waiter -> give up at
        self._ended: Expiring[str, TicketEnd] = Expiring()  # why deferred tickets ended
        self._rates: dict[str, GrantRate] = {}
        self._dedup: dict[tuple[str, str], str] = {}  # (tenant, dedup key) -> leader id
        self._dedup_ends: Expiring[str, DedupEnd] = Expiring()
        self._finished: list[DedupEnd] = []  # dedup ends not yet reported in a Progress
        # The cost ledger: (day_number, tenant, pool) -> [calls, input, output, nano-USD].
        self._ledger: dict[tuple[int, str, str], list[int]] = {}

    # -- operations -----------------------------------------------------------------------

    async def acquire(self, ticket: Ticket, *, wait: bool) -> AcquireResult:
        now = self._tick()
        replay = self._replay(ticket, now)
        if replay is not None:
            return replay
        if ticket.dedup_key:
            leader = self._dedup.get((ticket.tenant, ticket.dedup_key))
            if leader is not None:
                return AcquireResult(follows=leader, progress=self._progress())
        daily, _ = self._counters.check(ticket, now, kinds=(Kind.DAILY,))
        if daily is not None:
            return AcquireResult(denial=daily)
        shut = self._counters.shut(ticket.pool, now)
        if shut is not None and shut.cause == "open":
            return AcquireResult(denial=shut)  # refused at once, never queued
        if wait:
            full = self._queue_full(ticket, now)
            if full is not None:
                return AcquireResult(denial=full)
        queue = self._queues.setdefault(ticket.pool, FairQueue())
        entry = queue.push(ticket.lease_id, ticket.tenant, ticket.priority, ticket.cost, now)
        self._waiters[ticket.lease_id] = _Waiter(ticket, entry)
        self._queued_by_tenant[ticket.tenant] = self._queued_by_tenant.get(ticket.tenant, 0) + 1
        if ticket.idempotency_key:
            self._remember_key(ticket, ticket.lease_id, now)
        if ticket.dedup_key:
            self._dedup[(ticket.tenant, ticket.dedup_key)] = ticket.lease_id
        progress = Progress()
        own_denial = self._dispatch_pool(ticket.pool, now, progress, watch=ticket.lease_id)
        progress.finished = self._take_finished()
        result = AcquireResult(waiting_on=ticket.lease_id, progress=progress)
        for i, lease in enumerate(progress.grants):
            if lease.lease_id == ticket.lease_id:
                del progress.grants[i]
                result.lease = lease
                return result
        if wait:
            result.queued = True
            return result
        self._unqueue(ticket.lease_id, served=False)
        if ticket.idempotency_key:
            self._idempotency.pop((ticket.tenant, ticket.idempotency_key))
        if ticket.dedup_key:  # refused in the same step: nobody can have joined it
            self._dedup.pop((ticket.tenant, ticket.dedup_key), None)
        result.denial = own_denial or progress.blocked.get(ticket.pool)
        return result

    async def cancel(self, lease_id: str) -> Progress:
        now = self._tick()
        if lease_id in self._waiters:
            ticket = self._unqueue(lease_id, served=False)
            if ticket.idempotency_key:
                self._idempotency.pop((ticket.tenant, ticket.idempotency_key))
            self._end(ticket, "cancelled", now)
            # It may have been the head that held its pool back: who is behind may fit now.
            return self._dispatch_all(now)
        elif self._unclaimed.pop(lease_id, None) is not None:
            self._give_back(lease_id, "cancelled", now)  # granted while its RPC gave up
            return self._dispatch_all(now)
        return self._progress()

    async def claim(self, lease_id: str) -> None:
        self._unclaimed.pop(lease_id, None)

    async def release(
        self,
        lease_id: str,
        usage: tuple[int, int] | None,
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
        lease = self._live_lease(lease_id, tenant, now)
        t = lease.ticket
        used = usage if usage is not None else (t.input_tokens, t.max_output_tokens)
        charged_tokens, charged_usd = sum(used), t.price_of(*used)
        if usage is None:
            charged_usd = t.nano_usd  # the reservation's own price, to the nano-dollar
        self._settle(lease, charged_tokens - t.tokens, charged_usd - t.nano_usd, now)
        self._charge(t, used, charged_usd)
        self._counters.report(t.pool, outcome, retry_after, lease.probe, now)
        self._finish(t, result if outcome is Outcome.OK else None, now)
        settlement = Settlement(
            lease=lease.record(now),
            charged_tokens=charged_tokens,
            refunded_tokens=max(0, t.tokens - charged_tokens),
            charged_nano_usd=charged_usd,
            already_released=False,
        )
        # Kept for one TTL so that a retried Release gets the same answer.
        self._released.put(lease_id, settlement, now + t.ttl)
        return ReleaseResult(settlement, self._dispatch_all(now))

    async def renew(self, lease_id: str, extend_by: float, tenant: str | None) -> LeaseRecord:
        now = self._tick()
        lease = self._live_lease(lease_id, tenant, now)
        lease.expires_at = now + extend_by
        heapq.heappush(self._expiry, (lease.expires_at, lease_id))
        return lease.record(now)

    async def expire(self) -> ExpireResult:
        now = self._tick()
        given_back = False
        while self._unclaimed:
            lease_id, give_up_at = next(iter(self._unclaimed.items()))
            if give_up_at > now:
                break
            del self._unclaimed[lease_id]
            self._give_back(lease_id, "unclaimed", now)
            given_back = True
        expired, self._expired = self._expired, []
        self._released.prune(now)
        progress = self._dispatch_all(now) if expired or given_back else self._progress()
        # The reaper comes back at the next lease expiry or unclaimed grant's deadline.
        deadlines = [give_up_at for give_up_at in self._unclaimed.values()][:1]
        while self._expiry:
            at, lease_id = self._expiry[0]
            lease = self._leases.get(lease_id)
            if lease is not None and lease.expires_at == at:
                deadlines.append(at)
                break
            heapq.heappop(self._expiry)  # released or renewed since
        return ExpireResult(expired, progress, min(deadlines) - now if deadlines else None)

    async def dispatch(self) -> Progress:
        return self._dispatch_all(self._tick())

    async def look(self, lease_id: str, *, claim: bool) -> Look:
        now = self._tick()
        waiter = self._waiters.get(lease_id)
        if waiter is not None:
            ticket, entry = waiter.ticket, waiter.entry
            wait_left = entry.enqueued_at + ticket.wait - now
            if wait_left >= 0:
                queue = self._queues[ticket.pool]
                rate = self._rates.get(ticket.pool)
                return Look(
                    queued=QueueSpot(
                        tenant=ticket.tenant,
                        pool=ticket.pool,
                        position=queue.position(entry, now, self._aging, MAX_EXACT_POSITION),
                        depth=len(queue),
                        grants_per_second=rate.per_second(now) if rate else None,
                        wait_left=wait_left,
                    )
                )
            self._unqueue(lease_id, served=False)  # its wait ran out; a dispatch had not seen
            self._end(ticket, "timeout", now)
        lease = self._leases.get(lease_id)
        if lease is not None:
            unclaimed = lease_id in self._unclaimed
            if claim:
                self._unclaimed.pop(lease_id, None)
            return Look(lease=lease.record(now), claimed=not unclaimed)
        return Look(ended=self._ended.get(lease_id, now))

    async def snapshot(self, limits: list[Limit]) -> Snapshot:
        now = self._tick()
        levels = {limit.key: self._counters.level(limit, now) for limit in limits}
        by_pool: dict[str, int] = {}
        by_tenant: dict[str, int] = {}
        for lease in self._leases.values():
            by_pool[lease.ticket.pool] = by_pool.get(lease.ticket.pool, 0) + 1
            by_tenant[lease.ticket.tenant] = by_tenant.get(lease.ticket.tenant, 0) + 1
        return Snapshot(
            levels=levels,
            in_flight_by_pool=by_pool,
            in_flight_by_tenant=by_tenant,
            queued_by_pool={p: q.depth_by_class() for p, q in self._queues.items()},
            queued_by_tenant=dict(self._queued_by_tenant),
            gates=self._counters.gates(now),
        )

    async def dedup_end(self, leader: str) -> DedupEnd | None:
        return self._dedup_ends.get(leader, self._tick())

    async def usage(self, days: list[int]) -> list[UsageRow]:
        wanted = set(days)
        return [
            UsageRow(day, tenant, pool, *row)
            for (day, tenant, pool), row in sorted(self._ledger.items())
            if day in wanted
        ]

    async def configure(self, limits: list[Limit], gates: list[Gate]) -> None:
        self._counters.configure(limits, gates)

    def subscribe(
        self,
        waiting: Callable[[], Collection[str]],
        deliver: Callable[[LeaseRecord], None],
        finish: Callable[[DedupEnd], None],
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
            self._day_number = day_number(wall)
            oldest = self._day_number - LEDGER_DAYS
            self._ledger = {k: v for k, v in self._ledger.items() if k[0] > oldest}
        self._reap(now)
        return now

    def _reserve(
        self, ticket: Ticket, now: float, queued_for: float, shadowed: str = ""
    ) -> LeaseRecord:
        probe = self._counters.take(ticket, now)
        expires = now + ticket.ttl
        lease = _Lease(ticket, self._counters.day, now, expires, queued_for, shadowed, probe)
        self._leases[ticket.lease_id] = lease
        self._rates.setdefault(ticket.pool, GrantRate(now)).add(now)
        heapq.heappush(self._expiry, (lease.expires_at, ticket.lease_id))
        if ticket.idempotency_key:
            self._remember_key(ticket, ticket.lease_id, now)
        return lease.record(now)

    def _settle(self, lease: _Lease, token_delta: float, usd_delta: float, now: float) -> None:
        """End a lease: free its slots and move token/USD counters by charged - reserved."""
        del self._leases[lease.ticket.lease_id]
        self._counters.give(lease.ticket, lease.day, token_delta, usd_delta, lease.probe, now)

    def _charge(self, ticket: Ticket, used: tuple[int, int], nano_usd: int) -> None:
        """Write a settled lease into the cost ledger, under today's UTC day."""
        row = self._ledger.setdefault((self._day_number, ticket.tenant, ticket.pool), [0] * 4)
        row[0] += 1
        row[1] += used[0]
        row[2] += used[1]
        row[3] += nano_usd

    def _give_back(self, lease_id: str, why: EndKind, now: float) -> None:
        """End a grant nobody used: everything it reserved is refunded."""
        lease = self._leases.get(lease_id)
        if lease is not None:
            t = lease.ticket
            self._end(t, why, now)
            self._settle(lease, -t.tokens, -t.nano_usd, now)

    def _live_lease(self, lease_id: str, tenant: str | None, now: float) -> _Lease:
        lease = self._leases.get(lease_id)
        if lease is None:
            raise LeaseGone(lease_id)
        if tenant and lease.ticket.tenant != tenant:
            raise NotOwner(lease_id)
        return lease

    def _reap(self, now: float) -> None:
        """Every operation reaps first, so no expired lease ever holds capacity; the next
        :meth:`expire` reports them (and hands the freed capacity to waiters)."""
        while self._expiry and self._expiry[0][0] <= now:
            at, lease_id = heapq.heappop(self._expiry)
            lease = self._leases.get(lease_id)
            if lease is None or lease.expires_at != at:
                continue  # released or renewed since
            self._expired.append(lease.record(now))
            self._settle(lease, 0.0, 0.0, now)  # the full reservation stays charged
            t = lease.ticket
            self._charge(t, (t.input_tokens, t.max_output_tokens), t.nano_usd)
            self._finish(t, None, now)

    def _end(self, ticket: Ticket, kind: EndKind, now: float, denial: Denial | None = None) -> None:
        """A waiter or grant left unserved: remember why for a deferred ticket (one lease
        TTL), and tell the dedup followers of a leader to retry."""
        if ticket.deferred:
            end = TicketEnd(kind, ticket.tenant, denial)
            self._ended.put(ticket.lease_id, end, now + ticket.ttl)
        self._finish(ticket, None, now)

    def _finish(self, ticket: Ticket, result: bytes | None, now: float) -> None:
        """A dedup leader's call ended, with a result for its followers or without."""
        if not ticket.dedup_key:
            return
        key = (ticket.tenant, ticket.dedup_key)
        if self._dedup.get(key) == ticket.lease_id:
            del self._dedup[key]
        end = DedupEnd(ticket.lease_id, result)
        self._dedup_ends.put(ticket.lease_id, end, now + DEDUP_KEEP)
        self._finished.append(end)

    def _take_finished(self) -> list[DedupEnd]:
        finished, self._finished = self._finished, []
        return finished

    def _progress(self) -> Progress:
        """An operation's Progress when it dispatched nothing (finished dedup leaders)."""
        return Progress(finished=self._take_finished())

    # -- idempotency ----------------------------------------------------------------------

    def _remember_key(self, ticket: Ticket, ref: str, now: float) -> None:
        key = (ticket.tenant, ticket.idempotency_key)
        self._idempotency.put(key, (ref, ticket.fingerprint), now + ticket.ttl)

    def _replay(self, ticket: Ticket, now: float) -> AcquireResult | None:
        if not ticket.idempotency_key:
            self._idempotency.prune(now)
            return None
        known = self._idempotency.get((ticket.tenant, ticket.idempotency_key), now)
        if known is None:
            return None
        ref, fingerprint = known
        if fingerprint != ticket.fingerprint:
            raise FingerprintMismatch(ticket.idempotency_key)
        if ref in self._waiters:
            return AcquireResult(queued=True, replayed=True, waiting_on=ref)
        lease = self._leases.get(ref)
        if lease is not None:
            return AcquireResult(lease=lease.record(now), replayed=True)
        done = self._released.get(ref, now)
        if done is not None:
            return AcquireResult(lease=replace(done.lease, expires_in=0.0), replayed=True)
        return None  # the lease expired: a retry may reserve again

    # -- queue ----------------------------------------------------------------------------

    def _queue_full(self, ticket: Ticket, now: float) -> QueueFull | None:
        mine = self._queued_by_tenant.get(ticket.tenant, 0)
        total = len(self._waiters)
        scope: Literal["global", "tenant"]
        if mine >= ticket.max_queued_tenant:
            scope, depth, limit = "tenant", mine, ticket.max_queued_tenant
        elif total >= ticket.max_queued_total:
            scope, depth, limit = "global", total, ticket.max_queued_total
        else:
            return None
        queue, rate = self._queues.get(ticket.pool), self._rates.get(ticket.pool)
        return QueueFull(
            scope,
            depth,
            limit,
            pool_depth=len(queue) if queue is not None else 0,
            grants_per_second=rate.per_second(now) if rate is not None else None,
        )

    def _unqueue(self, lease_id: str, *, served: bool) -> Ticket:
        waiter = self._waiters.pop(lease_id)
        queue = self._queues[waiter.ticket.pool]
        queue.remove(waiter.entry, served=served)
        if not len(queue):
            del self._queues[waiter.ticket.pool]
        tenant = waiter.ticket.tenant
        self._queued_by_tenant[tenant] -= 1
        if not self._queued_by_tenant[tenant]:
            del self._queued_by_tenant[tenant]
        return waiter.ticket

    def _dispatch_all(self, now: float) -> Progress:
        progress = Progress()
        for pool in list(self._queues):
            self._dispatch_pool(pool, now, progress)
        progress.finished = self._take_finished()
        return progress

    def _dispatch_pool(
        self, pool: str, now: float, progress: Progress, watch: str = ""
    ) -> Denial | None:
        """Grant waiters of ``pool`` in fair order until a pool-wide limit blocks the head.

        A waiter blocked by its own tenant's limit is passed over (with the rest of that
        tenant's waiters, keeping it FIFO) so one tenant cannot hold up the others. Returns
        the denial of the ``watch`` ticket when it was examined and not granted.
        """
        queue = self._queues.get(pool)
        if queue is None:
            return None
        skipped: dict[str, Denial] = {}  # tenant -> the limit holding its waiters back
        served: list[Entry] = []
        gone: list[Entry] = []
        never: list[tuple[Entry, Denial]] = []
        watched: Denial | None = None
        for examined, entry in enumerate(queue.ordered(now, self._aging)):
            if examined >= MAX_EXAMINED_PER_PASS:
                break
            if entry.tenant in skipped:
                if entry.lease_id == watch:
                    watched = skipped[entry.tenant]  # behind its tenant's held waiter
                continue
            ticket = self._waiters[entry.lease_id].ticket
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
                lease = self._reserve(ticket, now, now - entry.enqueued_at, shadowed)
                progress.grants.append(lease)
                if entry.lease_id != watch:
                    self._unclaimed[ticket.lease_id] = now + ticket.claim_timeout
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
        for entry in served:
            self._unqueue(entry.lease_id, served=True)
        for entry, denial in never:
            self._end(self._unqueue(entry.lease_id, served=False), "rejected", now, denial)
            progress.rejections.append((entry.lease_id, denial))
        for entry in gone:
            self._end(self._unqueue(entry.lease_id, served=False), "timeout", now)
        return watched
