"""The admission engine: validates and prices requests, asks the backend, and holds waiters.

The policy (limits, costs, reasons, retry delays) is in ``_policy.py``; state and atomicity
are the backend's. The engine owns what happens in time: waiting with a bound, timers for
bucket refills and the lease reaper (all on the injected clock), and handing grants made by
any operation to the RPCs waiting for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
from collections.abc import Coroutine, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from ._backend import (
    AcquireResult,
    Backend,
    Denial,
    FingerprintMismatch,
    Kind,
    LeaseGone,
    LeaseRecord,
    NotOwner,
    Progress,
    QueueFull,
    Settlement,
    Snapshot,
    Ticket,
    price_nano_usd,
)
from ._clock import Clock, ManualClock, TimerHandle
from ._config import PoolConfig, Settings, TenantConfig
from ._errors import InvalidArgument, NotFound, PermissionDenied, Rejected, Unavailable
from ._policy import Policy, nano_usd_per_token
from ._telemetry import Telemetry
from ._tokens import TokenCounter

log = logging.getLogger("admitd")

UNCHECKED_PREFIX = "unchecked-"  # lease ids granted by fail_open without the store
MAX_TOKENS = 10_000_000  # per field; larger than any model's context window
MAX_NAME = 200
MAX_IDEMPOTENCY_KEY = 256
MAX_LABELS = 32
MAX_LABEL_TEXT = 256
MAX_PROMPT_CHARS = 2_000_000
PRIORITY_NAMES = ("CRITICAL", "HIGH", "NORMAL", "LOW")
_EWMA = 0.2  # weight of the newest sample in the hold-time and grant-interval averages


@dataclass(frozen=True, slots=True)
class AcquireSpec:
    """An Acquire as the caller sent it. ``priority`` uses the wire numbering:
    0 unspecified (= normal), 1 critical, 2 high, 3 normal, 4 low."""

    tenant: str
    pool: str
    input_tokens: int = 0
    max_output_tokens: int = 0
    priority: int = 0
    wait_timeout: float = 0.0
    idempotency_key: str = ""
    prompt: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class _Waiter:
    future: asyncio.Future[LeaseRecord]
    holders: int = 1  # RPCs waiting on it (idempotent retries share one waiter)


@dataclass(slots=True)
class _PoolStats:
    hold_time: float | None = None  # EWMA of how long leases are held
    grant_interval: float | None = None  # EWMA of time between grants
    last_grant: float | None = None
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
        self.backend = backend
        self.clock = clock
        self._counter = counter or TokenCounter(settings)
        self._waiters: dict[str, _Waiter] = {}
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
        self.backend.subscribe(lambda: self._waiters.keys(), self._grant)

    async def publish_limits(self) -> None:
        """Tell the store every limit as configured now: checks read capacities and rates
        from there, so calls queued under an older config (on any replica) obey this one."""
        await self.backend.configure(self.policy.all_limits())
        self.limits_published = True

    async def apply(self, settings: Settings) -> list[str]:
        """Switch to a new configuration without dropping leases or waiters.

        Limits, prices, weights, tenants, pools, queue bounds and lease times apply at once
        (to queued calls too); lowering a limit revokes nothing, it admits less until usage
        falls. Returns the changed settings that only a restart applies (they keep their
        old values: backend, listen, health_listen, tls, observability, queue.aging). The
        ``auth`` section applies at once, so API keys rotate without a restart.

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
        await self.backend.configure(policy.all_limits())
        self.settings, self.policy, self._counter = settings, policy, counter
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

    async def acquire(self, spec: AcquireSpec, *, deadline: float | None = None) -> LeaseRecord:
        """Admit now, wait up to the bounded timeout, or raise :class:`Rejected`.

        ``deadline`` is the seconds the caller's RPC has left, when it set one.
        """
        if self.draining:
            raise _draining()
        ticket, wait = self._ticket(spec, deadline)
        with self.telemetry.tracer.start_as_current_span("admitd.Acquire") as span:
            span.set_attribute("admitd.tenant", ticket.tenant)
            span.set_attribute("admitd.pool", ticket.pool)
            try:
                lease = await self._acquire(ticket, wait)
            except Rejected as rejected:
                self.telemetry.decision(
                    ticket.pool, ticket.tenant, ticket.priority, rejected.reason.value
                )
                span.set_attribute("admitd.rejected", rejected.reason.value)
                raise
            except Unavailable:
                self.telemetry.store_error()
                raise
            span.set_attribute("admitd.lease_id", lease.lease_id)
            self.telemetry.admitted(
                ticket.pool, ticket.tenant, ticket.priority, lease.reserved_tokens, lease.queued_for
            )
            return lease

    async def _acquire(self, ticket: Ticket, wait: float) -> LeaseRecord:
        never = self.policy.never_fits(ticket.limits, ticket.tokens, ticket.nano_usd)
        if never is not None:
            raise never
        # Registered before the backend call: with several replicas a grant may arrive first.
        waiter = _Waiter(asyncio.get_running_loop().create_future())
        self._waiters[ticket.lease_id] = waiter
        result: AcquireResult | None = None
        try:
            result = await self.backend.acquire(ticket, wait=wait > 0)
        except Unavailable as error:
            if not self._fail_open:
                raise
            return self._admit_unchecked(ticket, error)
        except FingerprintMismatch:
            raise InvalidArgument(
                "idempotency_key", "already used by this tenant for a different request"
            ) from None
        finally:
            if not (self._waiters.get(ticket.lease_id) is waiter and _still_waiting(result)):
                self._waiters.pop(ticket.lease_id, None)
        self._deliver(result.progress)
        if result.lease is not None:
            self._granted(result.lease)
            return result.lease
        if isinstance(result.denial, QueueFull):
            raise self.policy.queue_full(
                result.denial,
                retry_after=self._queue_estimate(ticket.pool, depth=result.denial.depth),
            )
        if result.denial is not None:
            self._note_blocked(ticket.pool, result.denial)
            raise self.policy.rejection(
                result.denial, wall=self.clock.wall(), hold_time=self._stats[ticket.pool].hold_time
            )
        return await self._wait(result, ticket.pool, wait)

    async def release(
        self, lease_id: str, usage: tuple[int, int] | None, tenant: str | None = None
    ) -> Settlement:
        _check_lease_id(lease_id)
        if usage is not None:
            for name, value in zip(
                ("usage.input_tokens", "usage.output_tokens"), usage, strict=True
            ):
                _check_tokens(name, value)
        if lease_id.startswith(UNCHECKED_PREFIX):
            return _unchecked_settlement(lease_id, usage)
        with self.telemetry.tracer.start_as_current_span("admitd.Release") as span:
            span.set_attribute("admitd.lease_id", lease_id)
            with _lease_errors(lease_id), self._store_errors():
                result = await self.backend.release(lease_id, usage, self._owner(tenant))
        settlement = result.settlement
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
        self._deliver(result.progress)
        return settlement

    async def renew(
        self, lease_id: str, extend_by: float, tenant: str | None = None
    ) -> LeaseRecord:
        _check_lease_id(lease_id)
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
                lease_id, extend_by or self.settings.lease.ttl, self._owner(tenant)
            )

    async def snapshot(self) -> Snapshot:
        limits = self.policy.all_limits()
        with self._store_errors():
            snapshot = await self.backend.snapshot(limits)
        self.telemetry.observe(snapshot, limits, [pool.name for pool in self.settings.pools])
        return snapshot

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

    # -- validation and pricing -------------------------------------------------------------

    def _ticket(self, spec: AcquireSpec, deadline: float | None) -> tuple[Ticket, float]:
        """Validate every field, count tokens and price the call; nothing is reserved here."""
        pool = self._pool(spec.pool)
        tenant = self._tenant(spec.tenant)
        _check_tokens("input_tokens", spec.input_tokens)
        _check_tokens("max_output_tokens", spec.max_output_tokens)
        if not 0 <= spec.priority <= 4:
            raise InvalidArgument("priority", f"unknown value {spec.priority}")
        if spec.wait_timeout < 0 or not math.isfinite(spec.wait_timeout):
            raise InvalidArgument("wait_timeout", "must not be negative")
        if len(spec.idempotency_key) > MAX_IDEMPOTENCY_KEY:
            raise InvalidArgument(
                "idempotency_key", f"longer than {MAX_IDEMPOTENCY_KEY} characters"
            )
        if len(spec.prompt) > MAX_PROMPT_CHARS:
            raise InvalidArgument("prompt", f"longer than {MAX_PROMPT_CHARS} characters")
        _check_labels(spec.labels)
        input_tokens = spec.input_tokens
        if input_tokens == 0 and spec.prompt:
            input_tokens = self._counter.count(pool.name, spec.prompt)
        if input_tokens + spec.max_output_tokens == 0:
            raise InvalidArgument(
                "input_tokens",
                "the reservation is empty: set input_tokens, prompt or max_output_tokens",
            )
        priority = (spec.priority or 3) - 1
        wait = min(spec.wait_timeout, self.settings.queue.max_wait)
        if deadline is not None:
            wait = max(0.0, min(wait, deadline))
        price_in = nano_usd_per_token(pool.price.input_per_million)
        price_out = nano_usd_per_token(pool.price.output_per_million)
        ticket = Ticket(
            lease_id=secrets.token_hex(16),
            tenant=tenant.name,
            pool=pool.name,
            input_tokens=input_tokens,
            max_output_tokens=spec.max_output_tokens,
            nano_usd=price_nano_usd(input_tokens, spec.max_output_tokens, price_in, price_out),
            price_in=price_in,
            price_out=price_out,
            priority=priority,
            cost=(input_tokens + spec.max_output_tokens) / tenant.weight,
            limits=self.policy.limits(pool, tenant),
            ttl=self.settings.lease.ttl,
            wait=wait,
            idempotency_key=spec.idempotency_key,
            fingerprint=f"{pool.name}|{input_tokens}|{spec.max_output_tokens}|{priority}",
            max_queued_tenant=tenant.max_queued or self.settings.queue.max_per_tenant,
            max_queued_total=self.settings.queue.max_length,
        )
        return ticket, wait

    def _pool(self, name: str) -> PoolConfig:
        if not name:
            raise InvalidArgument("pool", "required")
        pool = self.policy.pools.get(name)
        if pool is None:
            raise NotFound("pool", f"unknown pool {name[:MAX_NAME]!r}")
        return pool

    def _owner(self, name: str | None) -> str | None:
        """The tenant a Release/Renew acts as: resolved like Acquire's; None = not checked."""
        return self._tenant(name).name if name else None

    def _tenant(self, name: str) -> TenantConfig:
        tenant = self.policy.tenants.get(name) if name else None
        if tenant is None and self.settings.default_tenant is not None:
            tenant = self.policy.tenants[self.settings.default_tenant]
        if tenant is not None:
            return tenant
        if not name:
            raise InvalidArgument("tenant", "required (the server has no default tenant)")
        raise NotFound("tenant", f"unknown tenant {name[:MAX_NAME]!r}")

    # -- waiting ----------------------------------------------------------------------------

    async def _wait(self, result: AcquireResult, pool: str, wait: float) -> LeaseRecord:
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
        timeout: asyncio.Future[None] = loop.create_future()
        timer = self.clock.call_at(started + wait, lambda: _resolve(timeout))
        try:
            await asyncio.wait((waiter.future, timeout), return_when=asyncio.FIRST_COMPLETED)
            if waiter.future.done():
                return waiter.future.result()  # the lease, or Rejected/Unavailable
            stats = self._stats[pool]
            raise self.policy.queue_timeout(
                self.clock.now() - started,
                retry_after=self._queue_estimate(pool, depth=1),
                blocked_by=stats.blocked,
            )
        finally:
            timer.cancel()
            waiter.holders -= 1
            if waiter.holders == 0:
                self._waiters.pop(lease_id, None)
                if not waiter.future.done() or waiter.future.exception() is not None:
                    # Timed out, cancelled or drained: leave the queue. If a grant raced
                    # with us, _deliver finds no waiter and gives the lease back.
                    waiter.future.cancel()
                    self._deliver(await asyncio.shield(self.backend.cancel(lease_id)))

    def _deliver(self, progress: Progress) -> None:
        """Hand grants and refusals from a dispatch pass to their waiting RPCs."""
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
        given up stays unclaimed; that RPC's cancel() gives it back."""
        waiter = self._waiters.get(lease.lease_id)
        if waiter is not None and not waiter.future.done():
            waiter.future.set_result(lease)
            self._granted(lease)
            self._spawn(self.backend.claim(lease.lease_id))

    def _granted(self, lease: LeaseRecord) -> None:
        stats = self._stats.get(lease.pool)
        if stats is None:
            return
        now = self.clock.now()
        if stats.last_grant is not None:
            stats.grant_interval = _ewma(stats.grant_interval, now - stats.last_grant)
        stats.last_grant = now

    def _note_blocked(self, pool: str, denial: Denial) -> None:
        """Remember what holds the queue; when it is a bucket, dispatch again once it refills."""
        if pool in self._stats:
            self._stats[pool].blocked = denial
        self._wake_on_refill(denial)

    def _wake_on_refill(self, denial: Denial) -> None:
        """When a bucket holds waiters back, dispatch again as soon as it has refilled."""
        if denial.limit.kind is not Kind.BUCKET:
            return
        delay = self.policy.retry_after(denial, wall=self.clock.wall(), hold_time=None)
        when = self.clock.now() + delay
        if self._wake is not None:
            if self._wake[0] <= when:
                return
            self._wake[1].cancel()
        self._wake = (when, self.clock.call_at(when, self._on_wake))

    def _on_wake(self) -> None:
        self._wake = None
        if self._waiters:
            self._spawn(self._dispatch())

    async def _dispatch(self) -> None:
        self._deliver(await self.backend.dispatch())

    def _queue_estimate(self, pool: str, *, depth: int) -> float:
        """Seconds until a retry is likely to be admitted: the blocker's own retry delay plus
        the waiters ahead at the recent grant rate."""
        stats = self._stats[pool]
        first = self.settings.lease.ttl
        if stats.blocked is not None:
            first = self.policy.retry_after(
                stats.blocked, wall=self.clock.wall(), hold_time=stats.hold_time
            )
        elif stats.hold_time is not None:
            first = stats.hold_time
        per_grant = stats.grant_interval if stats.grant_interval is not None else 0.0
        return max(0.001, first + depth * per_grant)

    # -- reaper -----------------------------------------------------------------------------

    def _schedule_reaper(self, next_expiry_in: float | None = None) -> None:
        """Look for expired leases every ``reap_interval`` while callers wait for capacity;
        otherwise not before the earliest expiry, and at least once per TTL (which covers
        leases granted meanwhile, by other replicas too)."""
        lease = self.settings.lease
        delay = lease.ttl if next_expiry_in is None else next_expiry_in
        if self._waiters:
            delay = lease.reap_interval
        delay = min(max(delay, lease.reap_interval), lease.ttl)
        when = self.clock.now() + delay
        self._reaper = (when, self.clock.call_at(when, self._on_reap))

    def _hasten_reaper(self) -> None:
        """A caller now waits for capacity: expiries must free it within ``reap_interval``."""
        soon = self.clock.now() + self.settings.lease.reap_interval
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


def _check_tokens(name: str, value: int) -> None:
    if value < 0:
        raise InvalidArgument(name, f"must not be negative, got {value}")
    if value > MAX_TOKENS:
        raise InvalidArgument(name, f"at most {MAX_TOKENS}, got {value}")


def _check_lease_id(lease_id: str) -> None:
    if not lease_id:
        raise InvalidArgument("lease_id", "required")
    if len(lease_id) > 64:
        raise InvalidArgument("lease_id", "longer than 64 characters")


def _check_labels(labels: Mapping[str, str]) -> None:
    if len(labels) > MAX_LABELS:
        raise InvalidArgument("labels", f"at most {MAX_LABELS} entries")
    for key, value in labels.items():
        if not key or len(key) > MAX_LABEL_TEXT or len(value) > MAX_LABEL_TEXT:
            raise InvalidArgument(
                "labels",
                f"keys must be 1-{MAX_LABEL_TEXT} and values 0-{MAX_LABEL_TEXT} characters",
            )
