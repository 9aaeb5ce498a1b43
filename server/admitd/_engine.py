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
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import replace

from opentelemetry.trace import Span

from ._backends import Backend
from ._clock import Clock, ManualClock, TimerHandle
from ._config import Settings
from ._config.live import live
from ._errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Rejected,
    Unavailable,
)
from ._estimates import PoolHistory
from ._model import (
    AcquireResult,
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
    Settlement,
    Snapshot,
    Ticket,
    UsageRow,
)
from ._policy import Policy
from ._requests import AcquireSpec, Requests, check_lease_id, check_tokens
from ._telemetry import Telemetry
from ._tokens import TokenCounter
from ._waiting import QueueReport, Waiting

log = logging.getLogger("admitd")

UNCHECKED_PREFIX = "unchecked-"  # lease ids granted by fail_open without the store
MAX_USAGE_DAYS = 366


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
        self.waiting = Waiting(self)
        self.history = PoolHistory(self)
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
        w = self.waiting
        self.backend.subscribe(w.awaited, w.grant, w.finish)

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
        changed settings that only a restart applies (they keep their old values; see
        ``_config/live.py``).

        Raises:
            Unavailable: the store did not answer; nothing changed.
        """
        settings, restart_only = live(self.settings, settings)
        # A new encoding takes 0.1-0.3 s to load (known ones are cached): off the loop.
        counter = await asyncio.to_thread(TokenCounter, settings)
        policy = Policy(settings)
        await self.backend.configure(policy.all_limits(), policy.gates())
        self.settings, self.policy = settings, policy
        self.requests = Requests(settings, policy, counter)
        self.limits_published = True
        self.deliver(await self.backend.dispatch())  # raised limits may admit waiters now
        return restart_only

    async def idle(self) -> None:
        """Wait until the background work started by timers and grants has finished."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def drain(self) -> None:
        """Admit nothing more; every waiter gets UNAVAILABLE so its client goes elsewhere."""
        self.draining = True
        self.waiting.drain(_draining())

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
                return await self.waiting.end_of(ticket, result.follows, wait)
            lease = result.lease or await self.waiting.grant_of(
                result, ticket.pool, wait, on_queued
            )
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
        with self.telemetry.span(name) as span:
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
        waiter = self.waiting.hold(ticket.lease_id) if hold else None
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
            if waiter is not None:
                self.waiting.unhold(ticket.lease_id, waiter, result)
        self.deliver(result.progress)
        if isinstance(result.denial, QueueFull):
            raise self.history.queue_full(ticket.pool, result.denial)
        if result.denial is not None:
            self._note_blocked(ticket.pool, result.denial)
            raise self.policy.rejection(
                result.denial, wall=self.clock.wall(), hold_time=self.history.hold_time(ticket.pool)
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
        with self.telemetry.span("admitd.Release") as span:
            span.set_attribute("admitd.lease_id", lease_id)
            with _lease_errors(lease_id), self._store_errors():
                owner = self.requests.owner(tenant)
                released = await self.backend.release(
                    lease_id, usage, owner, outcome, retry_after, result
                )
        settlement = released.settlement
        if not settlement.already_released:
            lease = settlement.lease
            self.history.held(lease.pool, lease.held_for)
            self.telemetry.settled(
                lease.pool,
                lease.tenant,
                lease.reserved_tokens,
                settlement.charged_tokens,
                settlement.refunded_tokens,
            )
        self.deliver(released.progress)
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

    async def cancel(self, lease_id: str) -> None:
        """Take a waiter out of the queue, or give back its unclaimed grant."""
        with self._store_errors():
            self.deliver(await self.backend.cancel(lease_id))

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

    def deliver(self, progress: Progress) -> None:
        """Hand grants, refusals and dedup ends from a dispatch pass to their RPCs, and
        note what blocks the queues (refill wake-ups, estimates)."""
        for end in progress.finished:
            self.waiting.finish(end)
        for lease in progress.grants:
            self.waiting.grant(lease)
        for lease_id, denial in progress.rejections:
            refusal = self.policy.rejection(denial, wall=self.clock.wall(), hold_time=None)
            self.waiting.refuse(lease_id, refusal)
        for pool, denial in progress.blocked.items():
            self._note_blocked(pool, denial)
        for denial in progress.passed_over:
            self._wake_on_refill(denial)

    def _note_blocked(self, pool: str, denial: Denial) -> None:
        """Remember what holds the queue; when it is a bucket, dispatch again once it refills."""
        self.history.blocked(pool, denial)
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
        self.spawn(self._dispatch())

    async def _dispatch(self) -> None:
        self.deliver(await self.backend.dispatch())

    # -- reaper -----------------------------------------------------------------------------

    def _schedule_reaper(self, next_expiry_in: float | None = None) -> None:
        """Look for expired leases every ``reap_interval`` while callers wait for capacity;
        otherwise not before the earliest expiry (or unclaimed grant's deadline), and at
        least once per TTL (which covers leases granted meanwhile, by other replicas too)."""
        lease = self.settings.lease
        delay = lease.ttl if next_expiry_in is None else next_expiry_in
        if self.waiting:
            delay = lease.reap_interval
        delay = min(max(delay, lease.reap_interval), lease.ttl)
        when = self.clock.now() + delay
        self._reaper = (when, self.clock.call_at(when, self._on_reap))

    def reap_within(self, seconds: float) -> None:
        """Bring the next reap forward to at most ``seconds`` from now; it then reschedules
        itself for the next expiry or unclaimed grant's deadline."""
        soon = self.clock.now() + seconds
        if self._reaper is not None and self._reaper[0] > soon:
            self._reaper[1].cancel()
            self._reaper = (soon, self.clock.call_at(soon, self._on_reap))

    def _on_reap(self) -> None:
        self._reaper = None
        self.spawn(self._reap())

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
            self.deliver(result.progress)
        finally:
            if not self.draining:
                self._schedule_reaper(next_expiry_in)

    def spawn(self, coro: Coroutine[object, object, None]) -> None:
        """Run ``coro`` in the background; :meth:`idle` waits for it."""
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


def _unchecked_settlement(lease_id: str, usage: tuple[int, int] | None) -> Settlement:
    """Release of a lease admitted unchecked: nothing was reserved, so nothing to settle."""
    charged = sum(usage) if usage is not None else 0
    lease = LeaseRecord(lease_id, "", "", 0, 0, 0, 0.0, 0.0)
    return Settlement(lease, charged, 0, 0, already_released=False)


def _draining() -> Unavailable:
    return Unavailable("server is draining; retry on another replica")
