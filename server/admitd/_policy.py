"""Admission policy in one place: which limits a call must fit, what it costs, and what a
caller is told when it gets no lease (reason, message, retry delay). The words are the
policy's own sibling's, ``_refusals.py``, where every refusal text of the core is written
(field validation messages are ``_requests.py``'s). Everything here is pure and reads the
config; state lives in the backend, waiting in the engine."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._config import PoolConfig, Settings, TenantConfig
from ._errors import NotFound, Reason, Rejected
from ._model import (
    GAUGE,
    NANO_USD,
    TOKEN,
    Aimd,
    Breaker,
    Denial,
    Gate,
    Kind,
    Limit,
    Outcome,
    QueueFull,
    Scope,
    TicketEnd,
    Unit,
    limit_key,
)
from ._refusals import (
    GATE_STATES,
    MIN_RETRY,
    amount_text,
    describe,
    limit_metadata,
    reason,
)
from ._usage import NANO_PER_USD, Prices, Unreported

DAY = 86_400.0
# A slot's holder is expected no sooner than this: one about to end gets a moment more.
MIN_SLOT_WAIT = 0.05
UNCHECKED_PREFIX = "unchecked-"  # lease ids granted by fail_open without the store


@dataclass(frozen=True, slots=True)
class QueueEstimate:
    """Where a waiter stands and when it can expect its grant."""

    position: int  # waiters served before it
    depth: int  # waiters in its pool's queue
    wait: float  # estimated seconds until its grant

    def metadata(self) -> dict[str, str]:
        return {
            "queue_position": str(self.position),
            "queue_depth": str(self.depth),
            "estimated_wait_seconds": f"{self.wait:.3f}",
        }


def wait_estimate(position: int, grants_per_second: float | None, first_grant_in: float) -> float:
    """Seconds until a waiter with ``position`` waiters ahead of it is granted.

    At the pool's recent grant rate when there is one (it already reflects how long leases
    are held and how fast buckets refill); before any grant, ``first_grant_in`` (when the
    blocking limit frees, or a typical hold) for each waiter up to and including it.
    """
    if grants_per_second:
        return max(MIN_RETRY, (position + 1) / grants_per_second)
    return max(MIN_RETRY, first_grant_in * (position + 1))


def nano_usd_per_token(per_million: float) -> float:
    """USD per million tokens -> nano-USD per token."""
    return per_million * NANO_PER_USD / 1_000_000


def prices(pool: PoolConfig) -> Prices:
    """A pool's price table in nano-USD per token; cached and cache-write input cost what
    input costs unless the table says otherwise."""
    price = pool.price
    cached, write = price.cached_input_per_million, price.cache_write_input_per_million
    return Prices(
        input=nano_usd_per_token(price.input_per_million),
        output=nano_usd_per_token(price.output_per_million),
        cached_input=nano_usd_per_token(price.input_per_million if cached is None else cached),
        cache_write_input=nano_usd_per_token(price.input_per_million if write is None else write),
    )


def unreported(outcome: Outcome) -> Unreported:
    """What a release that reports no usage is charged, by how the call ended.

    OK: the full reservation (the call ran; nothing says it used less). A provider 429 or
    529 (PROVIDER_RATE_LIMITED) or a provider error: nothing, as providers do not bill a
    request they refused or failed. A timeout or a cancellation: the reservation's input,
    as the prompt was sent and may have been processed; output only as reported (a stream
    cut short reports what it had produced).
    """
    if outcome is Outcome.OK:
        return Unreported.RESERVATION
    if outcome in (Outcome.TIMEOUT, Outcome.CANCELLED):
        return Unreported.INPUT
    return Unreported.NOTHING


class Policy:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pools = {pool.name: pool for pool in settings.pools}
        self.tenants = {tenant.name: tenant for tenant in settings.effective_tenants()}
        """Every tenant by name, its tier's weight and limits filled in."""
        self._limits: dict[tuple[str, str], tuple[Limit, ...]] = {}
        self._by_key = {limit.key: limit for limit in self.all_limits()}

    def limits(self, pool: PoolConfig, tenant: TenantConfig) -> tuple[Limit, ...]:
        """The limits a call of ``tenant`` to ``pool`` must fit (built once per pair)."""
        key = (pool.name, tenant.name)
        limits = self._limits.get(key)
        if limits is None:
            limits = self._limits[key] = self._build_limits(pool, tenant)
        return limits

    def _build_limits(self, pool: PoolConfig, tenant: TenantConfig) -> tuple[Limit, ...]:
        """Order matters: daily quotas first (a call that cannot fit today is refused, never
        queued), then the pool's limits (they stop the queue), then the tenant's (they only
        hold back that tenant)."""
        return (
            *_limits_of(Scope.GLOBAL, "", self.settings.budget, _DAILY),
            *_limits_of(Scope.POOL, pool.name, pool, _DAILY),
            *_limits_of(Scope.TENANT, tenant.name, tenant, _DAILY),
            *_limits_of(Scope.POOL, pool.name, pool, _FLOW),
            *_limits_of(Scope.TENANT, tenant.name, tenant, _FLOW),
        )

    def gates(self) -> list[Gate]:
        """Every pool's gate: its AIMD and circuit breaker settings (a pause needs none)."""
        gates = []
        for pool in self.settings.pools:
            a, b = pool.adaptive, pool.breaker
            aimd = Aimd(a.decrease, a.increase, a.floor, a.cooldown) if a is not None else None
            breaker = None
            if b is not None:
                breaker = Breaker(
                    b.failure_rate, b.min_calls, b.window, b.open_for, b.half_open_probes
                )
            gates.append(Gate(pool.name, aimd, breaker))
        return gates

    def shadow_reason(self, key: str) -> Reason | None:
        """The reason a shadow-mode limit would have refused with."""
        limit = self._by_key.get(key)
        return reason(limit) if limit is not None else None

    def all_limits(self) -> list[Limit]:
        """Every limit of the config, each once (for status)."""
        limits = _limits_of(Scope.GLOBAL, "", self.settings.budget, _DAILY)
        for pool in self.settings.pools:
            limits += _limits_of(Scope.POOL, pool.name, pool, _DAILY + _FLOW)
        for tenant in self.tenants.values():
            limits += _limits_of(Scope.TENANT, tenant.name, tenant, _DAILY + _FLOW)
        return limits

    @staticmethod
    def never_fits(limits: tuple[Limit, ...], tokens: int, nano_usd: int) -> Rejected | None:
        """A call bigger than a bucket's capacity or a whole day's quota can never be admitted
        (a shadow-mode limit lets it through: it never refuses)."""
        for limit in limits:
            if limit.kind is GAUGE or limit.shadow:  # GAUGE, not Kind.GAUGE: see _model.py
                continue
            unit = limit.unit
            amount = tokens if unit is TOKEN else nano_usd if unit is NANO_USD else 1
            if amount > limit.capacity:
                return Rejected(
                    reason(limit),
                    f"{describe(limit)} is {amount_text(limit, limit.capacity)}; this call needs"
                    f" {amount_text(limit, amount)} and can never fit",
                    retry_after=None,
                    metadata=limit_metadata(limit, amount),
                )
        return None

    def rejection(self, denial: Denial, *, wall: float, hold_time: float | None) -> Rejected:
        """Why a call did not fit now, and when a retry can succeed: once it fits every
        limit it did not fit (``denial`` and ``denial.also``), as things stand. The limit
        that takes longest names the refusal (the first in check order among equals), an
        open circuit always (it refuses at once, for callers to fall back elsewhere); the
        others are listed in the ``also`` metadata."""
        denials = (denial, *denial.also)
        waits = [self.retry_after(d, wall=wall, hold_time=hold_time) for d in denials]
        retry = max(waits)
        binding = max(range(len(denials)), key=lambda i: (denials[i].cause == "open", waits[i], -i))
        refusal = _refusal(denials[binding], retry)
        others = [d.limit.key for i, d in enumerate(denials) if i != binding]
        if others:
            refusal.metadata["also"] = ",".join(others)
        return refusal

    def retry_after(self, denial: Denial, *, wall: float, hold_time: float | None) -> float:
        """Seconds until the denied limit can fit the call, from the state that denied it,
        rounded up to the microsecond.

        Gates: the time they stay shut. Buckets: the exact refill time of the deficit.
        Daily quotas: the next UTC midnight. Concurrency: when the holder of the slot it
        needs is expected to end (``denial.ends``: its grant time plus the gauge's typical
        hold, else its expiry), at least :data:`MIN_SLOT_WAIT`; without that (a queue's
        blocking limit), the time between releases with ``level`` leases each held
        ``hold_time`` (the lease TTL before any release).
        """
        limit = denial.limit
        if limit.kind is Kind.GATE:
            return _hint(denial.level)
        if limit.kind is Kind.BUCKET:
            return _hint((denial.amount - denial.level) / limit.rate)
        if limit.kind is Kind.DAILY:
            return _hint(DAY - wall % DAY)
        need = math.ceil(denial.level + denial.amount - limit.capacity)
        if 0 < need <= len(denial.ends):
            return _hint(max(MIN_SLOT_WAIT, denial.ends[need - 1]))
        hold = hold_time if hold_time is not None else self.settings.lease.ttl
        return _hint(hold / max(1.0, denial.level))

    @staticmethod
    def queue_full(full: QueueFull, *, retry_after: float, estimate: QueueEstimate) -> Rejected:
        """The queue has no room. ``estimate``: a waiter joining the back of the pool's
        queue now; a retry can succeed once a waiter ahead has been served."""
        where = "the queue" if full.scope == "global" else "this tenant's queue"
        return Rejected(
            Reason.QUEUE_FULL,
            f"{where} is full ({full.depth} of {full.limit} waiting); a waiter joining now"
            f" would wait about {estimate.wait:.1f}s",
            retry_after=retry_after,
            metadata={"scope": full.scope, "limit": str(full.limit), **estimate.metadata()},
        )

    @staticmethod
    def queue_timeout(
        waited: float,
        *,
        retry_after: float,
        blocked_by: Denial | None,
        estimate: QueueEstimate | None,
    ) -> Rejected:
        """Not admitted in time. ``estimate``: where the waiter stood when it gave up."""
        metadata = {"waited_seconds": f"{waited:.3f}"}
        detail = ""
        if estimate is not None:
            metadata.update(estimate.metadata())
            detail = f" ({estimate.position} ahead, about {estimate.wait:.1f}s more)"
        if blocked_by is not None:
            metadata.update(limit_metadata(blocked_by.limit, blocked_by.amount))
            detail += f"; the queue is held by {describe(blocked_by.limit)}"
        return Rejected(
            Reason.QUEUE_TIMEOUT,
            f"not admitted within {waited:.3f}s of waiting{detail}",
            retry_after=retry_after,
            metadata=metadata,
        )

    def ticket_ended(
        self, ticket_id: str, end: TicketEnd | None, *, wall: float
    ) -> NotFound | Rejected:
        """Why a ticket has neither a place in the queue nor a lease (``end`` None: unknown,
        or it ended over a lease TTL ago): the rejection an Acquire would have got."""
        if end is None:
            return NotFound(
                "ticket_id", f"no ticket {ticket_id!r}: unknown, or ended over a lease TTL ago"
            )
        if end.kind == "rejected" and end.denial is not None:
            return self.rejection(end.denial, wall=wall, hold_time=None)
        if end.kind == "timeout":
            wait = self.settings.queue.ticket_max_wait
            return Rejected(
                Reason.QUEUE_TIMEOUT,
                f"ticket {ticket_id!r} was not admitted within its wait (at most {wait:g}s)",
                retry_after=MIN_RETRY,  # enqueue again; it waits its turn like anyone
                metadata={"ticket_id": ticket_id},
            )
        if end.kind == "unclaimed":
            claim = self.settings.queue.ticket_claim_timeout
            return NotFound(
                "ticket_id",
                f"ticket {ticket_id!r} was granted but not claimed within {claim:g}s;"
                " its reservation went back to the pool",
            )
        return NotFound("ticket_id", f"ticket {ticket_id!r} was cancelled")


def _refusal(denial: Denial, retry: float) -> Rejected:
    """The refusal naming ``denial``'s limit, with the delay after which the call fits."""
    limit = denial.limit
    if limit.kind is Kind.GATE:
        return Rejected(
            Reason.POOL_UNAVAILABLE,
            f"pool {limit.owner!r} {GATE_STATES.get(denial.cause, 'is unavailable')}",
            retry_after=retry,
            metadata={"scope": "pool", "pool": limit.owner, "cause": denial.cause},
        )
    if limit.kind is Kind.GAUGE:
        state = f"all {limit.capacity:g} slots are in use"
    elif limit.kind is Kind.BUCKET:
        state = (
            f"{amount_text(limit, max(0.0, denial.level))} left, this call needs"
            f" {amount_text(limit, denial.amount)}"
        )
    else:
        left = max(0.0, limit.capacity - denial.level)
        needs = amount_text(limit, denial.amount)
        state = f"{amount_text(limit, left)} left today, this call needs {needs}"
    return Rejected(
        reason(limit),
        f"{describe(limit)} reached: {state}",
        retry_after=retry,
        metadata=limit_metadata(limit, denial.amount),
    )


def _hint(seconds: float) -> float:
    """A retry delay: rounded up to the microsecond (float noise below a nanosecond aside,
    so that 30 s stays 30 s), at least :data:`MIN_RETRY`."""
    return max(MIN_RETRY, math.ceil(round(seconds * 1e6, 3)) / 1e6)


# The limit fields shared by budget, pool and tenant configs: (field, kind, unit).
_DAILY = (
    ("tokens_per_day", Kind.DAILY, Unit.TOKEN),
    ("usd_per_day", Kind.DAILY, Unit.NANO_USD),
)
_FLOW = (
    ("max_concurrency", Kind.GAUGE, Unit.SLOT),
    ("tokens_per_minute", Kind.BUCKET, Unit.TOKEN),  # a bucket holds one minute's worth
    ("requests_per_minute", Kind.BUCKET, Unit.REQUEST),
)


def _limits_of(
    scope: Scope, owner: str, source: object, fields: tuple[tuple[str, Kind, Unit], ...]
) -> list[Limit]:
    """The configured (non-null) limits among ``fields`` of one budget, pool or tenant."""
    limits = []
    for name, kind, unit in fields:
        value: float | None = getattr(source, name)
        if value is None:
            continue
        capacity = float(round(value * NANO_PER_USD)) if unit is Unit.NANO_USD else float(value)
        rate = capacity / 60.0 if kind is Kind.BUCKET else 0.0
        key = limit_key(scope, owner, name)
        shadow = bool(getattr(source, "shadow", False))
        limits.append(Limit(key, kind, unit, scope, name, owner, capacity, rate, shadow))
    return limits
