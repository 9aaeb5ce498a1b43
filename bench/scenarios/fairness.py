"""Fairness under overload: tenants with weights 1:2:4, and 8 equal tenants with very
different request sizes, through 1 and 3 admitd replicas on Redis.

Every tenant runs enough NORMAL-priority callers to keep waiters queued all the time
(backlogged), which is the condition under which fair queueing promises anything: a tenant
that asks for less than its share should get less. Fairness is measured on that class. In
the mixed case each tenant also has one HIGH caller that pauses a second between calls
(light, latency-sensitive traffic that strict priority serves first) and one LOW caller,
always waiting (batch traffic that only aging lets through), for the queue waits per class.
"""

from __future__ import annotations

import itertools
from typing import Any

from bench import metrics, procs
from bench.scenarios._common import Ctx
from bench.scenarios._runs import provider_run

# Tokens/min is the binding limit (concurrency 16 would allow ~4x more calls).
PROVIDER = {"tpm": 3_000_000, "concurrency": 16, "base_ms": 20.0, "per_token_ms": 0.2}
FAIR_CLASS = 3  # NORMAL: the class every tenant keeps backlogged
# What a tenant's service is counted in. "used" (input + output tokens, as Release reports
# them) is what the fair queue equalizes: it charges the reservation at Acquire and credits
# the unused part back at Release, and the provider's tokens/min counts both kinds alike.
# "vtc" weighs output 2x (the VTC paper's cost of serving a token on one's own GPUs);
# "reservation" (input + max output) is what the queue would equalize without the credit.
MEASURES = {"used": metrics.charged, "vtc": metrics.service, "reservation": metrics.reservation}
PRIMARY = "used"
EXTRA_CALLERS = [
    {"priority": "HIGH", "workers": 1, "think_s": 1.0},
    {"priority": "LOW", "workers": 1, "think_s": 0.0},
]
# (input range, max output range) of the 8 mixed tenants: tiny to huge, input- or output-heavy.
SIZES = [
    ([50, 200], [20, 100]),
    ([100, 400], [50, 200]),
    ([200, 800], [100, 300]),
    ([400, 1200], [100, 400]),
    ([800, 2000], [200, 500]),
    ([1000, 3000], [50, 150]),
    ([2000, 4000], [300, 600]),
    ([100, 300], [500, 1000]),
]


def cases(workers: int) -> dict[str, list[dict[str, Any]]]:
    weighted = [
        {"name": n, "weight": w, "workers": workers, "input": [200, 800], "max_output": [100, 400]}
        for n, w in (("w1", 1), ("w2", 2), ("w4", 4))
    ]
    mixed = [
        {
            "name": f"m{i}",
            "weight": 1,
            "workers": workers,
            "input": inp,
            "max_output": out,
            "extra": EXTRA_CALLERS,
        }
        for i, (inp, out) in enumerate(SIZES)
    ]
    return {"weights_1_2_4": weighted, "mixed_8_tenants": mixed}


def run(ctx: Ctx) -> dict[str, Any]:
    duration, window, ramp = (2.5, 1.0, 0.5) if ctx.smoke else (30.0, 2.0, 2.0)
    chosen = cases(workers=6 if ctx.smoke else 10)
    plan = list(itertools.product(chosen, [1, 3]))
    if ctx.smoke:  # each case once, one of them through 3 replicas
        plan = [("weights_1_2_4", 1), ("mixed_8_tenants", 3)]
    provider = procs.provider(ctx.workdir)
    runs = []
    try:
        for case, count in plan:
            run = provider_run(
                ctx,
                provider,
                name=f"fair-{case}-{count}",
                provider_conf=PROVIDER,
                tenants=chosen[case],
                duration=duration,
                replica_count=count,
            )
            weights = {t["name"]: float(t["weight"]) for t in chosen[case]}
            summary = summarize(run, weights, window, ramp)
            summary.update(case=case, replicas=count, backend="redis")
            runs.append(summary)
            ctx.log(
                f"  fairness {case} x{count}: "
                + "; ".join(
                    f"{name}: Jain median {m['jain_median']:.3f} (min {m['jain_min']:.3f}), "
                    f"max diff {m['max_diff']:.0f} tokens = {m['max_diff_in_calls']:.1f} calls"
                    for name, m in summary["measures"].items()
                )
            )
    finally:
        provider.stop()
    return {
        "provider": PROVIDER,
        "duration_s": duration,
        "window_s": window,
        "ramp_s": ramp,
        "runs": runs,
    }


def summarize(
    run: dict[str, Any], weights: dict[str, float], window: float, ramp: float
) -> dict[str, Any]:
    """Fairness of one run over ``[ramp, duration)`` (the ramp-up skipped), among the
    calls of the backlogged class; queue waits of every class."""
    every, end = run["records"], run["duration_s"]
    records = [r for r in every if r[metrics.PRIORITY] == FAIR_CLASS]
    measured = [r for r in records if ramp <= r[metrics.GRANTED] < end]
    service = MEASURES[PRIMARY]
    total = sum(service(r) / weights[r[metrics.TENANT]] for r in measured) or 1.0
    per_tenant = {}
    for tenant, weight in weights.items():
        mine = [r for r in measured if r[metrics.TENANT] == tenant]
        served = sum(service(r) for r in mine)
        per_tenant[tenant] = {
            "weight": weight,
            "requests": len(mine),
            "service": served,
            # 1.0 = exactly its weighted share of the service (PRIMARY).
            "share_of_fair": served / weight / total * len(weights),
        }
    by_measure = {}
    for name, measure in MEASURES.items():
        jains = metrics.windowed_jain(records, weights, ramp, end, window, measure)
        diff = metrics.max_service_difference(records, weights, ramp, end, measure)
        unit = metrics.largest_weighted_call(records, weights, measure)
        by_measure[name] = {
            "jain_median": metrics.median(jains),
            "jain_min": min(jains, default=None),
            "jain_windows": jains,
            "max_diff": diff,
            "max_diff_in_calls": diff / unit if unit else None,
        }
    return {
        "measures": by_measure,
        "per_tenant": per_tenant,
        "wait_by_priority": metrics.wait_by_priority(
            [r for r in every if ramp <= r[metrics.GRANTED] < end]
        ),
        # Also here, admissions never ran ahead of the pool's tokens/min (see limits).
        "overshoot_tokens": max(0.0, metrics.limit_excess(every, run["rate"], run["drained_at"])),
        "provider_429": run["counts"]["provider_429"],
        "rejected": run["counts"]["rejected"],
        "errors": run["counts"]["errors"],
        "served_share": sum(metrics.charged(r) for r in every if r[metrics.GRANTED] < end)
        / (run["rate"] * end),
        "series": metrics.cumulative_series(records, weights, service),
    }
