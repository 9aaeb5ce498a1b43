"""The admission engine: asks the backend, holds waiters, and keeps time.

Requests are validated and priced in ``_requests.py``; the policy (limits, costs, reasons,
retry delays, estimates) is in ``_policy.py``; state and atomicity are the backend's. The
engine owns what happens in time: waiting with a bound, reporting a waiter's place in the
queue, timers for bucket refills and the lease reaper (all on the injected clock), and
handing grants made by any operation to the RPCs waiting for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from opentelemetry.trace import Span

from ._backend import (
    CLAIM_TIMEOUT,
    AcquireResult,
    Backend,
    DedupEnd,
    Denial,
    FingerprintMismatch,
    Kind,
    LeaseGone,
    LeaseRecord,
    Look,
    NotOwner,
    Outcome,
    Progress,
    QueueFull,
    QueueSpot,
    Settlement,
    Snapshot,
    Ticket,
    UsageRow,
)
from ._clock import Clock, ManualClock, TimerHandle
from ._config import Settings
from ._errors import (
    Aborted,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Reason,
    Rejected,
    Unavailable,
)
from ._policy import MIN_RETRY, Policy, QueueEstimate, wait_estimate
from ._requests import AcquireSpec, Requests, check_lease_id, check_tokens
from ._telemetry import Telemetry
from ._tokens import TokenCounter

log = logging.getLogger("admitd")

UNCHECKED_PREFIX = "unchecked-"  # lease ids granted by fail_open without the store
MAX_USAGE_DAYS = 366
_EWMA = 0.2  # weight of the newest sample in the hold-time average

QueueReport = Callable[[QueueEstimate], None]
"""Called with a waiter's place in the queue whenever it changes (AcquireStream)."""


@dataclass(slots=True)
class _Waiter:
    future: asyncio.Future[LeaseRecord]
    holders: int = 1  # RPCs waiting on it (idempotent retries share one waiter)


@dataclass(slots=True)
class _PoolStats:
    hold_time: float | None = None  # EWMA of how long leases are held
    blocked: Denial | None = None  # what held the head of the queue last time


class Engine:
    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        clock: Clock,
        counter: TokenCounter | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.settings = settings
        self.telemetry = telemetry or Telemetry(settings)
        self.policy = Policy(settings)
        self.requests = Requests(settings, self.policy, counter or TokenCounter(settings))
        self.backend = backend
        self.clock = clock
        self._waiters: dict[str, _Waiter] = {}
        self._followers: dict[str, set[asyncio.Future[DedupEnd]]] = {}  # dedup leader -> them
        self._stats: dict[str, _PoolStats] = {p.name: _PoolStats() for p in settings.pools}
        self._wake: tuple[float, TimerHandle] | None = None
        self._reaper: tuple[float, TimerHandle] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.draining = False
        self.limits_published = False  # False until the store has this config's limits
        self.unchecked_admissions = 0  # fail_open grants made while the store was down
        if isinstance(clock, ManualClock):
            clock.idle = self.idle

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Publish the limits to the store, start the reaper and grant delivery."""
        with contextlib.suppress(Unavailable):  # the health check reports a dead store
            await self.publish_limits()
        self._schedule_reaper()
        self.backend.subscribe(self._awaited, self._grant, self._finish)

    async def publish_limits(self) -> None:
        """Tell the store every limit as configured now: checks read capacities and rates
        from there, so calls queued under an older config (on any replica) obey this one."""
        await self.backend.configure(self.policy.all_limits(), self.policy.gates())
        self.limits_published = True

    async def apply(self, settings: Settings) -> list[str]:
        """Switch to a new configuration without dropping leases or waiters.

        Limits, prices, weights, tiers, tenants, pools, queue bounds, lease times and auth
        apply at once (limits to queued calls too, so API keys rotate without a restart);
        lowering a limit revokes nothing, it admits less until usage falls. Returns the
        changed settings that only a restart applies (they keep their old values: backend,
        listen, health_listen, tls, observability, queue.aging).

        Raises:
            Unavailable: the store did not answer; nothing changed.
        """
        old = self.settings
        restart_only = {
            "backend": settings.backend != old.backend,
            "listen": settings.listen != old.listen,
            "health_listen": settings.health_listen != old.health_listen,
            "tls": settings.tls != old.tls,
            "observability": settings.observability != old.observability,
            "queue.aging": settings.queue.aging != old.queue.aging,
        }
        settings = settings.model_copy(
            update={
                "backend": old.backend,
                "listen": old.listen,
                "health_listen": old.health_listen,
                "tls": old.tls,
                "observability": old.observability,
                "queue": settings.queue.model_copy(update={"aging": old.queue.aging}),
            }
        )
        # A new encoding takes 0.1-0.3 s to load (known ones are cached): off the loop.
        counter = await asyncio.to_thread(TokenCounter, settings)
        policy = Policy(settings)
        await self.backend.configure(policy.all_limits(), policy.gates())
        self.settings, self.policy = settings, policy
        self.requests = Requests(settings, policy, counter)
        self.limits_published = True
        for pool in settings.pools:
            self._stats.setdefault(pool.name, _PoolStats())
        self._deliver(await self.backend.dispatch())  # raised limits may admit waiters now
        return [name for name, changed in restart_only.items() if changed]

    async def idle(self) -> None:
        """Wait until the background work started by timers and grants has finished."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def drain(self) -> None:
        """Admit nothing more; every waiter gets UNAVAILABLE so its client goes elsewhere."""
        self.draining = True
        for waiter in self._waiters.values():
            if not waiter.future.done():
                waiter.future.set_exception(_draining())

    async def close(self) -> None:
        self.drain()
        for timer in (self._reaper, self._wake):
            if timer is not None:
                timer[1].cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.backend.close()

    # -- RPCs -------------------------------------------------------------------------------

    async def acquire(
        self,
        spec: AcquireSpec,
        *,
        deadline: float | None = None,
        on_queued: QueueReport | None = None,
    ) -> LeaseRecord:
        """Admit now, wait up to the bounded timeout, or raise :class:`Rejected`.

        ``deadline`` is the seconds the caller's RPC has left, when it set one.
        ``on_queued`` hears the waiter's place in the queue while it waits.
        """
        if self.draining:
            raise _draining()
        candidates, wait = await self.requests.tickets(spec, deadline=deadline)
        with self.observed(candidates[0], "admitd.Acquire") as span:
            if len(candidates) == 1:
                ticket = candidates[0]
                result = await self.submit(ticket, queue=wait > 0, hold=True)
            else:
                result, ticket = await self.admit_any(candidates, queue=wait > 0, hold=True)
            if result.follows:
                return await self._follow(ticket, result.follows, wait)
            lease = result.lease or await self._wait(result, ticket.pool, wait, on_queued)
            span.set_attribute("admitd.lease_id", lease.lease_id)
        self.admitted(ticket, lease)
        if ticket.dedup_key:
            lease = replace(lease, dedup_leader=lease.lease_id)
        return lease

    async def admit_any(
        self, candidates: list[Ticket], *, queue: bool, hold: bool
    ) -> tuple[AcquireResult, Ticket]:
        """Fallback pools: each candidate in order, fail fast; the first that admits now
        grants. Otherwise, with ``queue``, the call waits on the candidate whose refusal
        promises the shortest wait; a candidate that refuses at once (open circuit,
        never fits) is skipped. Raises the most hopeful refusal when none will do.
        """
        refusals: list[Rejected] = []
        hopeful: list[tuple[float, int, Ticket]] = []
        for i, ticket in enumerate(candidates):
            try:
                return await self.submit(ticket, queue=False, hold=hold), ticket
            except Rejected as refused:
                refusals.append(refused)
                if refused.retry_after is not None and refused.metadata.get("cause") != "open":
                    hopeful.append((refused.retry_after, i, ticket))
        if queue and hopeful:
            chosen = min(hopeful)[2]
            return await self.submit(chosen, queue=True, hold=hold), chosen
        refusal = min(refusals, key=lambda r: (r.retry_after is None, r.retry_after or 0.0))
        refusal.metadata["candidates"] = ",".join(ticket.pool for ticket in candidates)
        raise refusal

    @contextmanager
    def observed(self, ticket: Ticket, name: str) -> Iterator[Span]:
        """A span for one admission decision; rejections and store errors are counted."""
        with self.telemetry.tracer.start_as_current_span(name) as span:
            span.set_attribute("admitd.tenant", ticket.tenant)
            span.set_attribute("admitd.pool", ticket.pool)
            try:
                yield span
            except Rejected as rejected:
                reason = rejected.reason.value
                self.telemetry.decision(ticket.pool, ticket.tenant, ticket.priority, reason)
                span.set_attribute("admitd.rejected", reason)
                raise
            except Unavailable:
                self.telemetry.store_error()
                raise

    def admitted(self, ticket: Ticket, lease: LeaseRecord) -> None:
        self.telemetry.admitted(
            ticket.pool, ticket.tenant, ticket.priority, lease.reserved_tokens, lease.queued_for
        )
        if lease.shadowed:
            reason = self.policy.shadow_reason(lease.shadowed)
            shown = reason.value if reason is not None else "UNKNOWN"
            self.telemetry.shadow_rejection(ticket.pool, ticket.tenant, shown)
            log.warning(
                "shadow mode: admitted a call %s would refuse",
                lease.shadowed,
                extra={"lease_id": lease.lease_id, "tenant": ticket.tenant, "reason": shown},
            )

    async def submit(self, ticket: Ticket, *, queue: bool, hold: bool) -> AcquireResult:
        """Grant ``ticket`` now, or queue it (``queue``), or raise why it was refused.

        ``hold``: an RPC will wait in this process for the grant, so it is registered
        before the backend is asked (with several replicas, a grant may arrive first).
        The result has a lease, or is queued.
        """
        never = self.policy.never_fits(ticket.limits, ticket.tokens, ticket.nano_usd)
        if never is not None:
            raise never
        waiter = None
        if hold:
            waiter = _Waiter(asyncio.get_running_loop().create_future())
            self._waiters[ticket.lease_id] = waiter
        result: AcquireResult | None = None
        try:
            result = await self.backend.acquire(ticket, wait=queue)
        except Unavailable as error:
            if not self._fail_open:
                raise
            return AcquireResult(lease=self._admit_unchecked(ticket, error))
        except FingerprintMismatch:
            raise InvalidArgument(
                "idempotency_key", "already used by this tenant for a different request"
            ) from None
        finally:
            if waiter is not None and not (
                self._waiters.get(ticket.lease_id) is waiter and _still_waiting(result)
            ):
                self._waiters.pop(ticket.lease_id, None)
        self._deliver(result.progress)
        if isinstance(result.denial, QueueFull):
            raise self._queue_full(ticket.pool, result.denial)
        if result.denial is not None:
            self._note_blocked(ticket.pool, result.denial)
            raise self.policy.rejection(
                result.denial, wall=self.clock.wall(), hold_time=self._hold_time(ticket.pool)
            )
        return result

    async def release(
        self,
        lease_id: str,
        usage: tuple[int, int] | None,
        tenant: str | None = None,
        outcome: Outcome = Outcome.OK,
        retry_after: float = 0.0,
        result: bytes | None = None,
    ) -> Settlement:
        """Settle a lease; ``outcome`` and the provider's ``retry_after`` move its pool's
        gate (pause, circuit breaker, AIMD); a dedup leader's ``result`` goes to the calls
        that joined it."""
        check_lease_id(lease_id)
        if retry_after < 0 or not math.isfinite(retry_after):
            raise InvalidArgument("provider_retry_after", "must not be negative")
        most = self.settings.lease.max_shared_result
        if result is not None and len(result) > most:
            raise InvalidArgument("result", f"at most {most} bytes (lease.max_shared_result)")
        if usage is not None:
            for name, value in zip(
                ("usage.input_tokens", "usage.output_tokens"), usage, strict=True
            ):
                check_tokens(name, value)
        if lease_id.startswith(UNCHECKED_PREFIX):
            return _unchecked_settlement(lease_id, usage)
        with self.telemetry.tracer.start_as_current_span("admitd.Release") as span:
            span.set_attribute("admitd.lease_id", lease_id)
            with _lease_errors(lease_id), self._store_errors():
                owner = self.requests.owner(tenant)
                released = await self.backend.release(
                    lease_id, usage, owner, outcome, retry_after, result
                )
        settlement = released.settlement
        if not settlement.already_released:
            lease = settlement.lease
            stats = self._stats.get(lease.pool)
            if stats is not None:
                stats.hold_time = _ewma(stats.hold_time, lease.held_for)
            self.telemetry.settled(
                lease.pool,
                lease.tenant,
                lease.reserved_tokens,
                settlement.charged_tokens,
                settlement.refunded_tokens,
            )
        self._deliver(released.progress)
        return settlement

    async def renew(
        self, lease_id: str, extend_by: float, tenant: str | None = None
    ) -> LeaseRecord:
        check_lease_id(lease_id)
        if lease_id.startswith(UNCHECKED_PREFIX):
            raise NotFound("lease_id", "leases admitted while the store was down cannot be renewed")
        if extend_by < 0 or not math.isfinite(extend_by):
            raise InvalidArgument("extend_by", "must not be negative")
        if extend_by > self.settings.lease.max_extend:
            raise InvalidArgument(
                "extend_by", f"at most {self.settings.lease.max_extend:g}s (lease.max_extend)"
            )
        with _lease_errors(lease_id), self._store_errors():
            return await self.backend.renew(
                lease_id, extend_by or self.settings.lease.ttl, self.requests.owner(tenant)
            )

    async def snapshot(self) -> Snapshot:
        limits = self.policy.all_limits()
        with self._store_errors():
            snapshot = await self.backend.snapshot(limits)
        self.telemetry.observe(snapshot, limits, [pool.name for pool in self.settings.pools])
        return snapshot

    async def usage(
        self, first: int, last: int, tenant: str | None, pool: str | None
    ) -> list[UsageRow]:
        """Cost ledger rows from day ``first`` to ``last`` (``day_number``s, inclusive)."""
        if last < first:
            raise InvalidArgument("to_day", "before from_day")
        if last - first >= MAX_USAGE_DAYS:
            raise InvalidArgument("to_day", f"at most {MAX_USAGE_DAYS} days from from_day")
        with self._store_errors():
            rows = await self.backend.usage(list(range(first, last + 1)))
        return [
            row
            for row in rows
            if (tenant is None or row.tenant == tenant) and (pool is None or row.pool == pool)
        ]

    # -- queue positions and deferred tickets -----------------------------------------------

    async def look(self, lease_id: str, *, claim: bool = False) -> Look:
        """Where a waiter stands, or what became of a deferred ticket (``claim``: take its
        grant for the caller)."""
        with self._store_errors():
            return await self.backend.look(lease_id, claim=claim)

    def estimate(self, spot: QueueSpot) -> QueueEstimate:
        first = self._first_grant_in(spot.pool)
        wait = wait_estimate(spot.position, spot.grants_per_second, first)
        return QueueEstimate(spot.position, spot.depth, wait)

    async def await_grant(self, lease_id: str, seconds: float) -> LeaseRecord | None:
        """Wait up to ``seconds`` (on the engine's clock) for the grant of a queued deferred
        ticket; None if it did not come. Leaving does not cancel the ticket."""
        waiter = self._waiters.get(lease_id)
        if waiter is None:
            waiter = self._waiters[lease_id] = _Waiter(asyncio.get_running_loop().create_future())
        else:
            waiter.holders += 1
        self._hasten_reaper()
        expired = self._sleep(seconds)
        try:
            await asyncio.wait((waiter.future, expired), return_when=asyncio.FIRST_COMPLETED)
            return waiter.future.result() if waiter.future.done() else None
        finally:
            expired.cancel()
            waiter.holders -= 1
            if waiter.holders == 0:
                self._waiters.pop(lease_id, None)

    async def cancel(self, lease_id: str) -> None:
        """Take a waiter out of the queue, or give back its unclaimed grant."""
        with self._store_errors():
            self._deliver(await self.backend.cancel(lease_id))

    # -- internals --------------------------------------------------------------------------

    @contextmanager
    def _store_errors(self) -> Iterator[None]:
        try:
            yield
        except Unavailable:
            self.telemetry.store_error()
            raise

    @property
    def _fail_open(self) -> bool:
        return self.settings.backend.on_store_error == "fail_open"

    def _admit_unchecked(self, ticket: Ticket, error: Unavailable) -> LeaseRecord:
        """fail_open: the store is down, so admit without reserving anything (and say so)."""
        self.unchecked_admissions += 1
        self.telemetry.unchecked(ticket.pool)
        log.warning(
            "admitting unchecked, store unreachable: %s",
            error.message,
            extra={"tenant": ticket.tenant, "pool": ticket.pool},
        )
        return LeaseRecord(
            lease_id=UNCHECKED_PREFIX + ticket.lease_id,
            tenant=ticket.tenant,
            pool=ticket.pool,
            input_tokens=ticket.input_tokens,
            max_output_tokens=ticket.max_output_tokens,
            nano_usd=ticket.nano_usd,
            expires_in=ticket.ttl,
            queued_for=0.0,
        )

    async def _wait(
        self, result: AcquireResult, pool: str, wait: float, report: QueueReport | None
    ) -> LeaseRecord:
        """Wait for the grant of ``result.waiting_on`` (ours, or an earlier idempotent one)."""
        loop = asyncio.get_running_loop()
        lease_id = result.waiting_on
        waiter = self._waiters.get(lease_id)
        if waiter is None:
            waiter = self._waiters[lease_id] = _Waiter(loop.create_future())
        elif result.replayed:
            waiter.holders += 1
        self._hasten_reaper()
        started = self.clock.now()
        timeout = self._sleep(wait)
        reporter = asyncio.ensure_future(self._report(lease_id, report)) if report else None
        try:
            await asyncio.wait((waiter.future, timeout), return_when=asyncio.FIRST_COMPLETED)
            if waiter.future.done():
                return waiter.future.result()  # the lease, or Rejected/Unavailable
            spot = None
            with contextlib.suppress(Unavailable):  # the estimate is a courtesy
                spot = (await self.backend.look(lease_id, claim=False)).queued
            estimate = self.estimate(spot) if spot is not None else None
            raise self.policy.queue_timeout(
                self.clock.now() - started,
                retry_after=self._next_grant_in(pool, spot.grants_per_second if spot else None),
                blocked_by=self._stats[pool].blocked if pool in self._stats else None,
                estimate=estimate,
            )
        finally:
            timeout.cancel()
            if reporter is not None:
                reporter.cancel()
            waiter.holders -= 1
            if waiter.holders == 0:
                self._waiters.pop(lease_id, None)
                if not waiter.future.done() or waiter.future.exception() is not None:
                    # Timed out, cancelled or drained: leave the queue. If a grant raced
                    # with us, _deliver finds no waiter and gives the lease back.
                    waiter.future.cancel()
                    self._deliver(await asyncio.shield(self.backend.cancel(lease_id)))

    async def _report(self, lease_id: str, report: QueueReport) -> None:
        """Tell ``report`` where the waiter stands now, and again every
        ``queue.update_interval`` when that changed, until it leaves the queue."""
        last: tuple[int, int, float] | None = None
        while True:
            look = None
            with contextlib.suppress(Unavailable):  # try again next time
                look = await self.backend.look(lease_id, claim=False)
            if look is not None:
                if look.queued is None:
                    return
                estimate = self.estimate(look.queued)
                shown = (estimate.position, estimate.depth, round(estimate.wait, 1))
                if shown != last:
                    report(estimate)
                    last = shown
            await self._sleep(self.settings.queue.update_interval)

    def _sleep(self, seconds: float) -> asyncio.Future[None]:
        """A future that resolves ``seconds`` from now on the engine's clock."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        handle = self.clock.call_at(self.clock.now() + seconds, lambda: _resolve(future))
        future.add_done_callback(lambda _: handle.cancel())
        return future

    async def _follow(self, ticket: Ticket, leader: str, wait: float) -> LeaseRecord:
        """A dedup follower: wait (at most ``wait``) for the leader's call to end, and take
        its shared result; nothing is reserved for the follower."""
        if wait <= 0:
            self.telemetry.followed(ticket.pool, ticket.tenant, "in_flight")
            raise Aborted(
                Reason.DEDUP_IN_FLIGHT,
                "an identical call (same dedup_key) is in flight; set wait_timeout to wait"
                " for its result",
                retry_after=MIN_RETRY,
                metadata={"dedup_leader": leader},
            )
        started = self.clock.now()
        future: asyncio.Future[DedupEnd] = asyncio.get_running_loop().create_future()
        self._followers.setdefault(leader, set()).add(future)
        self._hasten_reaper()  # a leader that dies ends at its expiry, for its followers too
        expired = self._sleep(wait)
        try:
            with contextlib.suppress(Unavailable):  # the listener still tells us
                end = await self.backend.dedup_end(leader)  # it may have ended already
                if end is not None:
                    self._finish(end)
            await asyncio.wait((future, expired), return_when=asyncio.FIRST_COMPLETED)
        finally:
            expired.cancel()
            followers = self._followers.get(leader, set())
            followers.discard(future)
            if not followers:
                self._followers.pop(leader, None)
        if not future.done():
            self.telemetry.followed(ticket.pool, ticket.tenant, "in_flight")
            raise Aborted(
                Reason.DEDUP_IN_FLIGHT,
                f"the identical call joined was still in flight after {wait:g}s",
                retry_after=MIN_RETRY,
                metadata={"dedup_leader": leader},
            )
        shared = future.result().result
        how = "failed" if shared is None else "shared"
        self.telemetry.followed(ticket.pool, ticket.tenant, how)
        if shared is None:
            raise Aborted(
                Reason.DEDUP_LEADER_FAILED,
                "the identical call joined ended without a result to share; retry",
                retry_after=MIN_RETRY,
                metadata={"dedup_leader": leader},
            )
        return LeaseRecord(
            lease_id="",
            tenant=ticket.tenant,
            pool=ticket.pool,
            input_tokens=0,
            max_output_tokens=0,
            nano_usd=0,
            expires_in=0.0,
            queued_for=self.clock.now() - started,
            dedup_leader=leader,
            shared_result=shared,
        )

    def _finish(self, end: DedupEnd) -> None:
        """A dedup leader's call ended: its followers here get how."""
        for future in self._followers.pop(end.leader, ()):
            if not future.done():
                future.set_result(end)

    def _awaited(self) -> list[str]:
        """What this process waits to hear of: grants of its waiters, ends of the dedup
        leaders its followers joined (``end:<leader>``)."""
        return [*self._waiters, *(f"end:{leader}" for leader in self._followers)]

    def _deliver(self, progress: Progress) -> None:
        """Hand grants, refusals and dedup ends from a dispatch pass to their RPCs."""
        for end in progress.finished:
            self._finish(end)
        for lease in progress.grants:
            self._grant(lease)
        for lease_id, denial in progress.rejections:
            waiter = self._waiters.get(lease_id)
            if waiter is not None and not waiter.future.done():
                waiter.future.set_exception(
                    self.policy.rejection(denial, wall=self.clock.wall(), hold_time=None)
                )
        for pool, denial in progress.blocked.items():
            self._note_blocked(pool, denial)
        for denial in progress.passed_over:
            self._wake_on_refill(denial)

    def _grant(self, lease: LeaseRecord) -> None:
        """Hand a grant to its waiting RPC if it is ours. A grant for an RPC that has just
        given up stays unclaimed (that RPC's cancel() gives it back), as does one for a
        deferred ticket or another replica's RPC: the reaper comes back in time to give it
        back if nobody claims it."""
        waiter = self._waiters.get(lease.lease_id)
        if waiter is not None and not waiter.future.done():
            waiter.future.set_result(lease)
            self._spawn(self.backend.claim(lease.lease_id))
        else:
            self._reap_within(CLAIM_TIMEOUT)

    def _note_blocked(self, pool: str, denial: Denial) -> None:
        """Remember what holds the queue; when it is a bucket, dispatch again once it refills."""
        if pool in self._stats:
            self._stats[pool].blocked = denial
        self._wake_on_refill(denial)

    def _wake_on_refill(self, denial: Denial) -> None:
        """When a bucket or a shut gate holds waiters back, dispatch again as soon as it
        has refilled or reopens."""
        if denial.limit.kind not in (Kind.BUCKET, Kind.GATE):
            return
        delay = self.policy.retry_after(denial, wall=self.clock.wall(), hold_time=None)
        when = self.clock.now() + delay
        if self._wake is not None:
            if self._wake[0] <= when:
                return
            self._wake[1].cancel()
        self._wake = (when, self.clock.call_at(when, self._on_wake))

    def _on_wake(self) -> None:
        # Dispatch even with no RPC waiting here: deferred tickets wait without one.
        self._wake = None
        self._spawn(self._dispatch())

    async def _dispatch(self) -> None:
        self._deliver(await self.backend.dispatch())

    def _hold_time(self, pool: str) -> float | None:
        stats = self._stats.get(pool)
        return stats.hold_time if stats is not None else None

    def _first_grant_in(self, pool: str) -> float:
        """Seconds until the pool is likely to grant again, from what this process saw:
        the blocking limit's own delay, else a typical hold, else one lease TTL."""
        stats = self._stats.get(pool)
        if stats is not None and stats.blocked is not None:
            return self.policy.retry_after(
                stats.blocked, wall=self.clock.wall(), hold_time=stats.hold_time
            )
        if stats is not None and stats.hold_time is not None:
            return stats.hold_time
        return self.settings.lease.ttl

    def _next_grant_in(self, pool: str, grants_per_second: float | None) -> float:
        return wait_estimate(0, grants_per_second, self._first_grant_in(pool))

    def _queue_full(self, pool: str, full: QueueFull) -> Rejected:
        """No room: a retry can succeed once the next waiter has been served."""
        rate, first = full.grants_per_second, self._first_grant_in(pool)
        joining = QueueEstimate(
            full.pool_depth, full.pool_depth, wait_estimate(full.pool_depth, rate, first)
        )
        return self.policy.queue_full(
            full, retry_after=wait_estimate(0, rate, first), estimate=joining
        )

    # -- reaper -----------------------------------------------------------------------------

    def _schedule_reaper(self, next_expiry_in: float | None = None) -> None:
        """Look for expired leases every ``reap_interval`` while callers wait for capacity;
        otherwise not before the earliest expiry (or unclaimed grant's deadline), and at
        least once per TTL (which covers leases granted meanwhile, by other replicas too)."""
        lease = self.settings.lease
        delay = lease.ttl if next_expiry_in is None else next_expiry_in
        if self._waiters or self._followers:
            delay = lease.reap_interval
        delay = min(max(delay, lease.reap_interval), lease.ttl)
        when = self.clock.now() + delay
        self._reaper = (when, self.clock.call_at(when, self._on_reap))

    def _hasten_reaper(self) -> None:
        """A caller now waits for capacity: expiries must free it within ``reap_interval``."""
        self._reap_within(self.settings.lease.reap_interval)

    def _reap_within(self, seconds: float) -> None:
        """Bring the next reap forward to at most ``seconds`` from now; it then reschedules
        itself for the next expiry or unclaimed grant's deadline."""
        soon = self.clock.now() + seconds
        if self._reaper is not None and self._reaper[0] > soon:
            self._reaper[1].cancel()
            self._reaper = (soon, self.clock.call_at(soon, self._on_reap))

    def _on_reap(self) -> None:
        self._reaper = None
        self._spawn(self._reap())

    async def _reap(self) -> None:
        next_expiry_in = None
        try:
            result = await self.backend.expire()
            next_expiry_in = result.next_expiry_in
            for lease in result.expired:
                self.telemetry.expired(lease.pool)
                log.info(
                    "lease expired",
                    extra={"lease_id": lease.lease_id, "tenant": lease.tenant, "pool": lease.pool},
                )
            self._deliver(result.progress)
        finally:
            if not self.draining:
                self._schedule_reaper(next_expiry_in)

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


@contextmanager
def _lease_errors(lease_id: str) -> Iterator[None]:
    """The backend's lease errors, as the caller sees them."""
    try:
        yield
    except LeaseGone:
        raise NotFound("lease_id", f"no lease {lease_id!r}: unknown, expired or released") from None
    except NotOwner:
        raise PermissionDenied(f"lease {lease_id!r} belongs to another tenant") from None


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _unchecked_settlement(lease_id: str, usage: tuple[int, int] | None) -> Settlement:
    """Release of a lease admitted unchecked: nothing was reserved, so nothing to settle."""
    charged = sum(usage) if usage is not None else 0
    lease = LeaseRecord(lease_id, "", "", 0, 0, 0, 0.0, 0.0)
    return Settlement(lease, charged, 0, 0, already_released=False)


def _still_waiting(result: AcquireResult | None) -> bool:
    return result is not None and result.queued and not result.replayed


def _draining() -> Unavailable:
    return Unavailable("server is draining; retry on another replica")


def _ewma(old: float | None, sample: float) -> float:
    return sample if old is None else old + _EWMA * (sample - old)
