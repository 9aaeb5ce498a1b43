"""Pure statistics over load records (no I/O), shared by the scenarios and the checks.

A provider record is ``[tenant, priority, granted, done, queued_for, acquire_s, input,
max_output, output]``: times in seconds from the run's zero (``granted`` is when the caller
got its lease, or, for a naive caller, when its successful call started), ``queued_for`` as
the server reported it, token counts as the provider reported them.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

TENANT, PRIORITY, GRANTED, DONE, QUEUED, ACQUIRE, INPUT, MAX_OUTPUT, OUTPUT = range(9)
PRIORITY_NAMES = {1: "CRITICAL", 2: "HIGH", 3: "NORMAL", 4: "LOW"}

Record = Sequence[Any]
Measure = Callable[[Record], float]


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (no interpolation); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(present) if present else None


def service(record: Record) -> float:
    """VTC's service of a call: input tokens + 2 x output tokens (output costs more)."""
    return float(record[INPUT]) + 2.0 * float(record[OUTPUT])


def reservation(record: Record) -> float:
    """What admitd's fair queue charges a call: input + max output tokens."""
    return float(record[INPUT]) + float(record[MAX_OUTPUT])


def charged(record: Record) -> float:
    """Tokens a call used (what Release reports and the provider's limit counts)."""
    return float(record[INPUT]) + float(record[OUTPUT])


def jain(values: Sequence[float]) -> float | None:
    """Jain's index (sum x)^2 / (n sum x^2): 1 when all equal, 1/n when one has everything."""
    squares = sum(v * v for v in values)
    if not values or squares == 0:
        return None
    return sum(values) ** 2 / (len(values) * squares)


def windowed_jain(
    records: Sequence[Record],
    weights: Mapping[str, float],
    start: float,
    end: float,
    window: float,
    measure: Measure = service,
) -> list[float]:
    """Weighted Jain's index per window of ``[start, end)``: Jain's index of x_i = service_i
    / weight_i (1 exactly when every tenant got service in proportion to its weight). A call
    counts in the window in which it was granted; every tenant is counted, idle or not."""
    count = max(0, int((end - start) // window))
    per: list[dict[str, float]] = [dict.fromkeys(weights, 0.0) for _ in range(count)]
    for r in records:
        i = math.floor((r[GRANTED] - start) / window)
        if 0 <= i < count and r[TENANT] in weights:
            per[i][r[TENANT]] += measure(r) / weights[r[TENANT]]
    out = []
    for shares in per:
        value = jain(list(shares.values()))
        if value is not None:
            out.append(value)
    return out


def max_service_difference(
    records: Sequence[Record],
    weights: Mapping[str, float],
    start: float,
    end: float,
    measure: Measure = service,
) -> float:
    """VTC's fairness measure: the largest |W_f(t1, t2)/w_f - W_g(t1, t2)/w_g| over every
    pair of tenants and every interval [t1, t2] within [start, end], where W(t1, t2) is the
    service granted in the interval (all tenants are kept backlogged by the load).

    With C_f(t) the weighted service granted from ``start`` to t and D = C_f - C_g, the
    difference over [t1, t2] is D(t2) - D(t1), so the largest over all intervals is
    max D - min D over time (D starts at 0)."""
    cumulative = dict.fromkeys(weights, 0.0)
    pairs = list(itertools.combinations(weights, 2))
    high = dict.fromkeys(pairs, 0.0)  # max over time of C_f - C_g (0 at the start)
    low = dict.fromkeys(pairs, 0.0)
    for r in sorted(records, key=lambda r: float(r[GRANTED])):
        if start <= r[GRANTED] <= end and r[TENANT] in weights:
            cumulative[r[TENANT]] += measure(r) / weights[r[TENANT]]
            for f, g in pairs:
                if r[TENANT] in (f, g):
                    d = cumulative[f] - cumulative[g]
                    high[f, g] = max(high[f, g], d)
                    low[f, g] = min(low[f, g], d)
    return max((high[p] - low[p] for p in pairs), default=0.0)


def largest_weighted_call(
    records: Sequence[Record], weights: Mapping[str, float], measure: Measure = service
) -> float:
    """The largest single step of any tenant's weighted service (the unit VTC bounds use)."""
    steps = (measure(r) / weights[r[TENANT]] for r in records if r[TENANT] in weights)
    return max(steps, default=0.0)


def wait_by_priority(records: Sequence[Record]) -> dict[str, dict[str, float | None]]:
    """p50/p99 of the server-reported queue wait (``queued_for``), in ms, per class."""
    out: dict[str, dict[str, float | None]] = {}
    for prio in sorted({int(r[PRIORITY]) for r in records}):
        waits = [r[QUEUED] * 1000 for r in records if int(r[PRIORITY]) == prio]
        out[PRIORITY_NAMES.get(prio, "NORMAL")] = {
            "count": len(waits),
            "p50_ms": percentile(waits, 50),
            "p99_ms": percentile(waits, 99),
        }
    return out


def limit_excess(records: Sequence[Record], rate: float, since: float) -> float:
    """How far admissions ever ran ahead of a token bucket that was empty at ``since`` and
    refills at ``rate`` tokens/s: max over grants t of (tokens used by calls granted up to t)
    - rate x (t - since). Positive means the limit was overshot by that many tokens; a
    limiter working correctly with honest clients keeps it <= 0 (tokens are reserved before
    the call and only refunded down to the real usage, so usage up to t never exceeds what
    the bucket held). Grant times are when the client saw its lease (after the server
    decided), so measurement delays can only make this look better by about rate x RPC time.
    """
    used, worst = 0.0, -math.inf
    for r in sorted(records, key=lambda r: float(r[GRANTED])):
        used += charged(r)
        worst = max(worst, used - rate * (float(r[GRANTED]) - since))
    return worst if records else 0.0


def cumulative_series(
    records: Sequence[Record], weights: Mapping[str, float], measure: Measure = service
) -> dict[str, list[list[float]]]:
    """Per tenant ``[[t, weighted cumulative service], ...]`` (for plots)."""
    series: dict[str, list[list[float]]] = {t: [[0.0, 0.0]] for t in weights}
    totals = dict.fromkeys(weights, 0.0)
    for r in sorted(records, key=lambda r: float(r[GRANTED])):
        if r[TENANT] in weights:
            totals[r[TENANT]] += measure(r) / weights[r[TENANT]]
            series[r[TENANT]].append([round(float(r[GRANTED]), 3), totals[r[TENANT]]])
    return series
