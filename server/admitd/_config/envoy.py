"""The ``envoy:`` section: how Envoy's rate limit requests name admitd's tenants and pools.

Envoy's global rate limit filter sends a ``domain`` and a list of *descriptors*, each a list of
``(key, value)`` entries its actions built from the request (a header, a constant, metadata).
Each configured domain says which entry names the tenant, which the pool, and which marks a
usage report sent after the call; the checks between this section and the rest of the file
(tenants and pools that exist) are :func:`envoy_problems`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, model_validator

from .base import StrictModel

Unmatched = Literal["ok", "over_limit"]

_KEY = Field(None, min_length=1, max_length=200)


class EnvoyDomain(StrictModel):
    """One ``domain`` of Envoy's rate limit filter and how its descriptors map."""

    name: str = Field(min_length=1, max_length=200)
    """The filter's ``domain`` (``RateLimitRequest.domain``); unique in this list."""
    tenant_key: str | None = _KEY
    """Descriptor entry key whose value is the tenant, e.g. ``tenant`` from a
    ``request_headers`` action on ``x-tenant``."""
    tenant: str | None = Field(None, min_length=1, max_length=200)
    """The tenant of a descriptor without a ``tenant_key`` entry; null: the tenant of the
    caller's API key when it is bound to one, else the server's ``default_tenant``."""
    pool_key: str | None = _KEY
    """Descriptor entry key whose value is the pool, e.g. ``model``."""
    pool: str | None = Field(None, min_length=1, max_length=200)
    """The pool of a descriptor without a ``pool_key`` entry; null: such a descriptor is
    unmatched."""
    report_key: str | None = _KEY
    """Descriptor entry key marking a usage report sent after the call (Envoy's
    ``apply_on_stream_done``): its hits are tokens the call used, charged at once (into
    debt if need be) and never refused. The entry's value ``output`` prices them as output
    tokens, any other value as input tokens. Null: no descriptor is a report."""
    unmatched: Unmatched = "ok"
    """A descriptor naming no pool, or a tenant or pool that is not configured: ``ok``
    (no limit applies, Envoy's convention) or ``over_limit`` (refused, no retry time)."""

    @model_validator(mode="after")
    def _keys_differ(self) -> EnvoyDomain:
        keys = [k for k in (self.tenant_key, self.pool_key, self.report_key) if k is not None]
        if len(keys) != len(set(keys)):
            raise ValueError("tenant_key, pool_key and report_key must be different keys")
        if self.pool_key is None and self.pool is None:
            raise ValueError("set pool_key or pool: every descriptor must name a pool")
        return self


class EnvoyConfig(StrictModel):
    """Envoy's rate limit service (``envoy.service.ratelimit.v3.RateLimitService``), served
    on the gRPC port beside Admission."""

    domains: list[EnvoyDomain] = Field(default_factory=list)
    """The domains admitd answers for, each with its descriptor mapping."""
    unknown_domain: Unmatched = "ok"
    """A request for a domain not listed: ``ok`` (no limit applies) or ``over_limit``."""

    def domain(self, name: str) -> EnvoyDomain | None:
        return next((d for d in self.domains if d.name == name), None)


def envoy_problems(data: Mapping[str, Any], tenants: list[str] | None) -> list[str]:
    """Checks between ``envoy.domains`` and the rest of the (possibly invalid) file data:
    unique domains, fixed tenants and pools that exist.
    ``tenants`` is None when the tenant list cannot be read."""
    envoy = data.get("envoy")
    domains = envoy.get("domains") if isinstance(envoy, Mapping) else None
    if not isinstance(domains, list):
        return []
    pools = data.get("pools")
    pool_names = None
    if isinstance(pools, list):
        pool_names = [p.get("name") for p in pools if isinstance(p, Mapping)]
    problems: list[str] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(domains):
        if not isinstance(entry, Mapping):
            continue
        where = f"envoy.domains[{i}]"
        name = entry.get("name")
        if isinstance(name, str):
            if name in seen:
                first = f"envoy.domains[{seen[name]}]"
                problems.append(f"{where}.name: duplicate {name!r} (also {first})")
            seen.setdefault(name, i)
        tenant, pool = entry.get("tenant"), entry.get("pool")
        if isinstance(tenant, str) and tenants is not None and tenant not in tenants:
            known = ", ".join(repr(n) for n in tenants) or "none"
            problems.append(f"{where}.tenant: {tenant!r} is not a tenant (tenants: {known})")
        if isinstance(pool, str) and pool_names is not None and pool not in pool_names:
            known = ", ".join(repr(n) for n in pool_names if isinstance(n, str)) or "none"
            problems.append(f"{where}.pool: {pool!r} is not a pool (pools: {known})")
    return problems
