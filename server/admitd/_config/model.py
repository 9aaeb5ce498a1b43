"""Configuration: one validated pydantic model (loaded from YAML by ``load.py``).

Every field has a default, so an empty file (or no file at all) is a working embedded setup.
Durations are written like ``120s``, ``1.5m``, ``250ms`` or ``2h`` (a bare number is seconds;
the field types are in ``fields.py``). Checks between entries are in ``checks.py``; the
``tls:`` and ``auth:`` sections are in ``access.py``, ``envoy:`` in ``envoy.py``.

Types are strict: YAML already knows numbers from strings, so ``max_concurrency: "10"`` or
``max_concurrency: yes`` is a mistake worth reporting rather than a value to coerce.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from .access import AuthConfig, TLSConfig
from .base import StrictModel
from .checks import cross_problems
from .envoy import EnvoyConfig
from .fields import (
    KnownEncoding,
    PositiveFloat,
    PositiveInt,
    Seconds,
    validate_listen,
)


class _Model(StrictModel):
    """The settings models of this module (the shared strict base, ``base.py``)."""


class Price(_Model):
    """USD per million tokens."""

    input_per_million: float = Field(0.0, ge=0)
    """Price of a million input tokens."""
    output_per_million: float = Field(0.0, ge=0)
    """Price of a million output tokens."""
    cached_input_per_million: float | None = Field(None, ge=0)
    """Price of a million input tokens read from the provider's prompt cache (OpenAI's
    ``cached_tokens``, Anthropic's ``cache_read_input_tokens``); null: the input price."""
    cache_write_input_per_million: float | None = Field(None, ge=0)
    """Price of a million input tokens written to the provider's prompt cache (Anthropic's
    ``cache_creation_input_tokens``); null: the input price. A reservation prices its
    input at the dearer of this and the input price, so a call never settles dearer."""


class AdaptiveConfig(_Model):
    """AIMD on a pool's effective concurrency and rates, from the outcomes callers report
    at Release (shared by all replicas through the store)."""

    decrease: float = Field(0.5, gt=0, lt=1)
    """A provider 429 multiplies the effective limits by this."""
    increase: float = Field(0.02, gt=0, le=1)
    """Each successful call adds back this fraction of the configured limits."""
    floor: float = Field(0.05, gt=0, le=1)
    """The effective limits never go below this fraction of the configured ones."""
    cooldown: Seconds = Field(1.0, ge=0)
    """At most one decrease per this long: a burst of 429s from one overload is one step."""


class BreakerConfig(_Model):
    """A circuit breaker on a pool, from the outcomes callers report at Release."""

    failure_rate: float = Field(0.5, gt=0, le=1)
    """Opens when this share of calls end in a provider error or timeout..."""
    min_calls: PositiveInt = 20
    """...over at least this many calls..."""
    window: Seconds = Field(30.0, gt=0)
    """...in a sliding window this long."""
    open_for: Seconds = Field(30.0, gt=0)
    """Open: every call is refused (POOL_UNAVAILABLE) this long, then it is half-open."""
    half_open_probes: PositiveInt = 3
    """Half-open: this many calls go through at once; one success closes, one failure
    opens it again."""


class PoolConfig(_Model):
    """One provider deployment (account x model) with its own limits. Absent limit = none."""

    name: str = Field(min_length=1, max_length=200)
    """Pool name callers use, e.g. ``openai/gpt-4o``."""
    max_concurrency: PositiveInt | None = None
    """Calls in flight at once."""
    tokens_per_minute: PositiveInt | None = None
    """Token bucket: capacity one minute of tokens, refilled continuously."""
    requests_per_minute: PositiveInt | None = None
    """Request bucket: capacity one minute of requests, refilled continuously."""
    tokens_per_day: PositiveInt | None = None
    """This pool's share of the daily budget, in tokens (UTC day)."""
    usd_per_day: PositiveFloat | None = None
    """This pool's share of the daily budget, in USD (UTC day)."""
    encoding: KnownEncoding = "o200k_base"
    """tiktoken encoding used to count ``prompt`` when ``input_tokens`` is not given."""
    adaptive: AdaptiveConfig | None = None
    """AIMD on this pool's concurrency and rates from reported outcomes; null: off."""
    breaker: BreakerConfig | None = None
    """Circuit breaker on this pool's error and timeout rate; null: off."""
    shadow: bool = False
    """Shadow mode: this pool's limits are checked and counted (a lease past them still
    takes its share) but never refuse; a call they would refuse is logged, counted
    (``admitd_shadow_rejections_total``) and marked in its lease. For rolling out limits."""
    price: Price = Price()
    """Price table, for USD budgets."""


class _TenantLimits(_Model):
    """Weight and limits of a tenant; a tier holds the same fields for its tenants."""

    weight: PositiveFloat = 1.0
    """Fair share against other tenants waiting in the same queue."""
    max_concurrency: PositiveInt | None = None
    """Calls in flight at once, across pools."""
    tokens_per_minute: PositiveInt | None = None
    """Token bucket across pools."""
    requests_per_minute: PositiveInt | None = None
    """Request bucket across pools."""
    tokens_per_day: PositiveInt | None = None
    """Daily token quota (UTC day)."""
    usd_per_day: PositiveFloat | None = None
    """Daily spend quota in USD (UTC day)."""
    max_queued: PositiveInt | None = None
    """Waiters this tenant may have queued; default ``queue.max_per_tenant``."""
    shadow: bool = False
    """Shadow mode for this tenant's own limits: checked and counted, never refusing (see
    ``pools[].shadow``). Pool limits and the global budget still apply."""


TENANT_LIMIT_FIELDS = tuple(_TenantLimits.model_fields)


class TierConfig(_TenantLimits):
    """A named set of weight and limits (e.g. free, pro, enterprise) that tenants share by
    naming it, so hundreds of tenants need not repeat them. Each tenant gets the tier's
    limits for itself; a tier is not a pool shared by its tenants."""

    name: str = Field(min_length=1, max_length=200)
    """Tier name tenants refer to."""


class TenantConfig(_TenantLimits):
    """A team, customer or API key sharing the pools. Absent limit = none (or the tier's)."""

    name: str = Field(min_length=1, max_length=200)
    """Tenant name callers send."""
    tier: str | None = None
    """Tier whose weight and limits apply to every field this entry does not set itself."""

    def with_tier(self, tier: TierConfig) -> TenantConfig:
        """The effective tenant: this entry's own fields, the tier's for the rest."""
        inherited = {
            name: getattr(tier, name)
            for name in TENANT_LIMIT_FIELDS
            if name not in self.model_fields_set and name in tier.model_fields_set
        }
        return self.model_copy(update=inherited)


class BudgetConfig(_Model):
    """Global ceilings across all tenants and pools (UTC day). Absent = none."""

    tokens_per_day: PositiveInt | None = None
    """Tokens admitted per day, all tenants together."""
    usd_per_day: PositiveFloat | None = None
    """USD admitted per day, all tenants together."""


class LeaseConfig(_Model):
    """How long a granted reservation lives without news from its holder."""

    ttl: Seconds = Field(120.0, gt=0)
    """A lease not released or renewed within this time is reclaimed (full reservation charged)."""
    max_extend: Seconds = Field(3600.0, gt=0)
    """Largest ``extend_by`` a Renew may ask for."""
    reap_interval: Seconds = Field(1.0, gt=0)
    """How often expired leases are looked for."""
    max_shared_result: int = Field(65_536, ge=0, le=4 * 1024 * 1024)
    """Largest result (bytes) a dedup leader may share with its followers at Release."""


class QueueConfig(_Model):
    """Bounds on waiting callers."""

    max_length: int = Field(10_000, ge=0)
    """Waiters across all pools; beyond it Acquire is rejected with QUEUE_FULL."""
    max_per_tenant: int = Field(1_000, ge=0)
    """Waiters per tenant (unless the tenant sets ``max_queued``)."""
    max_wait: Seconds = Field(60.0, ge=0)
    """Upper bound on any ``wait_timeout``."""
    aging: Seconds = Field(10.0, gt=0)
    """A waiter climbs one priority class per this much waiting, so no class starves."""
    update_interval: Seconds = Field(1.0, gt=0)
    """How often a streamed wait (``AcquireStream``) looks at its queue position."""
    ticket_max_wait: Seconds = Field(3600.0, gt=0)
    """Longest (and default) wait of a deferred ticket (``Enqueue``) in the queue."""
    ticket_claim_timeout: Seconds = Field(30.0, gt=0)
    """A granted ticket not claimed (``GetTicket``/``WaitTicket``) within this time goes
    back to the pool."""


class BackendConfig(_Model):
    """Where admission state lives."""

    kind: Literal["memory", "redis"] = "memory"
    """``memory``: this process only. ``redis``: shared by every replica using the same
    Redis and ``key_prefix``, which then act as one admission controller."""
    url: str = "redis://localhost:6379/0"
    """Redis URL (``redis://``, ``rediss://``, ``unix://``); ignored when ``sentinels`` is set."""
    sentinels: list[str] = Field(default_factory=list)
    """Sentinel addresses ``host:port``; the primary is looked up as ``sentinel_service``."""
    sentinel_service: str = "mymaster"
    """Name of the monitored primary in Sentinel."""
    password: str | None = Field(None, repr=False)
    """Password of Redis (and of the Sentinels). Prefer the ``ADMITD_REDIS_PASSWORD``
    environment variable (e.g. from a Kubernetes Secret) to writing it here."""
    key_prefix: str = Field("admitd", min_length=1, max_length=100, pattern=r"^[^{}]+$")
    """Namespace of every key (used as the Redis Cluster hash tag)."""
    timeout: Seconds = Field(1.0, gt=0)
    """Connect and command timeout: a slow or dead Redis fails fast instead of stalling RPCs.
    Too short, and a busy host's late replies fail calls whose script did run."""
    on_store_error: Literal["fail_closed", "fail_open"] = "fail_closed"
    """Redis unreachable: ``fail_closed`` answers UNAVAILABLE (health NOT_SERVING);
    ``fail_open`` admits every call unchecked, with a warning, until Redis answers again."""
    pool_size: int = Field(64, ge=1, le=10_000)
    """Store calls in flight to Redis at once. The scripts (every Acquire and Release) share
    one connection, pipelined: the calls of one event-loop turn go out in one write; the
    few other calls take a connection each, and grant messages have one of their own. Calls
    beyond them wait for their turn instead of failing; settling calls (Release, Renew,
    claims) go first."""
    pool_timeout: Seconds = Field(1.0, gt=0)
    """Longest an Acquire waits for its turn (``pool_size``); past it the Acquire is refused with
    SERVER_OVERLOADED (nothing reserved). Settling calls wait as long as it takes."""
    heartbeat_interval: Seconds = Field(0.5, gt=0)
    """How often this replica tells Redis it is alive (the memory backend does nothing)."""
    dead_after: Seconds = Field(1.5, gt=0)
    """A replica with no heartbeat for this long is dead: its queued waiters leave the
    shared queue and grants made for them go back at once, instead of holding the slots
    until their claim times out (10 s). Each replica's own value applies to it. At least
    twice ``heartbeat_interval``, so that one late heartbeat does not end a live replica's
    waits; a replica stalled longer than this loses its waiters' places."""
    learning: bool = True
    """After the Redis primary changes (a Sentinel failover, or a restart that lost data),
    grant nothing beyond what the new primary can prove free for one ``lease.ttl``: every
    concurrency limit counts as full and every token or USD bucket starts empty, because
    leases granted in writes replication had not carried may still be running. false:
    trust the new primary at once (leases it lost may then run beside new grants)."""

    @model_validator(mode="after")
    def _beats_before_death(self) -> BackendConfig:
        if self.dead_after < 2 * self.heartbeat_interval:
            raise ValueError(
                f"dead_after ({self.dead_after:g}s) must be at least twice heartbeat_interval"
                f" ({self.heartbeat_interval:g}s): one late heartbeat must not end a live"
                " replica's waits"
            )
        return self


class OverloadConfig(_Model):
    """What a replica past its capacity does: it refuses new work at once and cheaply
    (RESOURCE_EXHAUSTED, reason SERVER_OVERLOADED, a RetryInfo; nothing reserved) instead
    of letting calls pile up unanswered. Release, Renew and the other RPCs are always served."""

    max_queue_delay: Annotated[Seconds, Field(gt=0)] | None = 0.5
    """New Acquires (and AcquireStreams, Enqueues) are refused while a call waits longer
    than this before this replica looks at it; null: never refused for load."""
    probe_interval: Seconds = Field(0.1, gt=0)
    """How often the replica times a call to itself, to measure that wait."""


class ObservabilityConfig(_Model):
    """Metrics, traces and logs."""

    metrics_listen: Annotated[str, AfterValidator(validate_listen)] | None = "0.0.0.0:9464"
    """Prometheus scrape endpoint (HTTP ``/metrics``), ``host:port``; null turns it off."""
    otlp_endpoint: str | None = None
    """OTLP/gRPC collector for traces of Acquire and Release, e.g. ``http://otel:4317``."""
    max_tenant_labels: int = Field(100, ge=1, le=10_000)
    """Distinct tenant label values on metrics; further tenants are counted as ``_other``."""
    log_format: Literal["json", "text"] = "json"
    """``json``: one structured object per line (with lease id and tenant where known)."""


def _default_pools() -> list[PoolConfig]:
    return [PoolConfig(name="default")]


def default_tenants() -> list[TenantConfig]:
    return [TenantConfig(name="default")]


class Settings(_Model):
    """The whole configuration file."""

    listen: Annotated[str, AfterValidator(validate_listen)] = "0.0.0.0:50051"
    """gRPC address, ``host:port``."""
    health_listen: Annotated[str, AfterValidator(validate_listen)] | None = None
    """A second, plaintext port serving only ``grpc.health.v1``, for probes that cannot
    speak TLS (Kubernetes' gRPC probes); null: health is served on ``listen`` only."""
    tls: TLSConfig | None = None
    """TLS (and optionally mutual TLS) on ``listen``; null: plaintext."""
    auth: AuthConfig = AuthConfig()
    """Who may call, and as which tenant."""
    drain_delay: Seconds = Field(2.0, ge=0)
    """On SIGTERM: how long the port stays open while draining (health NOT_SERVING, Acquire
    UNAVAILABLE, Release/Renew still served) so load balancers move callers elsewhere."""
    shutdown_grace: Seconds = Field(10.0, ge=0)
    """After the drain delay, how long in-flight RPCs get to finish before the port closes."""
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    """The event loop that serves every RPC: ``uvloop`` (libuv; less CPU per call) or
    ``asyncio`` (the standard library's), e.g. to rule uvloop out when chasing a problem."""
    backend: BackendConfig = BackendConfig()
    """Where admission state lives."""
    lease: LeaseConfig = LeaseConfig()
    """Lease lifetime and reclaiming."""
    queue: QueueConfig = QueueConfig()
    """Bounds on waiting callers."""
    budget: BudgetConfig = BudgetConfig()
    """Global daily ceilings."""
    overload: OverloadConfig = OverloadConfig()
    """Explicit, cheap refusals when this replica is past its capacity."""
    observability: ObservabilityConfig = ObservabilityConfig()
    """Metrics, traces and logs."""
    pools: list[PoolConfig] = Field(default_factory=_default_pools, min_length=1)
    """Provider deployments callers name in Acquire; names are unique."""
    tiers: list[TierConfig] = Field(default_factory=list)
    """Named sets of weight and limits that tenants refer to with ``tier``; names unique."""
    tenants: list[TenantConfig] = Field(default_factory=default_tenants)
    """Tenants callers name in Acquire; names are unique."""
    default_tenant: str | None = None
    """Tenant whose limits apply to callers naming an unknown (or no) tenant; null = reject."""
    envoy: EnvoyConfig = EnvoyConfig()
    """Envoy's rate limit service on the gRPC port: how its descriptors name tenants and
    pools (clients/README.md, "Gateways")."""

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        problems = cross_problems(
            self.model_dump(
                include={"pools", "tiers", "tenants", "default_tenant", "auth", "tls", "envoy"}
            )
        )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def effective_tenants(self) -> list[TenantConfig]:
        """Every tenant with its tier's fields filled in, in file order."""
        tiers = {tier.name: tier for tier in self.tiers}
        return [t.with_tier(tiers[t.tier]) if t.tier else t for t in self.tenants]

    def pool(self, name: str) -> PoolConfig | None:
        return next((p for p in self.pools if p.name == name), None)

    def tenant(self, name: str) -> TenantConfig | None:
        """The tenant named ``name``, with its tier's fields filled in."""
        return next((t for t in self.effective_tenants() if t.name == name), None)


EMBEDDED_DEFAULT = Settings(
    pools=[
        PoolConfig(
            name="default", max_concurrency=16, tokens_per_minute=200_000, requests_per_minute=600
        )
    ],
    default_tenant="default",
)
"""``admitd serve`` without ``--config``: memory backend, pool ``default``, tenant ``default``
which every caller falls back to."""
