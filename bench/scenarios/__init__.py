"""The scenarios. Each takes the run context and returns a JSON-ready dict, which
:mod:`bench.run` writes to ``<out>/<scenario>.json`` and checks with :mod:`bench.checks`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.scenarios._common import Ctx
from bench.scenarios.fairness import fairness
from bench.scenarios.limits import limits
from bench.scenarios.overhead import overhead
from bench.scenarios.profile import profile
from bench.scenarios.scale import scale

SCENARIOS: dict[str, Callable[[Ctx], dict[str, Any]]] = {
    "overhead": overhead,
    "fairness": fairness,
    "limits": limits,
    "scale": scale,
    "profile": profile,
}

__all__ = ["SCENARIOS", "Ctx"]
