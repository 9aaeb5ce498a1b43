"""What every scenario shares: the run context, backends, replicas, the unlimited pool."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from admitd_client._proto import admission_pb2 as pb
from admitd_client._proto import admission_pb2_grpc as pb_grpc
from bench import procs

_PREFIX = itertools.count()

# A pool no benchmark can fill: overhead and scale measure the decision, not a limit.
UNLIMITED_POOL: dict[str, Any] = {
    "name": "default",
    "max_concurrency": 1_000_000,
    "tokens_per_minute": 10**12,
    "requests_per_minute": 10**9,
}


# Held-open waiters parked in the scale scenario: issue 16's goals are stated at 100,000.
FULL_WAITERS, SMOKE_WAITERS = 100_000, 300


@dataclass
class Ctx:
    """One bench run: sizes (``smoke``; ``waiters`` parked in the scale scenario), where
    files go, and the shared redis-server."""

    smoke: bool
    workdir: Path
    out: Path
    waiters: int = FULL_WAITERS
    log: Callable[[str], None] = print
    _redis: procs.Redis | None = field(default=None, repr=False)

    def redis(self) -> procs.Redis:
        if self._redis is None:
            self._redis = procs.Redis(self.workdir)
        return self._redis

    def close(self) -> None:
        if self._redis is not None:
            self._redis.stop()


def backend(ctx: Ctx, kind: str) -> dict[str, Any]:
    """A ``backend:`` section with a clean store (a fresh key prefix on the shared Redis)."""
    if kind == "memory":
        return {"kind": "memory"}
    return {"kind": "redis", "url": ctx.redis().url, "key_prefix": f"bench{next(_PREFIX)}"}


def replicas(ctx: Ctx, config: dict[str, Any], count: int, name: str) -> list[procs.Proc]:
    """``count`` admitd processes sharing ``config``, started side by side."""
    started = [procs.admitd(config, ctx.workdir, f"{name}-r{i}", wait=False) for i in range(count)]
    procs.ready(*started)
    return started


def stop_all(servers: list[procs.Proc]) -> None:
    for server in servers:
        server.stop()


def errors_by_code(runs: list[dict[str, Any]]) -> dict[str, int]:
    """Failed RPCs of generator runs, summed by gRPC code."""
    out: dict[str, int] = {}
    for run in runs:
        for code, n in run["errors"].items():
            out[code] = out.get(code, 0) + n
    return dict(sorted(out.items()))


def leases_in_flight(target: str) -> int:
    """Leases a replica's store holds (every pool), from GetStatus."""
    with grpc.insecure_channel(target) as channel:
        status = pb_grpc.AdmissionStub(channel).GetStatus(pb.GetStatusRequest(), timeout=60)
    return sum(pool.in_flight for pool in status.pools)
