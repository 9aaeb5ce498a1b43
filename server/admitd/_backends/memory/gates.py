"""Pool gates: what stops or slows a pool whatever its limits say, driven by how calls end.

- **Pause.** A provider's ``retry-after`` hint, passed in Release, stops the pool until then
  (at most :data:`MAX_PAUSE`): waiters wait, fail-fast calls are refused.
- **Circuit breaker.** When the share of calls ending in a provider error or timeout reaches
  ``failure_rate`` (over at least ``min_calls`` in a sliding ``window``), the circuit opens:
  for ``open_for`` every call is refused at once (queued ones too), so callers can go to a
  fallback pool. Then it is half-open: up to ``probes`` calls go through as probes; a probe
  that succeeds closes the circuit, one that fails opens it again.
- **AIMD.** A provider 429 multiplies the pool's effective concurrency and rates by
  ``decrease`` (at most once per ``cooldown``, so one overload is one step); each successful
  call adds ``increase`` of the configured value back; never below ``floor``, never above
  the configuration. Concurrency is scaled, as are the refill rates of the pool's buckets
  (not their capacity, so any call that fits the configuration can still fit).

The state is the store's, changed in the same atomic step as the release that reports the
outcome, so all replicas see one gate: :class:`GateState` for the memory backend, the same
arithmetic in ``_backends/redis/lua/_lib2_gates.lua`` for Redis.
"""

from __future__ import annotations

import math
from dataclasses import replace

from ..._model import (
    MAX_PAUSE,
    Breaker,
    Cause,
    Circuit,
    Gate,
    GateView,
    Kind,
    Limit,
    Outcome,
    Scope,
)


class GateState:
    """One pool's gate state (memory backend)."""

    __slots__ = (
        "circuit",
        "current",
        "decreased_at",
        "factor",
        "failed",
        "opened_until",
        "paused_until",
        "previous",
        "previous_failed",
        "probes",
        "window",
    )

    def __init__(self) -> None:
        self.factor = 1.0
        self.decreased_at = -math.inf
        self.paused_until = 0.0
        self.circuit: Circuit = "closed"
        self.opened_until = 0.0
        self.probes = 0  # probes in flight while half-open
        self.window = 0  # breaker window index, and its counts and the previous one's
        self.current = self.failed = self.previous = self.previous_failed = 0

    def closed_for(self, gate: Gate | None, now: float) -> tuple[Cause, float] | None:
        """Why the pool admits nothing now and for how many seconds; None: it admits."""
        if self.paused_until > now:
            return "paused", self.paused_until - now
        breaker = gate.breaker if gate is not None else None
        if breaker is None:
            return None
        if self.circuit == "open":
            if now < self.opened_until:
                return "open", self.opened_until - now
            self.circuit, self.probes = "half_open", 0
        if self.circuit == "half_open" and self.probes >= breaker.probes:
            return "probing", breaker.open_for / breaker.probes  # a probe's typical turn
        return None

    def admit(self) -> bool:
        """Take a call through the gate; True when it goes as a half-open probe."""
        if self.circuit != "half_open":
            return False
        self.probes += 1
        return True

    def release_probe(self) -> None:
        self.probes = max(0, self.probes - 1)

    def report(
        self, gate: Gate | None, outcome: Outcome, retry_after: float, probe: bool, now: float
    ) -> None:
        """A call ended: its outcome moves the breaker and the AIMD factor; a provider's
        retry-after pauses the pool."""
        if retry_after > 0:
            self.paused_until = max(self.paused_until, now + min(retry_after, MAX_PAUSE))
        if gate is None or outcome is Outcome.CANCELLED:
            return
        if gate.aimd is not None:
            aimd = gate.aimd
            if outcome is Outcome.PROVIDER_RATE_LIMITED:
                if now - self.decreased_at >= aimd.cooldown:
                    self.factor = max(aimd.floor, self.factor * aimd.decrease)
                    self.decreased_at = now
            elif outcome is Outcome.OK:
                self.factor = min(1.0, self.factor + aimd.increase)
        if gate.breaker is not None:
            failed = outcome in (Outcome.PROVIDER_ERROR, Outcome.TIMEOUT)
            self._judge(gate.breaker, failed, probe, now)

    def _judge(self, breaker: Breaker, failed: bool, probe: bool, now: float) -> None:
        if probe and self.circuit == "half_open":  # its slot was freed when it settled
            if failed:
                self._open(breaker, now)
            else:
                self.circuit, self.probes = "closed", 0
                self.current = self.failed = self.previous = self.previous_failed = 0
            return
        if self.circuit != "closed":
            return  # a call admitted before the circuit opened says nothing new
        into = self._roll(breaker, now)
        self.current += 1
        self.failed += failed
        calls = self.previous * (1 - into) + self.current
        failures = self.previous_failed * (1 - into) + self.failed
        if calls >= breaker.min_calls and failures >= breaker.failure_rate * calls:
            self._open(breaker, now)

    def _open(self, breaker: Breaker, now: float) -> None:
        self.circuit, self.opened_until, self.probes = "open", now + breaker.open_for, 0

    def _roll(self, breaker: Breaker, now: float) -> float:
        """Move the sliding window to ``now``; return how far into the current window."""
        window = math.floor(now / breaker.window)
        if window != self.window:
            moved = window == self.window + 1
            self.previous, self.previous_failed = (self.current, self.failed) if moved else (0, 0)
            self.current = self.failed = 0
            self.window = window
        return now / breaker.window - window

    def view(self, gate: Gate | None, now: float) -> GateView:
        self.closed_for(gate, now)  # an open circuit past its time shows as half-open
        paused_for = max(0.0, self.paused_until - now)
        return GateView(self.factor, self.circuit, paused_for)

    def effective(self, limit: Limit) -> Limit:
        """``limit`` as the AIMD factor scales it (pool concurrency and bucket rates)."""
        if self.factor >= 1.0 or limit.scope is not Scope.POOL:
            return limit
        if limit.kind is Kind.GAUGE:
            return replace(limit, capacity=max(1.0, math.floor(limit.capacity * self.factor)))
        if limit.kind is Kind.BUCKET:
            return replace(limit, rate=limit.rate * self.factor)
        return limit
