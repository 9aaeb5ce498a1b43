"""The wire schema between the Redis backend and its Lua scripts, in one place: how tickets
and limits are sent to the scripts, and how the scripts' JSON documents are read back."""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

from ..._model import (
    AcquireResult,
    DedupEnd,
    Denial,
    ExpireResult,
    FingerprintMismatch,
    Gate,
    GateView,
    Kind,
    LeaseGone,
    LeaseRecord,
    Limit,
    Look,
    NotOwner,
    Outcome,
    Progress,
    QueueFull,
    QueueSpot,
    ReleaseResult,
    Scope,
    Settlement,
    Snapshot,
    Ticket,
    TicketEnd,
    Unit,
    UsageRow,
)

# -- to the scripts ---------------------------------------------------------------------------


def limits_json(limits: list[Limit]) -> str:
    return json.dumps([limit_json(limit) for limit in limits])


def gates_json(gates: list[Gate]) -> str:
    return json.dumps([dataclasses.asdict(gate) for gate in gates])


def release_args(
    lease_id: str,
    usage: tuple[int, int] | None,
    tenant: str | None,
    outcome: Outcome,
    retry_after: float,
    result: bytes | None,
) -> tuple[str, ...]:
    """release.lua's ARGV[3..8]."""
    usage_json = "" if usage is None else json.dumps(list(usage))
    shared = base64.b64encode(result).decode() if result is not None else ""
    return (lease_id, usage_json, tenant or "", str(int(outcome)), repr(retry_after), shared)


# -- from the scripts -------------------------------------------------------------------------


def acquire_result(doc: dict[str, Any], ticket: Ticket) -> AcquireResult:
    if doc.get("mismatch"):
        raise FingerprintMismatch(ticket.idempotency_key)
    result = AcquireResult(
        queued=bool(doc.get("queued")),
        replayed=bool(doc.get("replayed")),
        waiting_on=str(doc.get("waiting_on", "")),
        follows=str(doc.get("follows", "")),
        progress=progress(doc.get("progress")),
    )
    if "lease" in doc:
        result.lease = lease(doc["lease"])
    elif "full" in doc:
        full = doc["full"]
        rate = full.get("grants_per_second")
        result.denial = QueueFull(
            full["scope"],
            int(full["depth"]),
            int(full["limit"]),
            pool_depth=int(full["pool_depth"]),
            grants_per_second=None if rate is None else float(rate),
        )
    elif "denial" in doc:
        result.denial = denial(doc["denial"])
    return result


def release_result(doc: dict[str, Any], lease_id: str) -> ReleaseResult:
    raise_lease_error(doc, lease_id)
    s = doc["settlement"]
    settlement = Settlement(
        lease=lease(s["lease"]),
        charged_tokens=int(s["charged_tokens"]),
        refunded_tokens=int(s["refunded_tokens"]),
        charged_nano_usd=int(s["charged_nano_usd"]),
        already_released=bool(s["already_released"]),
    )
    return ReleaseResult(settlement, progress(doc.get("progress")))


def expire_result(doc: dict[str, Any]) -> ExpireResult:
    expired = [lease(item) for item in as_list(doc.get("expired"))]
    next_in = doc.get("next_expiry_in")
    return ExpireResult(
        expired, progress(doc.get("progress")), None if next_in is None else float(next_in)
    )


def look(doc: dict[str, Any]) -> Look:
    if "queued" in doc:
        q = doc["queued"]
        rate = q.get("grants_per_second")
        return Look(
            queued=QueueSpot(
                tenant=str(q["tenant"]),
                pool=str(q["pool"]),
                position=int(q["position"]),
                depth=int(q["depth"]),
                grants_per_second=None if rate is None else float(rate),
                wait_left=float(q["wait_left"]),
            )
        )
    if "lease" in doc:
        return Look(lease=lease(doc["lease"]), claimed=bool(doc["claimed"]))
    if "ended" in doc:
        e = doc["ended"]
        ended_by = denial(e["denial"]) if isinstance(e.get("denial"), dict) else None
        return Look(ended=TicketEnd(e["kind"], str(e["tenant"]), ended_by))
    return Look()


def snapshot(doc: dict[str, Any]) -> Snapshot:
    def counts(name: str) -> dict[str, int]:
        return {k: int(v) for k, v in as_dict(doc.get(name)).items()}

    return Snapshot(
        levels={k: float(v) for k, v in as_dict(doc.get("levels")).items()},
        in_flight_by_pool=counts("in_flight_by_pool"),
        in_flight_by_tenant=counts("in_flight_by_tenant"),
        queued_by_pool={
            k: [int(n) for n in as_list(v)] for k, v in as_dict(doc.get("queued_by_pool")).items()
        },
        queued_by_tenant=counts("queued_by_tenant"),
        gates={
            pool: GateView(float(g["factor"]), g["circuit"], float(g["paused_for"]))
            for pool, g in as_dict(doc.get("gates")).items()
        },
    )


def usage_rows(doc: dict[str, Any]) -> list[UsageRow]:
    rows = [
        UsageRow(
            int(r["day"]),
            str(r["tenant"]),
            str(r["pool"]),
            int(r["calls"]),
            int(r["in"]),
            int(r["out"]),
            int(r["usd"]),
        )
        for r in as_list(doc.get("rows"))
    ]
    return sorted(rows, key=lambda r: (r.day, r.tenant, r.pool))


def raise_lease_error(doc: dict[str, Any], lease_id: str) -> None:
    error = doc.get("error")
    if error == "gone":
        raise LeaseGone(lease_id)
    if error == "not_owner":
        raise NotOwner(lease_id)


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def as_list(value: Any) -> list[Any]:
    # cjson encodes an empty Lua table as {}.
    return list(value) if isinstance(value, list) else []


def as_dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def limit_json(limit: Limit) -> list[Any]:
    return [
        limit.key,
        limit.kind.value,
        limit.unit.value,
        limit.scope.value,
        limit.capacity,
        limit.rate,
        limit.name,
        limit.owner,
        limit.shadow,
    ]


def limit(raw: list[Any]) -> Limit:
    key, kind, unit, scope, capacity, rate, name, owner, shadow = raw
    return Limit(
        str(key),
        Kind(kind),
        Unit(unit),
        Scope(scope),
        str(name),
        str(owner),
        float(capacity),
        float(rate),
        bool(shadow),
    )


def ticket_json(t: Ticket) -> str:
    return json.dumps(
        {
            "id": t.lease_id,
            "tenant": t.tenant,
            "pool": t.pool,
            "in": t.input_tokens,
            "out": t.max_output_tokens,
            "usd": t.nano_usd,
            "pin": t.price_in,
            "pout": t.price_out,
            "prio": t.priority,
            "cost": t.cost,
            "ttl": t.ttl,
            "wait": t.wait,
            "claim": t.claim_timeout,
            "def": t.deferred,
            "dd": t.dedup_key,
            "idem": t.idempotency_key,
            "fp": t.fingerprint,
            "mqt": t.max_queued_tenant,
            "mqa": t.max_queued_total,
            "limits": [limit_json(limit) for limit in t.limits],
        }
    )


def lease(raw: dict[str, Any]) -> LeaseRecord:
    return LeaseRecord(
        lease_id=str(raw["id"]),
        tenant=str(raw["tenant"]),
        pool=str(raw["pool"]),
        input_tokens=int(raw["in"]),
        max_output_tokens=int(raw["out"]),
        nano_usd=int(raw["usd"]),
        expires_in=float(raw["expires_in"]),
        queued_for=float(raw["queued_for"]),
        held_for=float(raw["held_for"]),
        shadowed=str(raw.get("shadowed") or ""),
    )


def denial(raw: dict[str, Any]) -> Denial:
    cause = str(raw.get("cause") or "")
    return Denial(limit(raw["limit"]), float(raw["level"]), float(raw["amount"]), cause)


def progress(raw: Any) -> Progress:
    raw = as_dict(raw)
    return Progress(
        grants=[lease(g) for g in as_list(raw.get("grants"))],
        rejections=[(str(r[0]), denial(r[1])) for r in as_list(raw.get("rejections"))],
        blocked={pool: denial(d) for pool, d in as_dict(raw.get("blocked")).items()},
        passed_over=[denial(d) for d in as_list(raw.get("passed_over"))],
        finished=[dedup_end(e) for e in as_list(raw.get("finished"))],
    )


def dedup_end(raw: dict[str, Any]) -> DedupEnd:
    result = raw.get("result")
    return DedupEnd(str(raw["leader"]), base64.b64decode(result) if result else None)
