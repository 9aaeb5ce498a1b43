"""Instruments that cost nothing per call until scraped: a counter and a histogram kept as
plain numbers under the GIL and read by the metrics exporter (``_telemetry`` makes them)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator
from itertools import accumulate

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily


class Tally:
    """A counter kept as a plain dict and read by an OpenTelemetry observable counter.

    Why not ``Counter.add``: the SDK hashes and checks the attributes on every call, about
    20 us each, and a served Acquire+Release pair counts four times. Here a count is a dict
    update under the GIL (well under a microsecond); the cost moves to the scrape.
    """

    def __init__(self, meter: Meter, name: str, names: tuple[str, ...], description: str) -> None:
        self._names = names
        self._values: dict[tuple[str, ...], float] = {}
        meter.create_observable_counter(name, [self.observe], description=description)

    def add(self, amount: float, labels: tuple[str, ...]) -> None:
        self._values[labels] = self._values.get(labels, 0) + amount

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        # dict.copy is atomic under the GIL, so a scrape never sees a dict mid-resize.
        values = self._values.copy()
        return [Observation(v, dict(zip(self._names, k, strict=True))) for k, v in values.items()]


# The labels OpenTelemetry's exporter puts on every series of meter "admitd" (see Histogram).
_SCOPE = {"otel_scope_name": "admitd", "otel_scope_schema_url": "", "otel_scope_version": ""}


class Histogram:
    """A histogram kept as plain bucket counts and read at scrape time, for the reason
    :class:`Tally` gives (``Histogram.record`` cost about 10 us, twice per served pair).
    OpenTelemetry has no observable histogram, so this is a Prometheus collector of its own
    on the same registry, exporting the series the SDK's exporter did: name, unit, help,
    scope labels, ``le`` written as the bounds are, a value on a bound counted in it."""

    def __init__(
        self,
        registry: CollectorRegistry,
        name: str,
        unit: str,
        names: tuple[str, ...],
        bounds: tuple[float, ...],
        description: str,
    ) -> None:
        self._name, self._unit, self._description = name, unit, description
        self._names, self._bounds = (*names, *_SCOPE), bounds
        self._les = [*(str(bound) for bound in bounds), "+Inf"]
        self._values: dict[tuple[str, ...], list[float]] = {}  # [per bucket..., +Inf, sum]
        registry.register(self)

    def record(self, value: float, labels: tuple[str, ...]) -> None:
        counts = self._values.get(labels)
        if counts is None:
            counts = self._values[labels] = [0] * (len(self._bounds) + 2)
        counts[bisect_left(self._bounds, value)] += 1
        counts[-1] += value

    def collect(self) -> Iterator[HistogramMetricFamily]:
        if not self._values:
            return  # as the SDK: no series, no family
        name, names = self._name, self._names
        family = HistogramMetricFamily(name, self._description, labels=names, unit=self._unit)
        for labels, counts in self._values.copy().items():  # copies: see Tally.observe
            counts = counts.copy()
            buckets = list(zip(self._les, accumulate(counts[:-1]), strict=True))
            family.add_metric([*labels, *_SCOPE.values()], buckets, counts[-1])
        yield family
