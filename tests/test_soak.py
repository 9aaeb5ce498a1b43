"""``scripts/soak.py --smoke`` runs in CI, so the soak script cannot rot: a few seconds of load
from 200 tenants against two real replicas sharing a Redis, then every invariant check."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from support import ROOT
from support.processes import child_env


@pytest.mark.redis
@pytest.mark.slow
def test_soak_smoke_passes_every_check() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "soak.py"), "--smoke", "--json", "--seed", "7"],
        capture_output=True,
        text=True,
        timeout=90,  # ~8 s when the machine is idle
        env=child_env(),
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["ok"]
    assert report["problems"] == []
    outcomes = report["outcomes"]
    assert outcomes["Acquire OK"] > 50, outcomes
    assert outcomes["Release OK"] > 50, outcomes
    assert report["abandoned"] > 0  # so expiry had to reclaim something
    assert len(report["rss_mb"]) == 2
