"""Checks between config entries: unique names, references that resolve (default tenant,
tiers, clients' tenants), credentials that can work.

They read plain, possibly invalid, data and skip what they cannot read, so a file with field
problems gets these reported too, in the same round (``load.parse_config``); the
``Settings`` model runs them on valid data, so settings built in code are checked as well.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .envoy import envoy_problems


def cross_problems(data: Mapping[str, Any]) -> list[str]:
    """Checks between entries: unique pool and tenant names, ``default_tenant`` is a tenant.

    They read plain (possibly invalid) data and skip what they cannot read, so a file with
    field problems gets these reported too, instead of one round of fixes per kind.
    """
    problems: list[str] = []
    for section in ("pools", "tiers", "tenants"):
        seen: dict[str, int] = {}
        for i, name in _names(data.get(section)):
            if name in seen:
                problems.append(
                    f"{section}[{i}].name: duplicate {name!r} (also {section}[{seen[name]}])"
                )
            seen.setdefault(name, i)
    default = data.get("default_tenant")
    tenants = data.get("tenants")
    names = [name for _, name in _names(tenants)]
    readable = isinstance(tenants, list) and len(names) == len(tenants)
    tier_names = [name for _, name in _names(data.get("tiers"))]
    for i, tenant in enumerate(tenants if isinstance(tenants, list) else []):
        tier = tenant.get("tier") if isinstance(tenant, Mapping) else None
        if isinstance(tier, str) and tier not in tier_names:
            shown = ", ".join(repr(n) for n in tier_names) or "none"
            problems.append(f"tenants[{i}].tier: {tier!r} is not a tier (tiers: {shown})")
    known = ", ".join(repr(n) for n in names) or "none"
    if isinstance(default, str) and readable and default not in names:
        problems.append(f"default_tenant: {default!r} is not a tenant (tenants: {known})")
    auth = data.get("auth")
    if isinstance(auth, Mapping):
        clients = auth.get("clients") or []
        if isinstance(clients, list):
            problems += _client_problems(clients, names if readable else None, data.get("tls"))
        if auth.get("allow_anonymous") is False and not clients:
            problems.append("auth.allow_anonymous: false with no auth.clients lets nobody in")
    problems += envoy_problems(data, names if readable else None)
    return problems


def _client_problems(clients: list[Any], tenants: list[str] | None, tls: Any) -> list[str]:
    problems: list[str] = []
    seen: dict[tuple[str, Any], int] = {}
    mutual_tls = isinstance(tls, Mapping) and tls.get("client_ca_file") is not None
    for i, client in enumerate(clients):
        if not isinstance(client, Mapping):
            continue
        for field in ("name", "api_key_sha256", "cert_common_name"):
            value = client.get(field)
            if not isinstance(value, str):
                continue
            if (field, value) in seen:
                shown = "" if field == "api_key_sha256" else f" {value!r}"  # never a hash
                first = seen[(field, value)]
                problems.append(
                    f"auth.clients[{i}].{field}: duplicate{shown} (also auth.clients[{first}])"
                )
            seen.setdefault((field, value), i)
        tenant = client.get("tenant")
        if isinstance(tenant, str) and tenants is not None and tenant not in tenants:
            known = ", ".join(repr(n) for n in tenants) or "none"
            problems.append(
                f"auth.clients[{i}].tenant: {tenant!r} is not a tenant (tenants: {known})"
            )
        if client.get("cert_common_name") is not None and not mutual_tls:
            problems.append(
                f"auth.clients[{i}].cert_common_name: needs tls.client_ca_file (mutual TLS)"
            )
    return problems


def _names(entries: Any) -> list[tuple[int, str]]:
    if not isinstance(entries, list):
        return []
    return [
        (i, entry["name"])
        for i, entry in enumerate(entries)
        if isinstance(entry, Mapping) and isinstance(entry.get("name"), str)
    ]
