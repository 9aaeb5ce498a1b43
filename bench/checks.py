"""Sanity checks on a scenario's results: properties that must hold on any machine, however
slow or noisy (no timings), one function per scenario; :mod:`bench.scenarios` registers
them. Each returns the problems found (empty: all good)."""

from __future__ import annotations

import math
from typing import Any


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def _in_unit(value: Any) -> bool:
    return _positive(value) and value <= 1 + 1e-9


def overhead(r: dict[str, Any]) -> list[str]:
    # Failed RPCs are measured (issue 16's goals, bench/goals.py), not a harness problem.
    problems = []
    for row in r["rows"]:
        label = f"{row['server']} c={row['concurrency']}"
        if not _positive(row["pairs_per_s"]) or not _positive(row["ratio_to_echo"]):
            problems.append(f"{label}: throughput or ratio to echo not a positive number")
        # Read from /proc in clock ticks: a short run on a busy machine may well count 0.
        if row["server_cpu_us_per_pair"] is None or row["load_cpu_us_per_pair"] is None:
            problems.append(f"{label}: no CPU time read for the server or the generator")
    return problems


def overload(r: dict[str, Any]) -> list[str]:
    problems = []  # failed RPCs: as in the overhead scenario
    for row in r["rows"]:
        if not _positive(row["capacity_pairs_per_s"]) or not row["started"]:
            problems.append(f"{row['server']}: no capacity measured or no pair started")
        elif not _positive(row["pairs_per_s"]):
            problems.append(f"{row['server']}: not one pair served under overload")
        if row["server"] != "echo" and row["leases_left"] is None:
            problems.append(f"{row['server']}: leases left not read")
    return problems


def replicas(r: dict[str, Any]) -> list[str]:
    problems = []  # failed RPCs: as in the overhead scenario
    for row in r["rows"]:
        if not _positive(row["pairs_per_s"]):
            problems.append(f"{row['lineup']}: no pairs served")
        if row["kind"] == "redis" and not _positive(row["redis_cpu_us_per_pair"]):
            problems.append(f"{row['lineup']}: no redis-server CPU measured")
    return problems


def fairness(r: dict[str, Any]) -> list[str]:
    problems = []
    for run in r["runs"]:
        label = f"{run['case']} x{run['replicas']}"
        tenants = run["per_tenant"]
        starved = [t for t, v in tenants.items() if v["requests"] <= 0]
        if starved:
            problems.append(f"{label}: no service for {starved}")
        for name, measure in run["measures"].items():
            for key in ("jain_median", "jain_min"):
                if not _in_unit(measure[key]):
                    problems.append(f"{label}: {name} {key} {measure[key]} not in (0, 1]")
            if not (isinstance(measure["max_diff"], float) and measure["max_diff"] >= 0):
                problems.append(f"{label}: {name} max service difference {measure['max_diff']}")
        if run["provider_429"]:
            problems.append(f"{label}: {run['provider_429']} provider 429s through admitd")
        if run["overshoot_tokens"] != 0:
            problems.append(f"{label}: admitted {run['overshoot_tokens']} tokens over the limit")
        if run["errors"]:
            problems.append(f"{label}: {run['errors']} RPC errors")
        weights: dict[str, float] = {t: v["weight"] for t, v in tenants.items()}
        heaviest = max(weights, key=lambda t: weights[t])
        lightest = min(weights, key=lambda t: weights[t])
        if weights[heaviest] > weights[lightest] and not (
            tenants[heaviest]["service"] > tenants[lightest]["service"]
        ):
            problems.append(
                f"{label}: {heaviest} (weight {weights[heaviest]}) got no more "
                f"service than {lightest} (weight {weights[lightest]})"
            )
    return problems


def limits(r: dict[str, Any]) -> list[str]:
    problems = []
    for row in r["rows"]:
        label = f"{row['client']} c={row['concurrency']}"
        if row["requests_ok"] <= 0:
            problems.append(f"{label}: no call served")
        if row["replicas"]:
            if row["overshoot_tokens"] != 0:
                problems.append(
                    f"{label}: admitted {row['overshoot_tokens']} tokens over the limit"
                )
            if row["provider_429"]:
                problems.append(f"{label}: {row['provider_429']} provider 429s through admitd")
            if row["max_in_flight"] > r["provider"]["concurrency"]:
                problems.append(f"{label}: {row['max_in_flight']} calls in flight")
        elif row["concurrency"] > r["provider"]["concurrency"] and not row["provider_429"]:
            # Otherwise the provider's limits were never in the way: the comparison is moot.
            problems.append(f"{label}: naive callers never got a 429 from the provider")
    return problems


def adaptive(r: dict[str, Any]) -> list[str]:
    problems = []
    off, *on = r["rows"]
    for row in r["rows"]:
        if row["requests_ok"] <= 0:
            problems.append(f"{row['client']}: no call served")
        if row["max_in_flight"] > r["configured"]["max_concurrency"]:
            problems.append(f"{row['client']}: {row['max_in_flight']} calls in flight")
    if off["adaptive"] is not None or not on or any(row["adaptive"] is None for row in on):
        problems.append("the first run must have adaptive limits off and the others on")
    elif not off["provider_429"]:
        # Otherwise the provider's lower limits were never in the way: the comparison is moot.
        problems.append("adaptive off: the provider never refused a call")
    # A full run is long enough for the controller to settle; a smoke run may not be.
    for row in on if not r["meta"]["smoke"] else []:
        if row["provider_429"] * 4 > off["provider_429"]:
            problems.append(
                f"{row['client']}: {row['provider_429']} provider 429s, not a quarter of "
                f"the {off['provider_429']} without adaptive limits"
            )
    return problems


def scale(r: dict[str, Any]) -> list[str]:
    problems = []
    for row in r["rows"]:
        label = f"{row['what']}={row['n']} {row['backend']}"
        if not _positive(row["acquire_p50_ms"]) or not _positive(row["p50_ratio_to_small"]):
            problems.append(f"{label}: no Acquire latency")
        if row["errors"]:
            problems.append(f"{label}: {row['errors']} RPC errors")
        if row["what"] in ("waiters", "tickets"):
            if row["queued"] < row["n"]:
                problems.append(f"{label}: only {row['queued']} waiters queued")
            if not _positive(row["reject_p50_ms"]):
                problems.append(f"{label}: no fail-fast Acquire timed on the long queue")
    echo = r.get("echo_waiters")
    if echo is not None and (echo["queued"] < echo["n"] or not _positive(echo["kb_per_waiter"])):
        problems.append(f"echo waiters={echo['n']}: {echo['queued']} parked, no memory measured")
    return problems


def profile(r: dict[str, Any]) -> list[str]:
    problems = []
    for kind in ("memory", "redis"):
        v = r[kind]
        if not v["pairs"] or not v["pairs_profiled"]:
            problems.append(f"{kind}: nothing served")
        if not any(c.startswith("admitd ") for c in v["categories"]):
            problems.append(f"{kind}: the profile shows no admitd code")
    for label, us in r["telemetry"]["us_per_pair"].items():
        if not _positive(us):
            problems.append(f"telemetry {label}: {us} us per pair")
    return problems
