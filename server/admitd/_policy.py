"""Admission policy in one place: which limits a call must fit, what it costs, and what a
rejection says (reason, message, retry delay). Everything here is pure and reads the config;
state lives in the backend, waiting in the engine."""

from __future__ import annotations

from ._backend import Denial, Kind, Limit, QueueFull, Scope, Unit
from ._config import PoolConfig, Settings, TenantConfig
from ._errors import Reason, Rejected

NANO_PER_USD = 1_000_000_000
MIN_RETRY = 0.001
DAY = 86_400.0


def nano_usd_per_token(per_million: float) -> float:
    """USD per million tokens -> nano-USD per token."""
    return per_million * NANO_PER_USD / 1_000_000


class Policy:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._limits: dict[tuple[str, str], tuple[Limit, ...]] = {}

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
        b = self.settings.budget
        p, t = pool, tenant
        daily = [
            _daily(Scope.GLOBAL, "", "tokens_per_day", b.tokens_per_day, Unit.TOKEN),
            _daily(Scope.GLOBAL, "", "usd_per_day", _nano(b.usd_per_day), Unit.NANO_USD),
            _daily(Scope.POOL, p.name, "tokens_per_day", p.tokens_per_day, Unit.TOKEN),
            _daily(Scope.POOL, p.name, "usd_per_day", _nano(p.usd_per_day), Unit.NANO_USD),
            _daily(Scope.TENANT, t.name, "tokens_per_day", t.tokens_per_day, Unit.TOKEN),
            _daily(Scope.TENANT, t.name, "usd_per_day", _nano(t.usd_per_day), Unit.NANO_USD),
        ]
        pool_limits = _flow(
            Scope.POOL, p.name, p.max_concurrency, p.tokens_per_minute, p.requests_per_minute
        )
        tenant_limits = _flow(
            Scope.TENANT, t.name, t.max_concurrency, t.tokens_per_minute, t.requests_per_minute
        )
        return tuple(x for x in (*daily, *pool_limits, *tenant_limits) if x is not None)

    def all_limits(self) -> list[Limit]:
        """Every limit of the config, each once (for status)."""
        seen: dict[str, Limit] = {}
        for pool in self.settings.pools:
            for tenant in self.settings.tenants:
                for limit in self.limits(pool, tenant):
                    seen.setdefault(limit.key, limit)
        return list(seen.values())

    @staticmethod
    def never_fits(limits: tuple[Limit, ...], tokens: int, nano_usd: int) -> Rejected | None:
        """A call bigger than a bucket's capacity or a whole day's quota can never be admitted."""
        for limit in limits:
            if limit.kind is Kind.GAUGE:
                continue
            amount = {Unit.TOKEN: tokens, Unit.NANO_USD: nano_usd}.get(limit.unit, 1)
            if amount > limit.capacity:
                return Rejected(
                    _reason(limit),
                    f"{_describe(limit)} is {_fmt(limit, limit.capacity)}; this call needs"
                    f" {_fmt(limit, amount)} and can never fit",
                    retry_after=None,
                    metadata=_metadata(limit, amount),
                )
        return None

    def rejection(self, denial: Denial, *, wall: float, hold_time: float | None) -> Rejected:
        """Why a call did not fit now, and when a retry can succeed."""
        limit = denial.limit
        retry = self.retry_after(denial, wall=wall, hold_time=hold_time)
        if limit.kind is Kind.GAUGE:
            state = f"all {limit.capacity:g} slots are in use"
        elif limit.kind is Kind.BUCKET:
            state = (
                f"{_fmt(limit, max(0.0, denial.level))} left, this call needs"
                f" {_fmt(limit, denial.amount)}"
            )
        else:
            left = max(0.0, limit.capacity - denial.level)
            state = f"{_fmt(limit, left)} left today, this call needs {_fmt(limit, denial.amount)}"
        return Rejected(
            _reason(limit),
            f"{_describe(limit)} reached: {state}",
            retry_after=retry,
            metadata=_metadata(limit, denial.amount),
        )

    def retry_after(self, denial: Denial, *, wall: float, hold_time: float | None) -> float:
        """Seconds until the denied limit can fit the call, from the state that denied it.

        Buckets: exact refill time of the deficit. Daily quotas: the next UTC midnight.
        Concurrency: the expected time to the next release, with ``in_use`` leases each held
        ``hold_time`` on average (the lease TTL while nothing has been released yet).
        """
        limit = denial.limit
        if limit.kind is Kind.BUCKET:
            return max(MIN_RETRY, (denial.amount - denial.level) / limit.rate)
        if limit.kind is Kind.DAILY:
            return max(MIN_RETRY, DAY - wall % DAY)
        hold = hold_time if hold_time is not None else self.settings.lease.ttl
        return max(MIN_RETRY, hold / max(1.0, denial.level))

    @staticmethod
    def queue_full(full: QueueFull, *, retry_after: float) -> Rejected:
        where = "the queue" if full.scope == "global" else "this tenant's queue"
        return Rejected(
            Reason.QUEUE_FULL,
            f"{where} is full ({full.depth} of {full.limit} waiting)",
            retry_after=retry_after,
            metadata={"scope": full.scope, "limit": str(full.limit)},
        )

    @staticmethod
    def queue_timeout(waited: float, *, retry_after: float, blocked_by: Denial | None) -> Rejected:
        metadata = {"waited_seconds": f"{waited:.3f}"}
        detail = ""
        if blocked_by is not None:
            metadata.update(_metadata(blocked_by.limit, blocked_by.amount))
            detail = f"; the queue is held by {_describe(blocked_by.limit)}"
        return Rejected(
            Reason.QUEUE_TIMEOUT,
            f"not admitted within {waited:.3f}s of waiting{detail}",
            retry_after=retry_after,
            metadata=metadata,
        )


def _nano(usd: float | None) -> int | None:
    return None if usd is None else round(usd * NANO_PER_USD)


def _key(scope: Scope, owner: str, name: str) -> str:
    return f"{scope.value}:{owner}:{name}" if owner else f"{scope.value}:{name}"


def _daily(scope: Scope, owner: str, name: str, cap: int | None, unit: Unit) -> Limit | None:
    if cap is None:
        return None
    return Limit(_key(scope, owner, name), Kind.DAILY, unit, scope, name, owner, float(cap))


def _flow(
    scope: Scope, owner: str, concurrency: int | None, tpm: int | None, rpm: int | None
) -> list[Limit | None]:
    return [
        None
        if concurrency is None
        else Limit(
            _key(scope, owner, "max_concurrency"),
            Kind.GAUGE,
            Unit.SLOT,
            scope,
            "max_concurrency",
            owner,
            float(concurrency),
        ),
        None
        if tpm is None
        else Limit(
            _key(scope, owner, "tokens_per_minute"),
            Kind.BUCKET,
            Unit.TOKEN,
            scope,
            "tokens_per_minute",
            owner,
            float(tpm),
            tpm / 60.0,
        ),
        None
        if rpm is None
        else Limit(
            _key(scope, owner, "requests_per_minute"),
            Kind.BUCKET,
            Unit.REQUEST,
            scope,
            "requests_per_minute",
            owner,
            float(rpm),
            rpm / 60.0,
        ),
    ]


def _reason(limit: Limit) -> Reason:
    if limit.kind is Kind.GAUGE:
        return Reason.CONCURRENCY_LIMIT
    if limit.kind is Kind.BUCKET:
        return Reason.TOKEN_RATE_LIMIT if limit.unit is Unit.TOKEN else Reason.REQUEST_RATE_LIMIT
    return Reason.TENANT_QUOTA if limit.scope is Scope.TENANT else Reason.BUDGET_EXHAUSTED


def _describe(limit: Limit) -> str:
    if limit.scope is Scope.GLOBAL:
        return f"global budget {limit.name}"
    return f"{limit.scope.value} {limit.owner!r} {limit.name}"


def _fmt(limit: Limit, amount: float) -> str:
    if limit.unit is Unit.NANO_USD:
        return f"${amount / NANO_PER_USD:.6f}"
    noun = {Unit.TOKEN: "tokens", Unit.REQUEST: "requests", Unit.SLOT: "slots"}[limit.unit]
    return f"{amount:.0f} {noun}"


def _metadata(limit: Limit, amount: float) -> dict[str, str]:
    meta = {
        "scope": limit.scope.value,
        "limit": limit.name,
        "limit_value": f"{limit.capacity:g}",
        "requested": f"{amount:g}",
    }
    if limit.unit is Unit.NANO_USD:
        meta["limit_value"] = f"{limit.capacity / NANO_PER_USD:g}"
        meta["requested"] = f"{amount / NANO_PER_USD:g}"
    if limit.owner:
        meta[limit.scope.value] = limit.owner
    return meta
