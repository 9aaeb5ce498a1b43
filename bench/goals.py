"""Issue 16's performance goals, each stated against what a run measured: the goal, the
figure, and pass or FAIL. Read from the results of the overhead, overload, replicas and
scale scenarios (a goal whose scenario did not run is "not measured"); ratios are taken
side by side in one run, so they hold on a busy machine better than absolute figures."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.scenarios.overload import GOAL_FACTOR
from bench.sections import f, table

Results = dict[str, dict[str, Any]]
# (measured, verdict): verdict True = met, False = missed, None = nothing to judge.
Figure = tuple[str, bool | None]

MEMORY_RATIO, REDIS_RATIO, P99_RATIO = 0.80, 0.60, 1.5
REDIS_US_PER_PAIR = 100.0
KB_PER_WAITER = 27 / 2  # half of the 27 KB each held-open Acquire took before
IDLE_SHARE, IDLE_WAITERS = 0.10, 100_000
SELF_CAUSED = ("UNAVAILABLE", "CANCELLED")


def _rows(results: Results, scenario: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = results.get(scenario, {}).get("rows", [])
    return rows


def no_self_caused_errors(results: Results) -> Figure:
    counted: dict[str, int] = {}
    for scenario in ("overhead", "replicas", "overload"):
        for row in _rows(results, scenario):
            if row.get("server", row.get("kind")) == "echo":
                continue
            for code in SELF_CAUSED:
                counted[scenario] = counted.get(scenario, 0) + row["errors_by_code"].get(code, 0)
    if not counted:
        return "not measured", None
    text = ", ".join(f"{scenario} {n:,}" for scenario, n in counted.items())
    return f"UNAVAILABLE + CANCELLED: {text}", not any(counted.values())


def explicit_refusals(results: Results) -> Figure:
    """Judged at the scenario's goal load; the others (2x: the ceiling of what one process
    can answer at all, refusals included) are shown beside it, and every load must leave
    no lease behind."""
    rows = [row for row in _rows(results, "overload") if row["server"] != "echo"]
    if not rows:
        return "not measured", None
    parts = []
    for row in rows:
        failed = sum(row["errors_by_code"].values())
        parts.append(
            f"{row['server']} x{row['factor']:g}: {row['unexplained_failures']:,} of "
            f"{failed:,} failed RPCs not an explained refusal, "
            f"{f(row['leases_left'])} leases left"
        )
    explained = all(r["unexplained_failures"] == 0 for r in rows if r["factor"] <= GOAL_FACTOR)
    met = explained and all(row["leases_left"] == 0 for row in rows)
    return "; ".join(parts), met


def _ratio(kind: str, goal: float) -> Callable[[Results], Figure]:
    def figure(results: Results) -> Figure:
        rows = [
            row
            for row in _rows(results, "overhead")
            if row["server"] == kind and 16 <= row["concurrency"] <= 256
        ]
        if not rows:
            return "not measured", None
        text = ", ".join(f"c={row['concurrency']} {f(row['ratio_to_echo'], 2)}" for row in rows)
        return text, all(row["ratio_to_echo"] >= goal for row in rows)

    return figure


def memory_p99(results: Results) -> Figure:
    rows = [
        row
        for row in _rows(results, "overhead")
        if row["server"] == "memory" and row["concurrency"] == 16
    ]
    if not rows or rows[0]["acquire_p99_ratio_to_echo"] is None:
        return "not measured", None
    ratio = rows[0]["acquire_p99_ratio_to_echo"]
    return f"{ratio:.2f} ({f(rows[0]['acquire_p99_ms'], 2)} ms)", ratio <= P99_RATIO


def redis_cpu(results: Results) -> Figure:
    rows = [row for row in _rows(results, "replicas") if row["kind"] == "redis"]
    if not rows:
        return "not measured", None
    text = ", ".join(
        f"x{row['processes']} {f(row['redis_cpu_us_per_pair'])} us "
        f"({f(row['pairs_per_s_at_one_redis_core'])} pairs/s per core)"
        for row in rows
    )
    return text, all(row["redis_cpu_us_per_pair"] <= REDIS_US_PER_PAIR for row in rows)


def scaling(results: Results) -> Figure:
    rows = _rows(results, "replicas")
    if not rows:
        return "not measured", None
    text = ", ".join(f"{row['lineup']} {f(row['pairs_per_s'])} pairs/s" for row in rows)
    return text, None  # a curve to read (2 shared cores cannot show 3 replicas scale)


def _largest_waiters(results: Results) -> list[dict[str, Any]]:
    rows = [row for row in _rows(results, "scale") if row["what"] == "waiters"]
    largest = max((row["n"] for row in rows), default=None)
    return [row for row in rows if row["n"] == largest]


def waiter_memory(results: Results) -> Figure:
    rows = [row for row in _largest_waiters(results) if row.get("kb_per_waiter") is not None]
    if not rows:
        return "not measured", None
    text = ", ".join(
        f"{row['backend']} {row['kb_per_waiter']:.1f} KB ({row['queued']:,} parked)" for row in rows
    )
    floor = results.get("scale", {}).get("echo_waiters", {}).get("kb_per_waiter")
    if floor is not None:  # what the stack costs before admitd does anything
        text += f"; a no-op grpc.aio server holding them: {floor:.1f} KB"
    return text, all(row["kb_per_waiter"] <= KB_PER_WAITER for row in rows)


def waiter_idle(results: Results) -> Figure:
    rows = [
        row
        for row in _largest_waiters(results)
        if row["backend"] == "redis" and row.get("idle_cpu_share") is not None
    ]
    if not rows:
        return "not measured", None
    row = rows[0]
    short = "" if row["n"] >= IDLE_WAITERS else f", fewer than the goal's {IDLE_WAITERS:,}"
    text = f"{row['idle_cpu_share']:.0%} of a core with {row['queued']:,} parked{short}"
    return text, row["idle_cpu_share"] < IDLE_SHARE


def generator_cost(results: Results) -> Figure:
    rows = [row for row in _rows(results, "overhead") if row["server"] == "echo"]
    if not rows:
        return "not measured", None
    text = ", ".join(
        f"c={row['concurrency']} {f(row['load_cpu_us_per_pair'])} us/pair "
        f"({f(row['load_cpu_cores'], 2)} core)"
        for row in rows
    )
    return text, all(row["server_bound"] for row in rows)


GOALS: list[tuple[str, Callable[[Results], Figure]]] = [
    ("no UNAVAILABLE or CANCELLED caused by admitd, under any load", no_self_caused_errors),
    (
        f"past capacity ({GOAL_FACTOR:g}x), every failure is RESOURCE_EXHAUSTED with a reason "
        "and a RetryInfo, and nothing stays reserved (at any load)",
        explicit_refusals,
    ),
    (
        f"memory backend >= {MEMORY_RATIO:.2f}x echo pairs/s at concurrency 16-256",
        _ratio("memory", MEMORY_RATIO),
    ),
    (f"memory backend Acquire p99 <= {P99_RATIO:g}x echo p99 at concurrency 16", memory_p99),
    (
        f"Redis backend >= {REDIS_RATIO:.2f}x echo pairs/s at concurrency 16-256",
        _ratio("redis", REDIS_RATIO),
    ),
    (
        f"redis-server CPU <= {REDIS_US_PER_PAIR:g} us per pair (>= 10,000 pairs/s per core)",
        redis_cpu,
    ),
    ("replicas on one Redis: 1, 2, 3 (curve; echo x1, x2 for reference)", scaling),
    (f"memory per held-open Acquire <= {KB_PER_WAITER:g} KB (half of 27 KB)", waiter_memory),
    (
        f"a Redis replica holding {IDLE_WAITERS:,} waiters idles below {IDLE_SHARE:.0%} of a core",
        waiter_idle,
    ),
    ("the echo is server-bound (generator below its one core); its CPU per pair", generator_cost),
]


def evaluate(results: Results) -> list[dict[str, Any]]:
    """Every goal with its measured figure and verdict (True, False, or None)."""
    out = []
    for goal, figure in GOALS:
        measured, met = figure(results)
        out.append({"goal": goal, "measured": measured, "met": met})
    return out


def section(results: Results) -> str:
    verdicts = {True: "pass", False: "**FAIL**", None: "-"}
    rows = [[g["goal"], g["measured"], verdicts[g["met"]]] for g in evaluate(results)]
    return (
        "### Issue 16 goals\n\n"
        "Each goal against this run's figure (details in the sections below).\n\n"
        + table(["goal", "measured", "verdict"], rows)
    )
