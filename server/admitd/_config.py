"""Configuration: one validated pydantic model, loaded from YAML.

Every field has a default, so an empty file (or no file at all) is a working embedded setup.
Durations are written like ``120s``, ``1.5m``, ``250ms`` or ``2h`` (a bare number is seconds).
:func:`load_config` reports every problem at once, each with its path in the file, e.g.
``pools[1].tokens_per_minute: Input should be greater than 0``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import tiktoken
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def _parse_duration(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a duration like 120s, 1.5m, 250ms or 2h")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    raise ValueError(f"expected a duration like 120s, 1.5m, 250ms or 2h, got {value!r}")


Seconds = Annotated[float, BeforeValidator(_parse_duration)]
"""A duration in seconds, written in the file as ``120s``, ``2m``, ``250ms`` or a number."""

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Price(_Model):
    """USD per million tokens."""

    input_per_million: float = Field(0.0, ge=0)
    """Price of a million input tokens."""
    output_per_million: float = Field(0.0, ge=0)
    """Price of a million output tokens."""


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
    encoding: str = "o200k_base"
    """tiktoken encoding used to count ``prompt`` when ``input_tokens`` is not given."""
    price: Price = Price()
    """Price table, for USD budgets."""


class TenantConfig(_Model):
    """A team, customer or API key sharing the pools. Absent limit = none."""

    name: str = Field(min_length=1, max_length=200)
    """Tenant name callers send."""
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


class BudgetConfig(_Model):
    """Global ceilings across all tenants and pools (UTC day). Absent = none."""

    tokens_per_day: PositiveInt | None = None
    """Tokens admitted per day, all tenants together."""
    usd_per_day: PositiveFloat | None = None
    """USD admitted per day, all tenants together."""


class LeaseConfig(_Model):
    ttl: Seconds = Field(120.0, gt=0)
    """A lease not released or renewed within this time is reclaimed (full reservation charged)."""
    max_extend: Seconds = Field(3600.0, gt=0)
    """Largest ``extend_by`` a Renew may ask for."""
    reap_interval: Seconds = Field(1.0, gt=0)
    """How often expired leases are looked for."""


class QueueConfig(_Model):
    max_length: int = Field(10_000, ge=0)
    """Waiters across all pools; beyond it Acquire is rejected with QUEUE_FULL."""
    max_per_tenant: int = Field(1_000, ge=0)
    """Waiters per tenant (unless the tenant sets ``max_queued``)."""
    max_wait: Seconds = Field(60.0, ge=0)
    """Upper bound on any ``wait_timeout``."""
    aging: Seconds = Field(10.0, gt=0)
    """A waiter climbs one priority class per this much waiting, so no class starves."""


class BackendConfig(_Model):
    kind: Literal["memory"] = "memory"
    """Where state lives. ``memory``: this process only."""


class Settings(_Model):
    """The whole configuration file."""

    listen: str = "0.0.0.0:50051"
    """gRPC address, ``host:port``."""
    drain_delay: Seconds = Field(2.0, ge=0)
    """On SIGTERM: how long the port stays open while draining (health NOT_SERVING, Acquire
    UNAVAILABLE, Release/Renew still served) so load balancers move callers elsewhere."""
    shutdown_grace: Seconds = Field(10.0, ge=0)
    """After the drain delay, how long in-flight RPCs get to finish before the port closes."""
    backend: BackendConfig = BackendConfig()
    lease: LeaseConfig = LeaseConfig()
    queue: QueueConfig = QueueConfig()
    budget: BudgetConfig = BudgetConfig()
    pools: list[PoolConfig] = Field(
        default_factory=lambda: [PoolConfig(name="default")], min_length=1
    )
    tenants: list[TenantConfig] = Field(default_factory=lambda: [TenantConfig(name="default")])
    default_tenant: str | None = None
    """Tenant whose limits apply to callers naming an unknown (or no) tenant; null = reject."""

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        problems = []
        problems += _duplicates("pools", [p.name for p in self.pools])
        problems += _duplicates("tenants", [t.name for t in self.tenants])
        known = set(tiktoken.list_encoding_names())
        for i, pool in enumerate(self.pools):
            if pool.encoding not in known:
                problems.append(
                    f"pools[{i}].encoding: unknown tiktoken encoding {pool.encoding!r}"
                    f" (known: {', '.join(sorted(known))})"
                )
        names = {t.name for t in self.tenants}
        if self.default_tenant is not None and self.default_tenant not in names:
            problems.append(f"default_tenant: {self.default_tenant!r} is not a tenant")
        if not _valid_listen(self.listen):
            problems.append(f"listen: expected host:port, got {self.listen!r}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def pool(self, name: str) -> PoolConfig | None:
        return next((p for p in self.pools if p.name == name), None)

    def tenant(self, name: str) -> TenantConfig | None:
        return next((t for t in self.tenants if t.name == name), None)


def _duplicates(section: str, names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    problems = []
    for i, name in enumerate(names):
        if name in seen:
            problems.append(f"{section}[{i}].name: duplicate {name!r} (also {section}[{seen[name]}])")
        seen.setdefault(name, i)
    return problems


def _valid_listen(listen: str) -> bool:
    host, sep, port = listen.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 <= int(port) <= 65535)


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


class ConfigError(Exception):
    """A configuration file that cannot be used; ``problems`` lists each with its path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))


def parse_config(data: Any, source: str = "<config>") -> Settings:
    """Validate already-parsed YAML data (``None`` means an empty file)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [f"(top level): expected a mapping, got {type(data).__name__}"])
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, [p for err in exc.errors() for p in _describe(err)]) from None


def load_config(path: str | Path) -> Settings:
    """Read and validate a YAML file; raises :class:`ConfigError` listing every problem."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(source, [f"(file): {exc.strerror or exc}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"(yaml): {exc}"]) from None
    return parse_config(data, source)


def _describe(error: Any) -> list[str]:
    path = ""
    for part in error.get("loc", ()):
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if error.get("type") == "value_error" and not path:
        # Cross-field checks name their own paths and come joined by "; ".
        return message.split("; ")
    if error.get("type") == "extra_forbidden":
        message = "unknown field"
    return [f"{path or '(top level)'}: {message}"]
