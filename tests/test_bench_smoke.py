"""The benchmark harness's smoke mode (``python -m bench.run --smoke``), so it cannot rot.

It runs every scenario at tiny sizes, in its own processes, exactly as a person would.
Nothing here is timed: the assertions are properties that hold on any machine, however
slow or busy (the limits are never overshot, admitd never lets the provider answer 429,
fairness indices are indices, ratios are numbers).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from support import ROOT

# Seconds; the smoke run takes a few minutes on 2 idle cores, most of it LiteLLM's start-up.
TIME_BOX = 1800


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.mark.redis  # the scenarios start their own redis-server
@pytest.mark.litellm  # and LiteLLM proxies (litellm_fleet)
@pytest.mark.slow
def test_bench_smoke(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIME_BOX,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    listed = subprocess.run(
        [sys.executable, "-m", "bench.run", "--list"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert set(results) == set(listed.stdout.split())  # every registered scenario ran
    assert all(r["meta"]["problems"] == [] for r in results.values())
    report = (tmp_path / "BENCHMARKS.md").read_text()  # the tables, goals first
    assert "### Issue 16 goals" in report
    assert all(f"### {title}" in report for title in ("Overhead", "Overload", "Replicas"))

    for row in results["overhead"]["rows"]:
        assert _positive(row["rpc_per_s"]), row
        assert row["load_cpu_us_per_pair"] is not None, row  # the Go generator's own cost
        assert _positive(row["ratio_to_echo"]), row
        assert row["errors"] == 0, row

    for run in results["fairness"]["runs"]:
        assert set(run["measures"]) == {"used", "vtc", "reservation"}, run["case"]
        for measure in run["measures"].values():
            assert 0 < measure["jain_min"] <= measure["jain_median"] <= 1 + 1e-9, run["case"]
            assert measure["max_diff"] >= 0
        assert run["provider_429"] == 0, run["case"]
        assert run["overshoot_tokens"] == 0, run["case"]
        assert all(t["requests"] > 0 for t in run["per_tenant"].values()), run["per_tenant"]
        if run["case"] == "weights_1_2_4":
            tenants = run["per_tenant"]
            assert tenants["w4"]["service"] > tenants["w1"]["service"], tenants

    limits = results["limits"]
    for row in limits["rows"]:
        assert row["requests_ok"] > 0, row
        if row["replicas"]:  # through admitd, with honest clients
            assert row["overshoot_tokens"] == 0, row
            assert row["provider_429"] == 0, row
            assert row["max_in_flight"] <= limits["provider"]["concurrency"], row
    naive = [r for r in limits["rows"] if not r["replicas"]]
    # The provider's limits really were in the way of callers without admitd.
    assert any(r["provider_429"] > 0 for r in naive), naive

    off, *on = results["adaptive"]["rows"]
    assert off["adaptive"] is None
    assert on
    assert all(row["adaptive"] is not None for row in on)
    assert all(row["requests_ok"] > 0 for row in results["adaptive"]["rows"])
    # Configured above the provider's real limits, admitd without adaptive limits lets the
    # provider refuse calls.
    assert off["provider_429"] > 0, off

    for row in results["scale"]["rows"]:
        assert _positive(row["acquire_p50_ms"]), row
        assert row["errors"] == 0, row
        if row["what"] in ("waiters", "tickets"):
            assert row["queued"] >= row["n"], row
    echo = results["scale"]["echo_waiters"]  # the floor under admitd's memory per waiter
    assert echo["queued"] >= echo["n"], echo
    assert _positive(echo["kb_per_waiter"]), echo

    for kind in ("memory", "redis"):
        profile = results["profile"][kind]
        assert profile["pairs_profiled"] > 0
        assert any(part.startswith("admitd ") for part in profile["categories"])
    assert all(_positive(us) for us in results["profile"]["telemetry"]["us_per_pair"].values())

    alone, admitted = results["litellm_fleet"]["rows"]  # 3 LiteLLM proxies, one provider
    assert admitted["overshoot_tokens"] == 0, admitted
    assert admitted["provider_429"] == 0, admitted
    assert admitted["slots_held"] == 0, admitted
    assert admitted["jain_median"] is None or 0 < admitted["jain_median"] <= 1 + 1e-9
    # LiteLLM's own limits really were in the way: it let through more than the limit, or
    # the provider refused some of what it let through.
    assert alone["offered_ratio"] > 1 or alone["provider_429"] > 0, alone
