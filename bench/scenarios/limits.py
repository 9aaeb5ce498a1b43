"""Limits hold: one tenant's callers at concurrency 1/5/64/256 through admitd (1 and 3
replicas on Redis, 1 in memory) and naive callers (retry with backoff) against a provider
with a tokens/min and a concurrency limit."""

from __future__ import annotations

from typing import Any

from bench import metrics, procs
from bench.scenarios._common import Ctx
from bench.scenarios._runs import provider_run

# Calls take 100 ms + 1 ms per output token (~280 ms on average): 6 in flight allow ~15k
# tokens/s, so the 10k tokens/s of tokens/min bind first but bursts hit the concurrency too.
PROVIDER = {"tpm": 600_000, "concurrency": 6, "base_ms": 100.0, "per_token_ms": 1.0}
CALLS = {"input": [100, 1000], "max_output": [50, 500]}
# (label, replicas, backend); 0 replicas = naive callers straight to the provider.
CLIENTS = [
    ("admitd x1 (redis)", 1, "redis"),
    ("admitd x3 (redis)", 3, "redis"),
    ("admitd x1 (memory)", 1, "memory"),
    ("naive retry+backoff", 0, "memory"),
]


def run(ctx: Ctx) -> dict[str, Any]:
    duration = 1.5 if ctx.smoke else 15.0
    if ctx.smoke:  # every kind of client once; naive where the provider must refuse it
        plan = [(5, CLIENTS[0]), (64, CLIENTS[1]), (5, CLIENTS[2]), (64, CLIENTS[3])]
    else:
        plan = [(c, client) for c in (1, 5, 64, 256) for client in CLIENTS]
    provider = procs.provider(ctx.workdir)
    rows = []
    try:
        for c, (label, count, kind) in plan:
            run = provider_run(
                ctx,
                provider,
                name=f"limits-{c}-{count}-{kind}",
                provider_conf=PROVIDER,
                tenants=[{"name": "t0", "workers": c, **CALLS}],
                duration=duration,
                replica_count=count,
                kind=kind,
            )
            row = summarize(run)
            row.update(client=label, replicas=count, backend=kind if count else None, concurrency=c)
            rows.append(row)
            ctx.log(
                f"  limits c={c} {label}: 429s {row['provider_429']}, goodput "
                f"{row['goodput_share']:.2f}, overshoot {_f(row['overshoot_tokens'])}"
            )
    finally:
        provider.stop()
    return {"provider": PROVIDER, "duration_s": duration, "rows": rows}


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def summarize(run: dict[str, Any]) -> dict[str, Any]:
    stats, records, rate = run["provider"], run["records"], run["rate"]
    end = run["duration_s"]
    in_run = [r for r in records if r[metrics.GRANTED] < end]
    row: dict[str, Any] = {
        "requests_ok": len(in_run),
        "provider_429": stats["rejected_tpm"] + stats["rejected_concurrency"],
        "provider_429_tpm": stats["rejected_tpm"],
        "provider_429_concurrency": stats["rejected_concurrency"],
        "gave_up": run["counts"]["gave_up"],
        "max_in_flight": stats["max_in_flight"],
        "limit_per_min": rate * 60,
        # Goodput: tokens the provider served for calls started in the run, over what its
        # limit allowed in the run (its bucket was empty at the start).
        "goodput_share": sum(metrics.charged(r) for r in in_run) / (rate * end),
        "wait_p50_ms": metrics.percentile([r[metrics.ACQUIRE] * 1000 for r in in_run], 50),
        "wait_p99_ms": metrics.percentile([r[metrics.ACQUIRE] * 1000 for r in in_run], 99),
        "overshoot_tokens": None,
        "headroom_tokens": None,
        "admitted_per_min": None,
    }
    since = run["drained_at"]
    if since is not None:  # through admitd: its bucket was empty at ``since``
        excess = metrics.limit_excess(records, rate, since)  # every grant, even late ones
        admitted = [r for r in records if since <= r[metrics.GRANTED] < end]
        row["overshoot_tokens"] = max(0.0, excess)
        row["headroom_tokens"] = -excess  # closest approach to the limit
        used = sum(metrics.charged(r) for r in admitted)
        row["admitted_per_min"] = used / (end - since) * 60
    else:
        row["admitted_per_min"] = sum(metrics.charged(r) for r in in_run) / end * 60
    return row
