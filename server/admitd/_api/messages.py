"""Wire messages <-> domain values: durations, dates, queue positions and dedup roles, and
GetStatus built from a snapshot."""

from __future__ import annotations

import datetime
from collections.abc import Callable

from google.protobuf import duration_pb2

from .. import _requests as requests
from .._engine import Engine
from .._model import EPOCH, GateView, LeaseRecord, Limit, Snapshot
from .._policy import QueueEstimate
from .._usage import NANO_PER_USD
from ..v1 import admission_pb2 as pb
from .status import seconds_to_duration


def dedup_role(lease: LeaseRecord) -> pb.DedupRole.ValueType:
    if not lease.dedup_leader:
        return pb.DedupRole.DEDUP_ROLE_UNSPECIFIED
    if lease.dedup_leader == lease.lease_id:
        return pb.DedupRole.DEDUP_ROLE_LEADER
    return pb.DedupRole.DEDUP_ROLE_FOLLOWER


def position(estimate: QueueEstimate) -> pb.QueuePosition:
    return pb.QueuePosition(
        position=estimate.position,
        depth=estimate.depth,
        estimated_wait=seconds_to_duration(estimate.wait),
    )


def date(day: int) -> str:
    """A ledger day number as YYYY-MM-DD."""
    return (EPOCH + datetime.timedelta(days=day)).isoformat()


def seconds(duration: duration_pb2.Duration, field: str) -> float:
    """A duration field's value, checked (``_requests.duration``)."""
    return requests.duration(duration.seconds, duration.nanos, field)


def status_response(
    engine: Engine, snap: Snapshot, shown: Callable[[str], bool] = lambda _: True
) -> pb.StatusResponse:
    """GetStatus from the config and a backend snapshot, with the tenants ``shown``."""
    policy = engine.policy
    by_key = {limit.key: limit for limit in policy.all_limits()}

    def limit_status(key: str) -> pb.LimitStatus | None:
        limit: Limit | None = by_key.get(key)
        if limit is None:
            return None
        scale = NANO_PER_USD if key.endswith("usd_per_day") else 1
        return pb.LimitStatus(limit=limit.capacity / scale, value=snap.levels.get(key, 0.0) / scale)

    def limits(prefix: str) -> dict[str, pb.LimitStatus]:
        names = (
            "max_concurrency",
            "tokens_per_minute",
            "requests_per_minute",
            "tokens_per_day",
            "usd_per_day",
        )
        found = {name: limit_status(f"{prefix}:{name}") for name in names}
        out = {name: status for name, status in found.items() if status is not None}
        if "max_concurrency" in out:
            out["concurrency"] = out.pop("max_concurrency")
        return out

    response = pb.StatusResponse(draining=engine.draining)
    for pool in engine.settings.pools:
        queued = snap.queued_by_pool.get(pool.name, [0, 0, 0, 0])
        gate = snap.gates.get(pool.name, GateView(1.0, "closed", 0.0))
        response.pools.append(
            pb.PoolStatus(
                name=pool.name,
                in_flight=snap.in_flight_by_pool.get(pool.name, 0),
                queued=sum(queued),
                queued_by_priority=queued,
                limit_factor=gate.factor,
                circuit=gate.circuit,
                paused_for=seconds_to_duration(gate.paused_for),
                **limits(f"pool:{pool.name}"),
            )
        )
    for tenant in policy.tenants.values():
        if not shown(tenant.name):
            continue
        response.tenants.append(
            pb.TenantStatus(
                name=tenant.name,
                tier=tenant.tier or "",
                weight=tenant.weight,
                in_flight=snap.in_flight_by_tenant.get(tenant.name, 0),
                queued=snap.queued_by_tenant.get(tenant.name, 0),
                **limits(f"tenant:{tenant.name}"),
            )
        )
    response.budget.CopyFrom(pb.BudgetStatus(**limits("global")))
    return response
