"""Replica scaling: 1, 2 and 3 admitd replicas on one Redis, the load spread evenly over
them (Go generator, closed loop), against 1 and 2 no-op echo processes as the reference.

Every process runs side by side for the whole scenario (the replicas share one store); each
repetition measures every line-up back to back, in an order rotated per repetition. What
decides how far replicas scale is redis-server's CPU per Acquire+Release pair: one Redis
core serves at most 1,000,000 / (us per pair) pairs/s, whatever the replicas do.
"""

from __future__ import annotations

from typing import Any

from bench import generator, metrics, procs
from bench.scenarios._common import UNLIMITED_POOL, Ctx, backend, errors_by_code, stop_all

REPLICAS = (1, 2, 3)
ECHOES = (1, 2)


def run(ctx: Ctx) -> dict[str, Any]:
    reps, duration, warmup = (1, 0.5, 0.3) if ctx.smoke else (3, 2.0, 0.5)
    concurrency = 16 if ctx.smoke else 64  # in all, spread over the processes
    config = {
        "backend": backend(ctx, "redis"),  # one key prefix: the replicas share one store
        "pools": [UNLIMITED_POOL],
        "tenants": [{"name": "default"}],
    }
    # A smoke run checks the harness: one echo, and replicas sharing the store (1 and 2).
    replica_counts, echo_counts = ((1, 2), (1,)) if ctx.smoke else (REPLICAS, ECHOES)
    admitds = [
        procs.admitd(config, ctx.workdir, f"rep-r{i}", wait=False)
        for i in range(max(replica_counts))
    ]
    echoes = [procs.echo(ctx.workdir, wait=False, name=f"echo{i}") for i in range(max(echo_counts))]
    lineups = {f"echo x{n}": echoes[:n] for n in echo_counts}
    lineups.update({f"redis x{n}": admitds[:n] for n in replica_counts})
    raw: dict[str, list[dict[str, Any]]] = {label: [] for label in lineups}
    try:
        procs.ready(*admitds, *echoes)
        labels = list(lineups)
        for rep in range(reps):
            shift = rep % len(labels)
            for label in labels[shift:] + labels[:shift]:
                servers = lineups[label]
                pids = {f"server{i}": s.pid for i, s in enumerate(servers)}
                if label.startswith("redis"):
                    pids["redis"] = ctx.redis().pid
                load = generator.Load(
                    [s.target for s in servers],
                    duration,
                    concurrency,
                    warmup=warmup,
                    cpu_pids=pids,
                    seed=rep,
                )
                result = generator.pairs(load, ctx.workdir, f"rep-{label.replace(' ', '')}-{rep}")
                raw[label].append(result)
                ctx.log(
                    f"  replicas rep {rep} {label}: {result['pairs_per_s']:.0f} pairs/s, "
                    f"redis-server {result['cpu_us_per_pair'].get('redis') or 0:.0f} us/pair"
                )
    finally:
        stop_all([*admitds, *echoes])
    rows = [_row(label, runs, raw["echo x1"]) for label, runs in raw.items()]
    return {
        "reps": reps,
        "duration_s": duration,
        "concurrency": concurrency,
        "rows": rows,
        "raw": raw,
    }


def _row(label: str, runs: list[dict[str, Any]], echoes: list[dict[str, Any]]) -> dict[str, Any]:
    kind, count = label.split(" x")

    def servers(result: dict[str, Any], key: str) -> float | None:
        """The servers' CPU together (us per pair, or cores)."""
        values = [v for name, v in result[key].items() if name.startswith("server")]
        return None if None in values else sum(values)

    redis_us = metrics.median(r["cpu_us_per_pair"].get("redis") for r in runs)
    ratios = [r["pairs_per_s"] / e["pairs_per_s"] for r, e in zip(runs, echoes, strict=True)]
    return {
        "lineup": label,
        "kind": kind,
        "processes": int(count),
        "pairs_per_s": metrics.median(r["pairs_per_s"] for r in runs),
        "ratio_to_one_echo": metrics.median(ratios),
        "pair_p50_ms": metrics.median(r["pair_p50_ms"] for r in runs),
        "pair_p99_ms": metrics.median(r["pair_p99_ms"] for r in runs),
        "servers_cpu_us_per_pair": metrics.median(servers(r, "cpu_us_per_pair") for r in runs),
        "servers_cpu_cores": metrics.median(servers(r, "cpu_cores") for r in runs),
        "redis_cpu_us_per_pair": redis_us,
        "redis_cpu_cores": metrics.median(r["cpu_cores"].get("redis") for r in runs),
        # What one fully busy Redis core would serve at this cost per pair.
        "pairs_per_s_at_one_redis_core": 1e6 / redis_us if redis_us else None,
        "load_cpu_us_per_pair": metrics.median(r["cpu_us_per_pair"]["load"] for r in runs),
        "load_cpu_cores": metrics.median(r["cpu_cores"]["load"] for r in runs),
        "errors_by_code": errors_by_code(runs),
        "errors": sum(sum(r["errors"].values()) for r in runs),
    }
