"""Overhead: Acquire+Release pairs against admitd (memory, Redis) and the no-op echo.

The three servers run side by side for the whole scenario; every (repetition,
concurrency) measures all three back to back, in an order rotated per repetition, so that
each admitd number has an echo number taken moments apart under the same noise. The ratio
to echo is computed per repetition, then the median is taken.
"""

from __future__ import annotations

import itertools
from typing import Any

from bench import metrics, procs
from bench.scenarios._common import UNLIMITED_POOL, Ctx, backend, stop_all

SERVERS = ("echo", "memory", "redis")


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
                spec = {
                    "mode": "pairs",
                    "targets": [started[name].target],
                    "concurrency": c,
                    "duration": duration,
                    "warmup": warmup,
                    "seed": rep,
                    "cpu_pids": pids,
                }
                result = procs.run_load(spec, ctx.workdir, f"ovh-{name}-{c}-{rep}")
                raw[name][c].append(result)
                ctx.log(
                    f"  overhead rep {rep} c={c} {name}: {result['rpc_per_s']:.0f} RPC/s, "
                    f"server {_cpu(result, 'server')} us CPU/pair"
                )
    finally:
        stop_all(list(started.values()))
    rows = [_row(name, c, raw[name][c], raw["echo"][c]) for name in SERVERS for c in concurrency]
    return {
        "concurrency": concurrency,
        "reps": reps,
        "duration_s": duration,
        "rows": rows,
        "raw": raw,
    }


def _cpu(result: dict[str, Any], name: str) -> str:
    value = result["cpu_us_per_pair"].get(name)
    return "-" if value is None else f"{value:.0f}"


def _row(
    name: str, c: int, runs: list[dict[str, Any]], echoes: list[dict[str, Any]]
) -> dict[str, Any]:
    ratios = [r["rpc_per_s"] / e["rpc_per_s"] for r, e in zip(runs, echoes, strict=True)]

    def cpu(process: str) -> float | None:
        return metrics.median(r["cpu_us_per_pair"].get(process) for r in runs)

    return {
        "server": name,
        "concurrency": c,
        "rpc_per_s": metrics.median(r["rpc_per_s"] for r in runs),
        "ratio_to_echo": metrics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "pair_p50_ms": metrics.median(r["pair_p50_ms"] for r in runs),
        "pair_p99_ms": metrics.median(r["pair_p99_ms"] for r in runs),
        "acquire_p50_ms": metrics.median(r["acquire_p50_ms"] for r in runs),
        "acquire_p99_ms": metrics.median(r["acquire_p99_ms"] for r in runs),
        "server_cpu_us_per_pair": cpu("server"),
        "redis_cpu_us_per_pair": cpu("redis"),
        "load_cpu_us_per_pair": cpu("load"),
        "errors": sum(sum(r["errors"].values()) for r in runs),
    }
