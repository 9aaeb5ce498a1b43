"""What the Redis scripts of the read-only operations answer (look.lua, snapshot.lua and
usage.lua), read back. ``codec.py`` reads the answers of the operations that decide; the two
together were past the size a module is kept to."""

from __future__ import annotations

from typing import Any

from ..._model import GateView, Look, QueueSpot, Snapshot, TicketEnd, UsageRow
from .codec import as_dict, as_list, denial, lease


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
            int(r["cr"]),
            int(r["cw"]),
        )
        for r in as_list(doc.get("rows"))
    ]
    return sorted(rows, key=lambda r: (r.day, r.tenant, r.pool))
