"""Overload: more Acquire+Release pairs than a server can serve, from the Go generator in
open loop (pairs started at a fixed rate whatever the server answers), against the echo,
admitd on memory and admitd on Redis.

The three run side by side. Each one's capacity is measured first (closed loop, 64
callers); then each is offered each of :data:`FACTORS` x its own capacity, and every RPC
has a :data:`DEADLINE` deadline, as a caller's would. Past capacity a replica should
refuse explicitly and cheaply (RESOURCE_EXHAUSTED with a reason and a RetryInfo) and
reserve nothing; it must never answer UNAVAILABLE from its own pool nor CANCELLED.

Why two loads: a refused Acquire costs 0.40 of a served pair (``python -m
bench.server_cost --callgrind --refusals``, against a pair's count without it: 376k and
948k instructions; an echo RPC 288k, so a refusal is ~1.3x the least an RPC costs on this
stack, ~56k of it admitd's gate, error and status, the rest grpc.aio's). Offered twice its
capacity, a replica needs ~0.8 of its core to refuse what it cannot serve, and whether
every call is refused before its deadline turns on the machine; at 1.5x, ~0.6. The goal
is judged at :data:`GOAL_FACTOR`; the 2x row shows where the ceiling is.

Counted: every failed RPC by code, refusals by reason (and with a RetryInfo), and the
leases left in the store after the run, reserved for callers that had given up. The echo
is the stack's own behaviour, for reference.
"""

from __future__ import annotations

import time
from typing import Any

from bench import generator, procs
from bench.scenarios._common import (
    UNLIMITED_POOL,
    Ctx,
    backend,
    errors_by_code,
    leases_in_flight,
    stop_all,
)

SERVERS = ("echo", "memory", "redis")
FACTORS = (1.5, 2.0)
GOAL_FACTOR = 1.5  # the load the explicit-refusal goal is judged at (see above)
DEADLINE = 1.0  # seconds, each RPC
CAPACITY_CONCURRENCY = 64


def run(ctx: Ctx) -> dict[str, Any]:
    duration, probe = (1.0, 0.5) if ctx.smoke else (5.0, 2.0)
    config = {"pools": [UNLIMITED_POOL], "tenants": [{"name": "default"}]}
    started = {
        "echo": procs.echo(ctx.workdir, wait=False, name="overload-echo"),
        **{
            kind: procs.admitd(
                {**config, "backend": backend(ctx, kind)},
                ctx.workdir,
                f"overload-{kind}",
                wait=False,
            )
            for kind in ("memory", "redis")
        },
    }
    try:
        procs.ready(*started.values())
        pids = {name: _pids(ctx, name, server) for name, server in started.items()}
        capacity = {
            name: generator.pairs(
                generator.Load([server.target], probe, CAPACITY_CONCURRENCY, cpu_pids=pids[name]),
                ctx.workdir,
                f"overload-{name}-capacity",
            )["pairs_per_s"]
            for name, server in started.items()
        }
        rows = []
        for factor in FACTORS:
            for name, server in started.items():
                rate = factor * capacity[name]  # past what this server serves
                row = _one(ctx, name, server, pids[name], rate, duration)
                rows.append({"factor": factor, "capacity_pairs_per_s": capacity[name], **row})
                ctx.log(
                    f"  overload {name} x{factor:g}: capacity {capacity[name]:.0f} pairs/s, "
                    f"offered {row['offered_per_s']:.0f}, served {row['pairs_per_s']:.0f}, "
                    f"failed {row['errors_by_code']}, leases left {row['leases_left']}"
                )
    finally:
        stop_all(list(started.values()))
    return {
        "goal_factor": GOAL_FACTOR,
        "deadline_s": DEADLINE,
        "duration_s": duration,
        "rows": rows,
    }


def _pids(ctx: Ctx, name: str, server: procs.Proc) -> dict[str, int]:
    pids = {"server": server.pid}
    if name == "redis":
        pids["redis"] = ctx.redis().pid
    return pids


def _one(
    ctx: Ctx, name: str, server: procs.Proc, pids: dict[str, int], rate: float, duration: float
) -> dict[str, Any]:
    before = leases_in_flight(server.target) if name != "echo" else 0
    load = generator.Load(
        [server.target],
        duration,
        rate=rate,
        warmup=0.0,
        timeout=DEADLINE,
        cpu_pids=pids,
        connections=4,
    )
    result = generator.pairs(load, ctx.workdir, f"overload-{name}")
    leases_left = None
    if name != "echo":
        time.sleep(DEADLINE)  # calls the server took late, after their callers gave up
        leases_left = leases_in_flight(server.target) - before
    return {
        "server": name,
        "offered_per_s": result["offered_per_s"],
        "started": result["started"],
        "skipped": result["skipped"],
        "pairs_per_s": result["pairs_per_s"],
        "served_share": result["pairs"] / result["started"] if result["started"] else None,
        "pair_p50_ms": result["pair_p50_ms"],
        "pair_p99_ms": result["pair_p99_ms"],
        "errors_by_code": errors_by_code([result]),
        "errors_by_rpc": result["errors_by_rpc"],
        "refusals": result["refusals"],
        "refusals_explained": result["refusals_explained"],
        # Failures that are not an explicit refusal with a reason and a RetryInfo.
        "unexplained_failures": sum(result["errors"].values()) - result["refusals_explained"],
        "leases_left": leases_left,
        "server_cpu_cores": result["cpu_cores"].get("server"),
        "load_cpu_cores": result["cpu_cores"].get("load"),
    }
