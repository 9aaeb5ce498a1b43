"""Overhead: Acquire+Release pairs against admitd (memory, Redis) and the no-op echo, from
the Go generator (closed loop, one core).

The three servers run side by side for the whole scenario; every (repetition,
concurrency) measures all three back to back, in an order rotated per repetition, so that
each admitd number has an echo number taken moments apart under the same noise. Ratios to
the echo (throughput, Acquire p99) are computed per repetition, then the median is taken.
CPU per pair comes from /proc for the server, redis-server and the generator itself; an
echo run is server-bound when the generator used less than :data:`SERVER_BOUND` of its one
core (otherwise the generator, not the server, set the pace).
"""

from __future__ import annotations

import itertools
from typing import Any

from bench import generator, metrics, procs
from bench.scenarios._common import UNLIMITED_POOL, Ctx, backend, errors_by_code, stop_all

SERVERS = ("echo", "memory", "redis")
SERVER_BOUND = 0.8  # of the generator's one core


def run(ctx: Ctx) -> dict[str, Any]:
    concurrency = [1, 16] if ctx.smoke else [1, 16, 64, 256]
    reps, duration, warmup = (1, 0.5, 0.3) if ctx.smoke else (5, 2.0, 0.5)
    config = {"pools": [UNLIMITED_POOL], "tenants": [{"name": "default"}]}
    started = {
        "echo": procs.echo(ctx.workdir, wait=False),
        "memory": procs.admitd(
            {**config, "backend": backend(ctx, "memory")}, ctx.workdir, "ovh-memory", wait=False
        ),
        "redis": procs.admitd(
            {**config, "backend": backend(ctx, "redis")}, ctx.workdir, "ovh-redis", wait=False
        ),
    }
    raw: dict[str, dict[int, list[dict[str, Any]]]] = {
        n: {c: [] for c in concurrency} for n in SERVERS
    }
    try:
        procs.ready(*started.values())
        for rep, c in itertools.product(range(reps), concurrency):
            for name in SERVERS[rep % 3 :] + SERVERS[: rep % 3]:
                pids = {"server": started[name].pid}
                if name == "redis":
                    pids["redis"] = ctx.redis().pid
                load = generator.Load(
                    [started[name].target], duration, c, warmup=warmup, cpu_pids=pids, seed=rep
                )
                result = generator.pairs(load, ctx.workdir, f"ovh-{name}-{c}-{rep}")
                raw[name][c].append(result)
                ctx.log(
                    f"  overhead rep {rep} c={c} {name}: {result['pairs_per_s']:.0f} pairs/s, "
                    f"server {_us(result, 'server')} us CPU/pair, generator "
                    f"{result['cpu_cores']['load']:.2f} core"
                )
    finally:
        stop_all(list(started.values()))
    rows = [_row(name, c, raw[name][c], raw["echo"][c]) for name in SERVERS for c in concurrency]
    return {
        "concurrency": concurrency,
        "reps": reps,
        "duration_s": duration,
        "generator": "go",
        "server_bound_below": SERVER_BOUND,
        "rows": rows,
        "raw": raw,
    }


def _us(result: dict[str, Any], name: str) -> str:
    value = result["cpu_us_per_pair"].get(name)
    return "-" if value is None else f"{value:.0f}"


def _row(
    name: str, c: int, runs: list[dict[str, Any]], echoes: list[dict[str, Any]]
) -> dict[str, Any]:
    ratios = [r["pairs_per_s"] / e["pairs_per_s"] for r, e in zip(runs, echoes, strict=True)]
    p99_ratios = [
        r["acquire_p99_ms"] / e["acquire_p99_ms"]
        for r, e in zip(runs, echoes, strict=True)
        if r["acquire_p99_ms"] and e["acquire_p99_ms"]
    ]

    def cpu(process: str, key: str = "cpu_us_per_pair") -> float | None:
        return metrics.median(r[key].get(process) for r in runs)

    load_cores = cpu("load", "cpu_cores")
    return {
        "server": name,
        "concurrency": c,
        "pairs_per_s": metrics.median(r["pairs_per_s"] for r in runs),
        "rpc_per_s": metrics.median(r["rpc_per_s"] for r in runs),
        "ratio_to_echo": metrics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "acquire_p99_ratio_to_echo": metrics.median(p99_ratios),
        "pair_p50_ms": metrics.median(r["pair_p50_ms"] for r in runs),
        "pair_p99_ms": metrics.median(r["pair_p99_ms"] for r in runs),
        "acquire_p50_ms": metrics.median(r["acquire_p50_ms"] for r in runs),
        "acquire_p99_ms": metrics.median(r["acquire_p99_ms"] for r in runs),
        "server_cpu_us_per_pair": cpu("server"),
        "redis_cpu_us_per_pair": cpu("redis"),
        "load_cpu_us_per_pair": cpu("load"),
        "server_cpu_cores": cpu("server", "cpu_cores"),
        "redis_cpu_cores": cpu("redis", "cpu_cores"),
        "load_cpu_cores": load_cores,
        "server_bound": load_cores is not None and load_cores < SERVER_BOUND,
        "errors_by_code": errors_by_code(runs),
        "errors": sum(sum(r["errors"].values()) for r in runs),
    }
