"""Metrics and traces (OpenTelemetry), exported for Prometheus on their own HTTP port.

The engine reports events through the few methods of :class:`Telemetry`; instruments are
created once here. Gauges (queue depth, in flight, limits, budget left) are read from a
snapshot refreshed in the background, never computed on a request. Tenant labels are capped
at ``observability.max_tenant_labels``; further tenants are counted as ``_other``.

Exported names (Prometheus): ``admitd_decisions_total``, ``admitd_queue_wait_seconds``,
``admitd_queue_depth``, ``admitd_leases_in_flight``, ``admitd_tokens_reserved_total``,
``admitd_tokens_charged_total``, ``admitd_tokens_refunded_total``,
``admitd_estimate_error_tokens``, ``admitd_lease_expiries_total``, ``admitd_pool_limit``,
``admitd_budget_remaining``, ``admitd_store_errors_total``, ``admitd_config_reloads_total``,
``admitd_unchecked_admissions_total``, ``admitd_shadow_rejections_total``,
``admitd_pool_limit_factor``, ``admitd_pool_circuit``, ``admitd_pool_paused_seconds``,
``admitd_dedup_followers_total``, ``admitd_overload_refusals_total``,
``admitd_queue_delay_seconds``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from types import TracebackType
from wsgiref.simple_server import WSGIServer

from opentelemetry import trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import CollectorRegistry, start_http_server

from ._config import Settings
from ._errors import Rejected
from ._instruments import Histogram, Tally
from ._model import GateView, Kind, LeaseRecord, Limit, Scope, Snapshot, Unit

log = logging.getLogger("admitd")
_Scope = AbstractContextManager[trace.Span]
_Labels = tuple[str, str, int]  # pool, tenant, priority
_NO_SPAN = nullcontext(trace.INVALID_SPAN)  # it keeps no state: one serves every call

PRIORITY_LABELS = ("critical", "high", "normal", "low")
OTHER = "_other"
_CLOSED = GateView(1.0, "closed", 0.0)  # a pool with no gate state yet
_CIRCUIT = {"closed": 0, "half_open": 1, "open": 2}
WAIT_BUCKETS = (0.0, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
ERROR_BUCKETS = (0, 10, 100, 1_000, 10_000, 100_000)  # tokens, by direction


class Telemetry:
    def __init__(self, settings: Settings) -> None:
        self.registry = CollectorRegistry()
        resource = Resource.create({"service.name": "admitd"})
        reader = PrometheusMetricReader(registry=self.registry)
        self.meter_provider = MeterProvider(metric_readers=[reader], resource=resource)
        meter = self.meter_provider.get_meter("admitd")
        self._max_tenants = settings.observability.max_tenant_labels
        self._tenants: set[str] = set()
        self._snapshot: Snapshot | None = None
        self._limits: list[Limit] = []
        self._pools: list[str] = []
        self._http: WSGIServer | None = None
        self._http_thread: threading.Thread | None = None
        self.metrics_port = 0

        tally = partial(Tally, meter)  # (name, label names, description)
        self._decisions = tally(
            "admitd.decisions",
            ("pool", "tenant", "priority", "decision", "reason"),
            "Acquire outcomes by pool, tenant, priority, reason",
        )
        histogram = partial(Histogram, self.registry)  # (name, unit, label names, bounds, ...)
        self._wait = histogram(
            "admitd_queue_wait",
            "seconds",
            ("pool", "priority"),
            WAIT_BUCKETS,
            "Time admitted calls spent queued",
        )
        self._reserved = tally("admitd.tokens.reserved", ("pool", "tenant"), "Reserved")
        self._charged = tally("admitd.tokens.charged", ("pool", "tenant"), "Charged")
        self._refunded = tally("admitd.tokens.refunded", ("pool", "tenant"), "Refunded")
        self._estimate_error = histogram(
            "admitd_estimate_error_tokens",
            "",
            ("pool", "direction"),
            ERROR_BUCKETS,
            "How far a reservation was from the tokens charged: direction over"
            " (reserved more, refunded) or under (used more than reserved)",
        )
        self._expiries = tally("admitd.lease.expiries", ("pool",), "Leases reclaimed unreleased")
        self._store_errors = tally(
            "admitd.store.errors", (), "Calls that failed to reach the state store"
        )
        self._reloads = tally(
            "admitd.config.reloads", ("result",), "Config file changes, by result"
        )
        self._unchecked = tally(
            "admitd.unchecked.admissions", ("pool",), "fail_open admissions without the store"
        )
        self._followers = tally(
            "admitd.dedup.followers",
            ("pool", "tenant", "result"),
            "Calls that joined an identical call in flight, by how they ended",
        )
        self._shadow = tally(
            "admitd.shadow.rejections",
            ("pool", "tenant", "reason"),
            "Admissions a shadow-mode limit would have refused, by reason",
        )
        self._overloaded = tally(
            "admitd.overload.refusals",
            ("cause",),
            "New calls refused SERVER_OVERLOADED: queue_delay, store_busy or deadline",
        )
        self._queue_delay = 0.0
        meter.create_observable_gauge(
            "admitd.queue.delay",
            [lambda options: [Observation(self._queue_delay)]],
            unit="s",
            description="How long a new call waits before this replica looks at it (probe)",
        )
        meter.create_observable_gauge(
            "admitd.queue.depth", [self._observe_queue], description="Waiters queued"
        )
        meter.create_observable_gauge(
            "admitd.leases.in_flight", [self._observe_in_flight], description="Leases held"
        )
        meter.create_observable_gauge(
            "admitd.pool.limit", [self._observe_pool_limits], description="Configured limits"
        )
        meter.create_observable_gauge(
            "admitd.pool.limit_factor",
            [self._observe_gate(lambda gate: gate.factor)],
            description="The adaptive limits' factor on a pool's configured limits",
        )
        meter.create_observable_gauge(
            "admitd.pool.circuit",
            [self._observe_gate(lambda gate: _CIRCUIT[gate.circuit])],
            description="A pool's circuit breaker: 0 closed, 1 half-open, 2 open",
        )
        meter.create_observable_gauge(
            "admitd.pool.paused",
            [self._observe_gate(lambda gate: gate.paused_for)],
            unit="s",
            description="Seconds a pool stays paused by a provider's retry-after",
        )
        meter.create_observable_gauge(
            "admitd.budget.remaining",
            [self._observe_budget],
            description="Daily quota left (tokens or USD)",
        )

        self._tracer: trace.Tracer | None = None
        self._tracer_provider: TracerProvider | None = None
        endpoint = settings.observability.otlp_endpoint
        if endpoint:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            self._tracer_provider = TracerProvider(resource=resource)
            self._tracer_provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint))
            )
            self._tracer = self._tracer_provider.get_tracer("admitd")

    def span(self, name: str) -> AbstractContextManager[trace.Span]:
        """A span of ``name`` made current, or, with no exporter, a no-op one at no cost
        (the API's no-op tracer still enters a context manager and attaches a context)."""
        if self._tracer is None:
            return _NO_SPAN
        return self._tracer.start_as_current_span(name)

    def deciding(self, name: str, pool: str, tenant: str, priority: int) -> _Deciding:
        """The span of one admission decision (Acquire, Enqueue); a rejection is counted
        with its reason (an admission is counted by :meth:`admitted`)."""
        tracer = self._tracer
        scope = None if tracer is None else tracer.start_as_current_span(name)
        return _Deciding(self, scope, (pool, tenant, priority))

    # -- events -----------------------------------------------------------------------------

    def decision(self, pool: str, tenant: str, priority: int, reason: str = "") -> None:
        self._decided(pool, self.tenant_label(tenant), PRIORITY_LABELS[priority], reason)

    def _decided(self, pool: str, tenant_label: str, priority_label: str, reason: str) -> None:
        decision = "rejected" if reason else "admitted"
        self._decisions.add(1, (pool, tenant_label, priority_label, decision, reason))

    def admitted(self, pool: str, tenant: str, priority: int, tokens: int, waited: float) -> None:
        # The labels found once for the three instruments (as decision() finds them).
        label, priority_label = self.tenant_label(tenant), PRIORITY_LABELS[priority]
        self._decided(pool, label, priority_label, "")
        self._reserved.add(tokens, (pool, label))
        self._wait.record(waited, (pool, priority_label))

    def settled(self, pool: str, tenant: str, reserved: int, charged: int, refunded: int) -> None:
        labels = (pool, self.tenant_label(tenant))
        self._charged.add(charged, labels)
        self._refunded.add(refunded, labels)
        # Histograms take no negative values: overuse is recorded as its size, "under".
        direction = "over" if reserved >= charged else "under"
        self._estimate_error.record(abs(reserved - charged), (pool, direction))

    def expired(self, pool: str) -> None:
        self._expiries.add(1, (pool,))

    def overloaded(self, cause: str) -> None:
        self._overloaded.add(1, (cause,))

    def queue_delay(self, seconds: float) -> None:
        self._queue_delay = seconds

    def store_error(self) -> None:
        self._store_errors.add(1, ())

    def config_reload(self, result: str) -> None:
        self._reloads.add(1, (result,))

    def unchecked(self, pool: str) -> None:
        self._unchecked.add(1, (pool,))

    def followed(self, pool: str, tenant: str, result: str) -> None:
        """A dedup follower ended: ``shared`` (got its leader's result), ``failed``
        (the leader had none) or ``in_flight`` (it did not wait long enough)."""
        self._followers.add(1, (pool, self.tenant_label(tenant), result))

    def shadowed(self, lease: LeaseRecord, reason: str) -> None:
        """A lease a shadow-mode limit (``lease.shadowed``) would have refused, for
        ``reason``: counted and logged."""
        self._shadow.add(1, (lease.pool, self.tenant_label(lease.tenant), reason))
        log.warning(
            "shadow mode: admitted a call %s would refuse",
            lease.shadowed,
            extra={"lease_id": lease.lease_id, "tenant": lease.tenant, "reason": reason},
        )

    def tenant_label(self, tenant: str) -> str:
        """The tenant itself for the first ``max_tenant_labels`` tenants seen, else _other."""
        if tenant in self._tenants:
            return tenant
        if len(self._tenants) < self._max_tenants:
            self._tenants.add(tenant)
            return tenant
        return OTHER

    # -- gauges -----------------------------------------------------------------------------

    def observe(self, snapshot: Snapshot, limits: list[Limit], pools: list[str]) -> None:
        """Latest state for the gauges (refreshed by the engine in the background)."""
        self._snapshot, self._limits, self._pools = snapshot, limits, pools

    def _observe_queue(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._snapshot is None:
            return []
        queued = self._snapshot.queued_by_pool
        empty = [0] * len(PRIORITY_LABELS)
        return [
            Observation(n, {"pool": pool, "priority": PRIORITY_LABELS[i]})
            for pool in self._pools
            for i, n in enumerate(queued.get(pool, empty))
        ]

    def _observe_in_flight(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._snapshot is None:
            return []
        in_flight = self._snapshot.in_flight_by_pool
        return [Observation(in_flight.get(pool, 0), {"pool": pool}) for pool in self._pools]

    def _observe_pool_limits(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(limit.capacity, {"pool": limit.owner, "limit": limit.name})
            for limit in self._limits
            if limit.scope is Scope.POOL and limit.kind is not Kind.DAILY
        ]

    def _observe_gate(
        self, value: Callable[[GateView], float]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            if self._snapshot is None:
                return []
            gates = self._snapshot.gates
            return [
                Observation(value(gates.get(pool, _CLOSED)), {"pool": pool}) for pool in self._pools
            ]

        return observe

    def _observe_budget(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._snapshot is None:
            return []
        observations = []
        for limit in self._limits:
            if limit.kind is not Kind.DAILY:
                continue
            left = max(0.0, limit.capacity - self._snapshot.levels.get(limit.key, 0.0))
            usd = limit.unit is Unit.NANO_USD
            observations.append(
                Observation(
                    left / 1e9 if usd else left,
                    {
                        "scope": limit.scope.value,
                        "name": limit.owner,
                        "unit": "usd" if usd else "tokens",
                    },
                )
            )
        return observations

    # -- lifecycle --------------------------------------------------------------------------

    def serve(self, listen: str) -> int:
        """Serve ``/metrics`` over HTTP on ``listen`` (host:port; port 0 picks one)."""
        host, _, port = listen.rpartition(":")
        self._http, self._http_thread = start_http_server(
            int(port), addr=host, registry=self.registry
        )
        self.metrics_port = int(self._http.server_port)
        return self.metrics_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._tracer_provider is not None:
            self._tracer_provider.shutdown()
        self.meter_provider.shutdown()


class _Deciding:
    """:meth:`Telemetry.deciding`'s context: a class, since ``@contextmanager`` (a generator,
    its wrapper, a no-op span's context) cost ~12 Python calls an Acquire, this 3."""

    __slots__ = ("_labels", "_scope", "_span", "_telemetry")

    def __init__(self, telemetry: Telemetry, scope: _Scope | None, labels: _Labels) -> None:
        self._telemetry, self._scope, self._labels = telemetry, scope, labels
        self._span: trace.Span = trace.INVALID_SPAN  # no exporter: nothing to enter

    def __enter__(self) -> trace.Span:
        if self._scope is not None:
            self._span = span = self._scope.__enter__()
            span.set_attributes({"admitd.pool": self._labels[0], "admitd.tenant": self._labels[1]})
        return self._span

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if isinstance(error, Rejected):
            self._telemetry.decision(*self._labels, error.reason.value)
            self._span.set_attribute("admitd.rejected", error.reason.value)
        return None if self._scope is None else self._scope.__exit__(kind, error, tb)
