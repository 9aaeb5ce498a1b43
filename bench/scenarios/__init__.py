"""The scenarios, each registered once, here: its name, how it runs, what must hold of its
results (:mod:`bench.checks`), its section of BENCHMARKS.md (:mod:`bench.sections`) and its
plot (:mod:`bench.plots`, drawn in full runs only). The command line's choices, the checks,
the report and the smoke test (through ``python -m bench.run --list``) all read this one
registry, so a new scenario is added in one place."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench import checks, plots, sections
from bench.scenarios import (
    adaptive,
    fairness,
    limits,
    litellm_fleet,
    overhead,
    overload,
    profile,
    replicas,
    scale,
)
from bench.scenarios._common import Ctx

Results = dict[str, Any]


@dataclass(frozen=True)
class Scenario:
    """One scenario: ``run`` returns JSON-ready results, which :mod:`bench.run` writes to
    ``<out>/<name>.json``; ``check`` lists the sanity problems in them (empty: all good);
    ``section`` renders them as markdown; ``plot`` (optional) draws them as a figure;
    ``go``: it runs the Go load generator (:mod:`bench.generator`)."""

    name: str
    run: Callable[[Ctx], Results]
    check: Callable[[Results], list[str]]
    section: Callable[[Results], str]
    plot: Callable[[Results], Any] | None = None
    go: bool = False


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario(
            "overhead", overhead.run, checks.overhead, sections.overhead, plots.overhead, go=True
        ),
        Scenario("overload", overload.run, checks.overload, sections.overload, go=True),
        Scenario(
            "replicas", replicas.run, checks.replicas, sections.replicas, plots.replicas, go=True
        ),
        Scenario("fairness", fairness.run, checks.fairness, sections.fairness, plots.fairness),
        Scenario("limits", limits.run, checks.limits, sections.limits, plots.limits),
        Scenario("adaptive", adaptive.run, checks.adaptive, sections.adaptive),
        Scenario("scale", scale.run, checks.scale, sections.scale, plots.scale, go=True),
        Scenario("profile", profile.run, checks.profile, sections.profile, go=True),
        Scenario("litellm_fleet", litellm_fleet.run, litellm_fleet.check, litellm_fleet.section),
    ]
}

__all__ = ["SCENARIOS", "Ctx", "Results", "Scenario"]
