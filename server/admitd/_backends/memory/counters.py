"""The memory backend's limit state: every limit's level and every pool's gate.

Gauges count what is in use (concurrency), buckets what is left (refilled continuously),
daily counters what was used on the current UTC day. Levels are read against each limit as
configured *now* (``configure``), scaled by its pool's AIMD factor, so a config change or an
adaptive step also applies to calls already queued. The memory backend calls these inside
its atomic steps; ``_backends/redis/lua/_lib3_limits.lua`` is the same state machine for Redis.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace

from ..._model import (  # GAUGE, ... rather than Kind.GAUGE, ...: see _model.py
    BUCKET,
    DAILY,
    GAUGE,
    NANO_USD,
    POOL_SCOPE,
    SLOT,
    TOKEN,
    Denial,
    Gate,
    GateView,
    Kind,
    Limit,
    Outcome,
    Ticket,
    day_number,
    gate_limit,
)
from .gates import GateState

_OPEN = GateState()  # the gate of a pool with no reported outcome yet: always open
Ends = Callable[[str, int, float], tuple[float, ...]]
"""(gauge key, slots needed, now) -> seconds until the holders of those slots are expected
to end, soonest first (``Leases.ends``)."""


def _fits(limit: Limit, amount: float, level: float) -> bool:
    if limit.kind is BUCKET:
        return amount <= level  # what is left must cover it
    return level + amount <= limit.capacity


def utc_day(wall: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(wall))


class Counters:
    """Limit levels and pool gates. ``ends`` tells when the leases holding a gauge's slots
    are expected to end (the leases are kept beside, in ``leases.py``)."""

    def __init__(self, ends: Ends) -> None:
        self._ends = ends
        self._gauges: dict[str, float] = {}
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (level, at)
        self._daily: dict[str, float] = {}  # "key@day" -> used
        self.day = ""  # the current UTC day, YYYY-MM-DD
        self.day_number = -1  # ...as a day_number (the ledger's key), compared on each turn_day
        self._defs: dict[str, Limit] | None = None  # limits as configured now, by key
        self._gate_defs: dict[str, Gate] = {}  # pool -> its gate as configured now
        self._gates: dict[str, GateState] = {}

    def configure(self, limits: list[Limit], gates: list[Gate]) -> None:
        self._defs = {limit.key: limit for limit in limits}
        self._gate_defs = {gate.pool: gate for gate in gates}

    def turn_day(self, wall: float) -> bool:
        """Start a new UTC day's counters if it has turned; True when it did."""
        number = day_number(wall)  # not utc_day: formatting a date on every call cost ~3 us
        if number == self.day_number:
            return False
        self.day_number, self.day = number, utc_day(wall)
        self._daily = {k: v for k, v in self._daily.items() if k.endswith("@" + self.day)}
        return True

    # -- reading ----------------------------------------------------------------------------

    def current(self, limit: Limit) -> Limit | None:
        """The limit as configured now (None: no longer configured), scaled by its pool's
        AIMD factor. Calls queued before a config change carry the limits of their time;
        capacities are read from here."""
        current = self._defs.get(limit.key) if self._defs is not None else limit
        gate = self._gates.get(limit.owner) if limit.scope is POOL_SCOPE else None
        if gate is None or current is None or gate.factor >= 1.0:  # not scaled: as it is
            return current
        return gate.effective(current)

    def level(self, limit: Limit, now: float) -> float:
        """In use (gauge), left (bucket) or used today (daily)."""
        return self._level(self.current(limit) or limit, now)

    def _level(self, current: Limit, now: float) -> float:
        """:meth:`level` of a limit as :meth:`current` gave it (not looked up again)."""
        if current.kind is GAUGE:
            return self._gauges.get(current.key, 0.0)
        if current.kind is BUCKET:
            level, at = self._buckets.get(current.key, (current.capacity, now))
            return min(current.capacity, level + (now - at) * current.rate)
        return self._daily.get(f"{current.key}@{self.day}", 0.0)

    def check(
        self, ticket: Ticket, now: float, kinds: tuple[Kind, ...] = tuple(Kind)
    ) -> tuple[Denial | None, str]:
        """The first limit the ticket does not fit, and the key of the first shadow-mode
        limit it does not fit (which does not refuse it)."""
        shadowed = ""
        for queued_limit in ticket.limits:
            limit = self.current(queued_limit)
            if limit is None or limit.kind not in kinds:
                continue
            amount, level = ticket.amount(limit.unit), self._level(limit, now)
            if not _fits(limit, amount, level):
                if not limit.shadow:
                    return Denial(limit, level, amount), shadowed
                shadowed = shadowed or limit.key
        return None, shadowed

    def refusal(self, ticket: Ticket, now: float, held_by: Denial | None) -> Denial | None:
        """Why ``ticket`` is refused now: the first limit it does not fit (its pool's gate
        first when shut; shadow-mode limits never refuse), with every other one it does
        not fit in ``also``, so that the policy's retry delay is the longest of theirs. A
        gauge's denial says when the holders of the slots it needs are expected to end.
        ``held_by`` when it fits every limit (what holds the waiters ahead of it)."""
        shut = self.shut(ticket.pool, now)
        out = [shut] if shut is not None else []
        for queued_limit in ticket.limits:
            limit = self.current(queued_limit)
            if limit is None or limit.shadow:
                continue
            amount, level = ticket.amount(limit.unit), self._level(limit, now)
            if _fits(limit, amount, level):
                continue
            holders: tuple[float, ...] = ()
            if limit.kind is GAUGE:
                need = math.ceil(level + amount - limit.capacity)
                holders = self._ends(limit.key, need, now)
            out.append(Denial(limit, level, amount, ends=holders))
        return replace(out[0], also=tuple(out[1:])) if out else held_by

    def shut(self, pool: str, now: float) -> Denial | None:
        """Why the pool's gate admits nothing now (paused, open, all probes out), or None."""
        gate = self._gates.get(pool)
        closed = gate.closed_for(self._gate_defs.get(pool), now) if gate is not None else None
        if closed is None:
            return None
        cause, seconds = closed
        return Denial(gate_limit(pool), seconds, 1.0, cause)

    def gates(self, now: float) -> dict[str, GateView]:
        defs = self._gate_defs
        return {pool: gate.view(defs.get(pool), now) for pool, gate in self._gates.items()}

    # -- moving -----------------------------------------------------------------------------

    def take(self, ticket: Ticket, now: float) -> bool:
        """Reserve everything ``ticket`` needs; True when it goes through a half-open
        circuit as a probe."""
        for limit in ticket.limits:
            amount = ticket.amount(limit.unit)
            if limit.kind is GAUGE:
                self._gauges[limit.key] = self._gauges.get(limit.key, 0.0) + amount
            elif limit.kind is BUCKET:
                self._buckets[limit.key] = (self.level(limit, now) - amount, now)
            else:
                key = f"{limit.key}@{self.day}"
                self._daily[key] = self._daily.get(key, 0.0) + amount
        return self._gates.get(ticket.pool, _OPEN).admit()

    def give(
        self,
        ticket: Ticket,
        day: str,
        token_delta: float,
        usd_delta: float,
        probe: bool,
        now: float,
        expired: bool = False,
    ) -> None:
        """End a lease taken on ``day``: free its slots and move token/USD counters by
        charged - reserved. ``expired``: settle a lease that expired (its slots were freed
        then): daily counters move both ways, buckets only by overuse (they have refilled
        since; a refund now could grant what the provider's window no longer has)."""
        if probe:
            self._gates[ticket.pool].release_probe()
        for limit in ticket.limits:
            if limit.unit is SLOT:
                if not expired:
                    self._gauges[limit.key] = max(0.0, self._gauges.get(limit.key, 0.0) - 1)
                continue
            if limit.unit is TOKEN:
                delta = token_delta
            elif limit.unit is NANO_USD:
                delta = usd_delta
            else:
                continue  # a request is never given back
            if delta == 0 or (expired and limit.kind is BUCKET and delta < 0):
                continue
            if limit.kind is BUCKET:
                # A refund never lifts a bucket above capacity; overuse may put it in debt.
                current = self.current(limit) or limit
                left = self._level(current, now) - delta
                self._buckets[limit.key] = (min(current.capacity, left), now)
            elif limit.kind is DAILY:
                key = f"{limit.key}@{day}"
                if key in self._daily or delta > 0:
                    self._daily[key] = max(0.0, self._daily.get(key, 0.0) + delta)

    def report(
        self, pool: str, outcome: Outcome, retry_after: float, probe: bool, now: float
    ) -> None:
        """A call ended: move the pool's gate (pause, circuit breaker, AIMD)."""
        gate = self._gates.get(pool)
        if gate is None:
            gate = self._gates[pool] = GateState()
        gate.report(self._gate_defs.get(pool), outcome, retry_after, probe, now)
