"""LiteLLM fleet: 3 LiteLLM proxies share one provider's limits, alone and with admitd.

Each proxy serves two model groups, both the same deployment of the simulated provider
(whose LLM API is limited here: tokens/min and concurrency, 429 with retry-after beyond):

- ``alone``: LiteLLM's own limits, as its docs set them for a fleet: the deployment's
  ``tpm``/``rpm`` at the provider's, ``usage-based-routing-v2`` counting usage in a Redis
  the three proxies share, ``max_parallel_requests`` at the provider's concurrency;
- ``admitd``: no LiteLLM limit; the ``admitd_client.litellm`` callback admits every call
  through one admitd whose pool has the provider's limits.

Two teams (weights 1:3 in admitd; LiteLLM has no weights) keep equal numbers of callers
backlogged, spread over the proxies; a 429 is waited out by its retry-after. Measured at the
provider, the ground truth: tokens the proxies let through ÷ what its limit allowed, the
most they ran ahead of it (overshoot), its 429s, goodput; at the callers, the weighted
fairness between the teams; at admitd, the slots still held once the callers are done.
The run's check and its BENCHMARKS.md section are here too (registered in
:mod:`bench.scenarios`).
"""

from __future__ import annotations

import functools
import time
from typing import Any

import grpc
import openai

from admitd_client._proto import admission_pb2 as pb
from admitd_client._proto import admission_pb2_grpc as pb_grpc
from bench import metrics, procs
from bench.gateway import LiteLLMProxy, start
from bench.litellm_teams import key_of
from bench.scenarios._common import Ctx
from bench.scenarios._runs import DRAIN_TENANT, drain_admitd, load_run
from bench.sections import f, table

# Tokens/min binds: 4 calls of ~0.6 s in flight could serve ~2.5x more. The smoke run's limit
# is lower, so that even a few calls through busy proxies meet it.
PROVIDER = {"tpm": 60_000, "concurrency": 4, "base_ms": 200.0, "per_token_ms": 2.0}
SMOKE_TPM = 12_000
PROXIES = 3
TEAMS = {"t1": 1.0, "t3": 3.0}
CALLS = {"input": [100, 300], "max_output": [50, 200]}
# Longer than any max_tokens, so that every call's output is its max_tokens.
REPLY = " ".join(["token"] * 400)
POOL, ALONE, ADMITTED = "provider", "gpt-4o-alone", "gpt-4o-admitd"
GOALS = {"overshoot_tokens": 0, "provider_429": 0, "goodput": 0.95, "jain": 0.99, "slots": 0}


def run(ctx: Ctx) -> dict[str, Any]:
    duration, workers, window = (8.0, 3, 2.0) if ctx.smoke else (60.0, 8, 10.0)
    limits = {**PROVIDER, "tpm": SMOKE_TPM} if ctx.smoke else PROVIDER
    provider = procs.provider(ctx.workdir)
    admitd = procs.admitd(_admitd_config(limits), ctx.workdir, "fleet-admitd")
    redis = ctx.redis()
    proxies = [
        LiteLLMProxy(
            _proxy_config(limits, provider.port, admitd.target, redis.port),
            ctx.workdir,
            f"fleet-litellm-{i}",
        )
        for i in range(PROXIES)
    ]
    rows = []
    try:
        started = time.monotonic()
        start(*proxies)
        _warm_up(proxies)
        ctx.log(f"  {PROXIES} LiteLLM proxies up in {time.monotonic() - started:.0f}s")
        for label, group in (("LiteLLM alone", ALONE), ("LiteLLM + admitd", ADMITTED)):
            row = _one(ctx, limits, (provider, admitd), proxies, group, (duration, workers, window))
            row.update(client=label, group=group)
            rows.append(row)
            ctx.log(
                f"  litellm_fleet {label}: let through {row['offered_ratio']:.2f}x the limit, "
                f"overshoot {row['overshoot_tokens']:.0f}, 429s {row['provider_429']}, goodput "
                f"{row['goodput']:.2f}, Jain {_text(row['jain_median'])}, slots held "
                f"{'-' if row['slots_held'] is None else row['slots_held']}"
            )
    finally:
        for proxy in proxies:
            proxy.stop()
        admitd.stop()
        provider.stop()
    return {
        "provider": limits,
        "proxies": PROXIES,
        "teams": TEAMS,
        "duration_s": duration,
        "workers_per_team": workers,
        "window_s": window,
        "rows": rows,
    }


def _warm_up(proxies: list[LiteLLMProxy]) -> None:
    """A first call through each proxy and group: LiteLLM's first call of a kind is slow
    (it loads what it needs), which would otherwise eat the start of a short run."""
    for proxy in proxies:
        client = openai.OpenAI(
            base_url=f"{proxy.url}/v1", api_key=key_of("t1"), max_retries=3, timeout=300
        )
        for group in (ALONE, ADMITTED):
            client.chat.completions.create(
                model=group, messages=[{"role": "user", "content": "warm up"}], max_tokens=5
            )
        client.close()


def _text(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _admitd_config(limits: dict[str, Any]) -> dict[str, Any]:
    tenants = [{"name": team, "weight": weight} for team, weight in TEAMS.items()]
    pool = {
        "name": POOL,
        "max_concurrency": limits["concurrency"],
        "tokens_per_minute": limits["tpm"],
    }
    return {
        "backend": {"kind": "memory"},
        "pools": [pool],
        "tenants": [*tenants, {"name": DRAIN_TENANT}],
        "queue": {"max_wait": 120, "aging": 10},
    }


def _proxy_config(
    limits: dict[str, Any], provider_port: int, admitd_target: str, redis_port: int
) -> dict[str, Any]:
    params = {
        "model": "openai/gpt-4o",
        "api_base": f"http://127.0.0.1:{provider_port}/v1",
        "api_key": "sk-bench",
    }
    own = {  # LiteLLM's own limits, for the group without admitd
        "tpm": limits["tpm"],
        "rpm": 100_000,
        "max_parallel_requests": limits["concurrency"],
    }
    return {
        "model_list": [
            {
                "model_name": ALONE,
                "litellm_params": {**params, **own},
                "model_info": {"id": ALONE},
            },
            {"model_name": ADMITTED, "litellm_params": params, "model_info": {"id": ADMITTED}},
        ],
        "router_settings": {
            "routing_strategy": "usage-based-routing-v2",
            "redis_host": "127.0.0.1",
            "redis_port": redis_port,
        },
        "litellm_settings": {"callbacks": ["admitd_client.litellm.handler"]},
        "callback_settings": {
            "admitd": {
                "target": admitd_target,
                "pools": {ADMITTED: POOL},
                "model_groups": [ADMITTED],
                "max_wait": 120,
            },
        },
        "general_settings": {"custom_auth": "bench.litellm_teams.user_api_key_auth"},
    }


def _one(
    ctx: Ctx,
    limits: dict[str, Any],
    servers: tuple[procs.Proc, procs.Proc],
    proxies: list[LiteLLMProxy],
    group: str,
    size: tuple[float, int, float],
) -> dict[str, Any]:
    """One run through the proxies' ``group``: the provider's and admitd's buckets emptied
    at its start (``size``: duration, callers per team, fairness window)."""
    (provider, admitd), (duration, workers, window) = servers, size
    tenants = [{"name": team, "key": key_of(team), "workers": workers, **CALLS} for team in TEAMS]
    spec = {
        "mode": "gateway",
        "urls": [p.url for p in proxies],
        "model": group,
        "duration": duration,
        "tenants": tenants,
    }
    conf = {**limits, "limit_apis": True, "reply": REPLY}
    drain = None  # admitd's bucket: emptied for the run through it
    if group == ADMITTED:
        drain = functools.partial(drain_admitd, admitd.target, POOL, int(limits["tpm"]))
    result, stats, _ = load_run(ctx, provider, spec, f"fleet-{group}", conf, drain, margin=300)
    row = summarize(result, stats, duration, window)
    row["slots_held"] = _slots_held(admitd.target) if group == ADMITTED else None
    return row


def summarize(
    result: dict[str, Any], stats: dict[str, Any], duration: float, window: float
) -> dict[str, Any]:
    """The provider's view of a run (calls that arrived in it) and the callers' fairness."""
    rate = float(stats["tpm"]) / 60.0
    allowed = rate * duration
    arrived = [c for c in stats["calls"] if "at" in c and c["at"] < duration]
    served = [c for c in arrived if "rate_limited" not in c]
    # A call let through as a record whose "use" is what it asked the bucket for.
    asked = [["", 0, c["at"], 0, 0, 0, c["cost"], 0, 0] for c in arrived]
    records = result["records"]
    jains = metrics.windowed_jain(records, TEAMS, window, duration, window, metrics.reservation)
    per_team = {
        team: sum(metrics.reservation(r) for r in records if r[metrics.TENANT] == team)
        for team in TEAMS
    }
    return {
        "offered_ratio": sum(c["cost"] for c in arrived) / allowed,
        "overshoot_tokens": max(0.0, metrics.limit_excess(asked, rate, 0.0)),
        "provider_429": stats["rejected_tpm"] + stats["rejected_concurrency"],
        "provider_429_concurrency": stats["rejected_concurrency"],
        "max_in_flight": stats["max_in_flight"],
        "goodput": sum(c["input_tokens"] + c["output_tokens"] for c in served) / allowed,
        "jain_median": metrics.median(jains),
        "jain_min": min(jains, default=None),
        "service_by_team": per_team,
        "calls_ok": result["counts"]["ok"],
        "refused_to_callers": result["counts"]["refused"],
        "errors": result["counts"]["errors"],
    }


def _slots_held(target: str) -> int:
    """Slots admitd's pools hold once every caller is done (a leaked lease holds one)."""
    with grpc.insecure_channel(target) as channel:
        status = pb_grpc.AdmissionStub(channel).GetStatus(pb.GetStatusRequest(), timeout=10)
    return sum(pool.in_flight for pool in status.pools)


def check(r: dict[str, Any]) -> list[str]:
    """Properties that hold on any machine: through admitd, the provider's limits are never
    exceeded and no slot is left held; LiteLLM alone really met the provider's limits."""
    problems = []
    alone, admitted = r["rows"]
    for row in r["rows"]:
        if row["calls_ok"] <= 0 or row["errors"]:
            problems.append(f"{row['client']}: {row['calls_ok']} calls, {row['errors']} errors")
    if admitted["overshoot_tokens"] != 0 or admitted["provider_429"]:
        problems.append(
            f"through admitd: overshoot {admitted['overshoot_tokens']:.0f} tokens, "
            f"{admitted['provider_429']} provider 429s"
        )
    if admitted["slots_held"] != 0:
        problems.append(f"through admitd: {admitted['slots_held']} slots held after the run")
    if not alone["provider_429"] and alone["offered_ratio"] <= 1:
        problems.append("LiteLLM alone never met the provider's limits: the comparison is moot")
    return problems


def section(r: dict[str, Any]) -> str:
    rows = [
        [
            row["client"],
            f(row["offered_ratio"], 2),
            f(row["overshoot_tokens"]),
            f"{row['provider_429']} ({row['provider_429_concurrency']})",
            f(row["goodput"], 2),
            f"{f(row['jain_median'], 3)} ({f(row['jain_min'], 3)})",
            f(row["slots_held"]),
            str(row["refused_to_callers"]),
        ]
        for row in r["rows"]
    ]
    admitted = r["rows"][1]
    met = [
        admitted["overshoot_tokens"] <= GOALS["overshoot_tokens"],
        admitted["provider_429"] <= GOALS["provider_429"],
        admitted["goodput"] >= GOALS["goodput"],
        (admitted["jain_median"] or 0) >= GOALS["jain"],
        admitted["slots_held"] == GOALS["slots"],
    ]
    verdict = "all met" if all(met) else f"{met.count(False)} of {len(met)} MISSED"
    p = r["provider"]
    return (
        f"### LiteLLM fleet ({r['proxies']} proxies, {r['duration_s']:g} s per run; provider "
        f"{p['tpm']:,} tokens/min, concurrency {p['concurrency']}; teams 1:3, "
        f"{r['workers_per_team']} callers each)\n\n"
        "Let through = tokens the proxies sent the provider (input + max_tokens of every call "
        "that reached it, refused ones too) ÷ what its limit allowed over the run (its bucket "
        "empty at the start). Overshoot = the most those tokens ever ran ahead of the limit. "
        "429s = the provider's refusals (of which concurrency). Goodput = tokens the provider "
        "served ÷ what its limit allowed. Jain = weighted Jain's index between the two teams "
        f"(weights 1:3, reservations, {r['window_s']:g} s windows), median (min). Slots = "
        "admitd's slots held after the run. Refused = 429s the callers got from the proxies. "
        f"Goals through admitd (0 overshoot, 0 provider 429s, goodput ≥ {GOALS['goodput']}, "
        f"Jain ≥ {GOALS['jain']}, 0 slots held): {verdict}.\n\n"
        + table(
            [
                "client",
                "let through",
                "overshoot",
                "429s (conc)",
                "goodput",
                "Jain",
                "slots held",
                "refused",
            ],
            rows,
        )
    )
