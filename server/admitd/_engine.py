"""The admission engine: asks the backend, holds waiters, and keeps time.

Requests are validated and priced in ``_requests.py``; the policy (limits, costs, reasons,
retry delays, every refusal text) is in ``_policy.py``; state and atomicity are the
backend's, reached only through :class:`~admitd._store.Store` (one path that translates and
counts store errors and delivers every operation's progress). The engine owns what happens
in time: the bounded waits (``_waits.py``), the lease reaper (``_reaper.py``) and refill
wake-ups, all on the injected clock, and handing grants made by any operation to the RPCs
waiting for them (``_waiting.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import replace

from ._backends import Backend
from ._clock import Alarm, Clock, ManualClock
from ._config import Settings
from ._config.live import live
from ._errors import Rejected, Unavailable
from ._estimates import PoolHistory
from ._heartbeat import Heartbeat, Places
from ._model import (
    CLAIM_TIMEOUT,
    AcquireResult,
    Denial,
    Kind,
    LeaseRecord,
    Look,
    Outcome,
    Progress,
    QueueFull,
    Settlement,
    Snapshot,
    Ticket,
    UsageRow,
)
from ._policy import UNCHECKED_PREFIX, Policy, unreported
from ._reaper import Reaper
from ._refusals import draining
from ._requests import AcquireSpec, Requests, check_days
from ._store import Store, unchecked_settlement
from ._telemetry import Telemetry
from ._tokens import TokenCounter
from ._usage import Usage
from ._waiting import Waiting
from ._waits import QueueReport, Waits

log = logging.getLogger("admitd")


class Engine:
    """Admission for one process: the work of every RPC (:meth:`acquire`, :meth:`release`,
    :meth:`renew`, ...) on one backend and one injected clock.

    Args:
        settings: the configuration; :meth:`apply` replaces it live.
        backend: where the state lives; every call to it goes through ``self.store``.
        clock: the one source of time (a ``ManualClock`` in tests).
        counter: token counting (default: tiktoken, each pool's encoding).
        telemetry: metrics and traces (default: new ones for ``settings``).
    """

    heartbeat: Heartbeat  # made after the store, whose calls may ask it

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
        # A late beat goes first only where beats are judged (Places: Redis; ~8 calls a pair).
        due = (lambda: self.heartbeat.due()) if isinstance(backend, Places) else None
        self.store = Store(backend, self.telemetry, self.deliver, due)
        self.waiting = Waiting(clock)
        self.history = PoolHistory(clock)
        self.reaper = Reaper(
            clock,
            self.store,
            self.telemetry,
            self.waiting,
            settings=lambda: self.settings,
            spawn=self.spawn,
        )
        self.waits = Waits(
            self.waiting,
            self.store,
            self.history,
            self.telemetry,
            policy=lambda: self.policy,
            reap_soon=lambda: self.reaper.within(self.settings.lease.reap_interval),
            spawn=self.spawn,
        )
        self.heartbeat = Heartbeat(self.store, lambda: self.settings.backend, self.waiting)
        self._wake = Alarm(clock, lambda: self.spawn(self.store.call(self.backend.dispatch)))
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
            await self.heartbeat.beat()  # alive before any waiter of this replica is queued
        self.heartbeat.start()
        self.reaper.start()
        self.store.subscribe(self.waiting.awaited, self._grant, self.waiting.finish)

    async def publish_limits(self) -> None:
        """Tell the store every limit as configured now: checks read capacities and rates
        from there, so calls queued under an older config (on any replica) obey this one."""
        await self.store.call(self.backend.configure, self.policy.all_limits(), self.policy.gates())
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
        await self.store.call(self.backend.configure, policy.all_limits(), policy.gates())
        self.settings, self.policy = settings, policy
        self.requests = Requests(settings, policy, counter)
        self.limits_published = True
        await self.store.call(self.backend.dispatch)  # raised limits may admit waiters now
        return restart_only

    async def ping(self) -> None:
        """Raise :class:`~admitd.Unavailable` unless the store answers."""
        await self.store.call(self.backend.ping)

    async def idle(self) -> None:
        """Wait until the background work started by timers and grants has finished."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def drain(self) -> None:
        """Admit nothing more; every waiter gets UNAVAILABLE so its client goes elsewhere."""
        self.draining = True
        self.reaper.stopping = True
        self.waiting.drain(draining())

    async def close(self) -> None:
        self.drain()
        self.reaper.cancel()
        await self.heartbeat.stop()
        self._wake.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.backend.close()

    # -- admission --------------------------------------------------------------------------

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
            raise draining()
        candidates, wait = await self.requests.tickets(spec, deadline=deadline)
        first = candidates[0]
        deciding = self.telemetry.deciding
        with deciding("admitd.Acquire", first.pool, first.tenant, first.priority) as span:
            result, ticket = await self.admit(candidates, queue=wait > 0, hold=True)
            if result.follows:
                return await self.waits.for_leader(ticket, result.follows, wait)
            lease = result.lease or await self.waits.for_grant(result, ticket.pool, wait, on_queued)
            span.set_attribute("admitd.lease_id", lease.lease_id)
        self.admitted(ticket, lease)
        if ticket.dedup_key:
            lease = replace(lease, dedup_leader=lease.lease_id)
        return lease

    async def admit(
        self, candidates: list[Ticket], *, queue: bool, hold: bool
    ) -> tuple[AcquireResult, Ticket]:
        """:meth:`submit` the ticket of the pool asked for, or of the first of its fallback
        pools that admits now (each tried in order, fail fast). Otherwise, with ``queue``,
        the call waits on the candidate whose refusal promises the shortest wait; one that
        refuses at once (open circuit, never fits) is skipped. Raises the most hopeful
        refusal when none will do.
        """
        if len(candidates) == 1:
            return await self.submit(candidates[0], queue=queue, hold=hold), candidates[0]
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

    def admitted(self, ticket: Ticket, lease: LeaseRecord) -> None:
        self.telemetry.admitted(
            ticket.pool, ticket.tenant, ticket.priority, lease.reserved_tokens, lease.queued_for
        )
        if lease.shadowed:
            reason = self.policy.shadow_reason(lease.shadowed)
            self.telemetry.shadowed(lease, reason.value if reason is not None else "UNKNOWN")

    async def submit(self, ticket: Ticket, *, queue: bool, hold: bool) -> AcquireResult:
        """Grant ``ticket`` now, or queue it (``queue``), or raise why it was refused.

        ``hold``: an RPC will wait in this process for the grant, so one that may queue is
        registered before the backend is asked (with several replicas, a grant may arrive
        first; one that may not is granted by its own call or not at all, and never
        announced). The result has a lease, or is queued."""
        if self.draining:  # checked again: counting the prompt may have taken a while
            raise draining()
        never = self.policy.never_fits(ticket.limits, ticket.tokens, ticket.nano_usd)
        if never is not None:
            raise never
        waiter = self.waiting.hold(ticket.lease_id) if hold and queue else None
        result: AcquireResult | None = None
        try:
            result = await self.store.call(self.backend.acquire, ticket, wait=queue)
        except Unavailable as error:
            if self.settings.backend.on_store_error != "fail_open":
                raise
            self.unchecked_admissions += 1
            return AcquireResult(lease=self.store.admit_unchecked(ticket, error))
        finally:
            if waiter is not None:
                self.waiting.unhold(ticket.lease_id, waiter, result)
        if isinstance(result.denial, QueueFull):
            raise self.history.queue_full(ticket.pool, result.denial, self.policy)
        if result.denial is not None:
            self._note_blocked(ticket.pool, result.denial)
            hold_time = self.history.hold_time(ticket.pool)
            raise self.policy.rejection(result.denial, wall=self.clock.wall(), hold_time=hold_time)
        return result

    # -- leases -----------------------------------------------------------------------------

    async def release(
        self,
        lease_id: str,
        usage: Usage | None,
        tenant: str | None = None,
        outcome: Outcome = Outcome.OK,
        retry_after: float = 0.0,
        result: bytes | None = None,
    ) -> Settlement:
        """Settle a lease with ``usage``, or (None) what the ``outcome`` implies
        (:func:`~admitd._policy.unreported`); ``outcome`` and the provider's
        ``retry_after`` move its pool's gate (pause, circuit breaker, AIMD); a dedup
        leader's ``result`` goes to the calls that joined it."""
        self.requests.check_release(lease_id, usage, retry_after, result)
        charge = usage if usage is not None else unreported(outcome)
        if lease_id.startswith(UNCHECKED_PREFIX):
            return unchecked_settlement(lease_id, usage)
        with self.telemetry.span("admitd.Release") as span:
            span.set_attribute("admitd.lease_id", lease_id)
            owner = self.requests.owner(tenant)
            released = await self.store.call(
                self.backend.release, lease_id, charge, owner, outcome, retry_after, result
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
        return settlement

    async def charge(self, spec: AcquireSpec, usage: Usage) -> None:
        """Count the ``usage`` of a call of ``spec``'s tenant and pool that
        already happened and reserved nothing (a gateway reporting after the call, e.g.
        Envoy's rate limit requests at the end of a stream): its token and USD limits and
        the budget go up by it, into debt if need be, and the ledger gets it. Nothing is
        checked, so nothing is refused; no slot and no request is counted (the call was
        counted when it was admitted)."""
        await self.store.call(self.backend.charge, self.requests.charged(spec, usage), usage)

    async def renew(
        self, lease_id: str, extend_by: float, tenant: str | None = None
    ) -> LeaseRecord:
        extend_by = self.requests.check_renew(lease_id, extend_by)
        owner = self.requests.owner(tenant)
        return await self.store.call(self.backend.renew, lease_id, extend_by, owner)

    async def snapshot(self) -> Snapshot:
        limits = self.policy.all_limits()
        snapshot = await self.store.call(self.backend.snapshot, limits)
        self.telemetry.observe(snapshot, limits, [pool.name for pool in self.settings.pools])
        return snapshot

    async def usage(
        self, first: int, last: int, tenant: str | None, pool: str | None
    ) -> list[UsageRow]:
        """Cost ledger rows from day ``first`` to ``last`` (``day_number``s, inclusive)."""
        rows = await self.store.call(self.backend.usage, check_days(first, last))
        return [
            row
            for row in rows
            if (tenant is None or row.tenant == tenant) and (pool is None or row.pool == pool)
        ]

    async def look(self, lease_id: str, *, claim: bool = False) -> Look:
        """Where a waiter stands, or what became of a deferred ticket (``claim``: take its
        grant for the caller)."""
        return await self.store.call(self.backend.look, lease_id, claim=claim)

    async def cancel(self, lease_id: str) -> None:
        """Take a waiter out of the queue, or give back its unclaimed grant."""
        await self.store.call(self.backend.cancel, lease_id)

    # -- what the store decided -------------------------------------------------------------

    def deliver(self, progress: Progress) -> None:
        """Hand grants, refusals and dedup ends from a dispatch pass to their RPCs, and
        note what blocks the queues (refill wake-ups, estimates)."""
        for end in progress.finished:
            self.waiting.finish(end)
        for lease in progress.grants:
            self._grant(lease)
        for lease_id, denial in progress.rejections:
            refusal = self.policy.rejection(denial, wall=self.clock.wall(), hold_time=None)
            self.waiting.refuse(lease_id, refusal)
        for pool, denial in progress.blocked.items():
            self._note_blocked(pool, denial)
        for denial in progress.passed_over:
            self._wake_on_refill(denial)

    def _grant(self, lease: LeaseRecord) -> None:
        """A grant made here or on another replica: an RPC waiting here gets it; any other
        stays unclaimed, and the reaper comes back in time to give it back if unclaimed."""
        if not self.waits.hand_over(lease):
            self.reaper.within(CLAIM_TIMEOUT)

    def _note_blocked(self, pool: str, denial: Denial) -> None:
        """Remember what holds the queue; when it is a bucket, dispatch again once it refills."""
        self.history.blocked(pool, denial)
        self._wake_on_refill(denial)

    def _wake_on_refill(self, denial: Denial) -> None:
        """When a bucket or a shut gate holds waiters back, dispatch again as soon as it
        has refilled or reopens (even with no RPC waiting here: deferred tickets wait
        without one)."""
        if denial.limit.kind not in (Kind.BUCKET, Kind.GATE):
            return
        delay = self.policy.retry_after(denial, wall=self.clock.wall(), hold_time=None)
        self._wake.sooner(self.clock.now() + delay)

    def spawn(self, coro: Coroutine[object, object, object]) -> None:
        """Run ``coro`` in the background; :meth:`idle` waits for it. A store outage it
        meets was counted on the way (``Store.call``); the next timer tries again."""
        task = asyncio.ensure_future(_quietly(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _quietly(coro: Coroutine[object, object, object]) -> None:
    with contextlib.suppress(Unavailable):
        await coro
