"""The scenarios. Each takes the run context and returns a JSON-ready dict, which
:mod:`bench.run` writes to ``<out>/<scenario>.json`` and checks with :mod:`bench.checks`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.scenarios import adaptive, fairness, limits, overhead, profile, scale
from bench.scenarios._common import Ctx

SCENARIOS: dict[str, Callable[[Ctx], dict[str, Any]]] = {
    "overhead": overhead.run,
    "fairness": fairness.run,
    "limits": limits.run,
    "adaptive": adaptive.run,
    "scale": scale.run,
    "profile": profile.run,
}

__all__ = ["SCENARIOS", "Ctx"]
