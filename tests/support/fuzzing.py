"""Hypothesis settings shared by the property and state-machine tests, and their seeds.

Profiles (``ADMITD_HYPOTHESIS_PROFILE``):

- ``ci`` (default): few examples, ``derandomize=True`` (the same examples on every run, so CI
  is never flaky), no example database. What ``scripts/test`` runs.
- ``random``: the same sizes with a fresh seed each run (``ADMITD_HYPOTHESIS_SEED`` pins it);
  a failure prints the seed to rerun it with.
- ``deep``: random as well, with 10x the examples and longer state-machine runs (minutes), for
  a developer looking for trouble.

Every test here calls :func:`run`, which applies the seed and adds the profile and seed to a
failure's report, so ``ADMITD_HYPOTHESIS_PROFILE=random ADMITD_HYPOTHESIS_SEED=<n>`` reproduces
what a randomized run found (and hypothesis's own ``@reproduce_failure`` blob is printed too).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, seed, settings
from hypothesis.stateful import RuleBasedStateMachine, get_state_machine_test

PROFILE = os.environ.get("ADMITD_HYPOTHESIS_PROFILE", "ci")
if PROFILE not in ("ci", "random", "deep"):
    raise RuntimeError(f"ADMITD_HYPOTHESIS_PROFILE={PROFILE!r}: use ci, random or deep")
SEED = int(os.environ.get("ADMITD_HYPOTHESIS_SEED") or random.SystemRandom().getrandbits(32))
_SCALE = 10 if PROFILE == "deep" else 1

_BASE = settings(
    deadline=None,  # a real server on 2 shared cores: per-example time varies a lot
    derandomize=PROFILE == "ci",
    database=None,  # no state carried between runs: CI runs exactly what a developer runs
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def fuzz_settings(max_examples: int, step_count: int | None = None) -> settings:
    """Settings for one test: ``max_examples`` in CI (x10 in ``deep``)."""
    extra: dict[str, Any] = {}
    if step_count is not None:
        extra["stateful_step_count"] = step_count * (2 if PROFILE == "deep" else 1)
    return settings(_BASE, max_examples=max_examples * _SCALE, **extra)


def run(test: Callable[[], None]) -> None:
    """Run a hypothesis test (``@given`` or a state-machine test) under this profile's seed;
    on failure, say how to rerun it."""
    if PROFILE != "ci":
        seed(SEED)(test)
    try:
        test()
    except BaseException as error:
        how = (
            "derandomized (the same examples every run)"
            if PROFILE == "ci"
            else f"seed {SEED}: rerun with ADMITD_HYPOTHESIS_PROFILE={PROFILE}"
            f" ADMITD_HYPOTHESIS_SEED={SEED}"
        )
        error.add_note(f"hypothesis profile {PROFILE!r}, {how}")
        raise


def run_machine(machine: type[RuleBasedStateMachine], config: settings) -> None:
    """:func:`run` for a state machine."""
    run(get_state_machine_test(machine, settings=config))
