"""Adaptive limits: admitd is configured for twice what the provider really allows (its
limits are unknown or were lowered), and callers report each provider 429 at Release.
With ``adaptive`` off, admitd admits up to its configured limits and the provider refuses
the excess; with it on, the 429s shrink the pool's effective limits (AIMD) to what the
provider takes, so they stay near zero while goodput stays near the provider's limit."""

from __future__ import annotations

from typing import Any

from bench import procs
from bench.scenarios._common import Ctx
from bench.scenarios._runs import provider_run
from bench.scenarios.limits import CALLS, summarize

# What the provider really allows; admitd is told twice as much.
PROVIDER = {"tpm": 300_000, "concurrency": 4, "base_ms": 100.0, "per_token_ms": 1.0}
CONFIGURED = {"max_concurrency": 8, "tokens_per_minute": 600_000}
# (label, the pool's ``adaptive`` section): off, the defaults, and a slower increase (fewer
# probes past the real limit, slower to recover when the provider allows more again).
VARIANTS: list[tuple[str, dict[str, Any] | None]] = [
    ("adaptive off", None),
    ("adaptive on (defaults)", {}),
    ("adaptive on, increase 0.005", {"increase": 0.005}),
]
WORKERS = 32  # backlogged callers: always more demand than either limit


def run(ctx: Ctx) -> dict[str, Any]:
    duration = 2.0 if ctx.smoke else 30.0
    provider = procs.provider(ctx.workdir)
    rows = []
    try:
        for i, (label, adaptive) in enumerate(VARIANTS if not ctx.smoke else VARIANTS[:2]):
            run = provider_run(
                ctx,
                provider,
                name=f"adaptive-{i}",
                provider_conf=PROVIDER,
                tenants=[{"name": "t0", "workers": WORKERS, **CALLS}],
                duration=duration,
                replica_count=1,
                kind="redis",
                pool_config={**CONFIGURED, "adaptive": adaptive},
            )
            row = summarize(run)
            attempts = row["requests_ok"] + row["provider_429"]
            row.update(
                client=label,
                adaptive=adaptive,
                provider_429_share=row["provider_429"] / attempts if attempts else None,
            )
            rows.append(row)
            ctx.log(
                f"  {label}: 429s {row['provider_429']} of {attempts} calls, "
                f"goodput {row['goodput_share']:.2f}"
            )
    finally:
        provider.stop()
    return {
        "provider": PROVIDER,
        "configured": CONFIGURED,
        "workers": WORKERS,
        "duration_s": duration,
        "rows": rows,
    }
