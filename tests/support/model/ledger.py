"""The levels of every limit and the leases that hold them: what fits now, what a refused
call is told, reserving and settling, lazy expiry (and the tombstone an expired lease leaves
for one TTL, which a late Release settles), and the invariants over the levels (a bucket's
sliding window, a daily quota)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from support.model.limits import DAY, EPS, HOLD_WEIGHT, MIN_SLOT_WAIT, Limit, Ticket, hint


@dataclass
class Lease:
    ticket: Ticket
    granted: float
    expires: float


@dataclass
class Settled:
    charged: int
    refunded: int
    drop_at: float  # a second release is answered until then


@dataclass
class Grave:
    """An expired lease, remembered until ``drop_at`` (its expiry + its TTL): a Release or
    Renew of it is LEASE_EXPIRED, and the first Release settles it (``settled``)."""

    lease: Lease
    drop_at: float
    settled: Settled | None = None


@dataclass
class Refusal:
    """What a refused caller is told: one of ``reasons`` (more than one where waits tie or
    the model is unsure), and after how long a retry can succeed (None: never). ``checked``
    False: the model does not predict the delay (the call was held by waiters ahead)."""

    reasons: set[str]
    retry: float | None
    checked: bool = True
    what: str = ""


@dataclass
class Event:
    """For the window checks: a bucket's consumption at a time (grant +, refund -)."""

    at: float
    key: str
    amount: float


class Ledger:
    """Every configured limit's level, the live leases, and the settled ones a second
    release is still answered for. ``now`` moves only forward (``at``)."""

    def __init__(self, limits: list[Limit], now: float, wall_offset: float) -> None:
        self.now = now
        self.wall_offset = wall_offset  # wall time (UTC) = now + this
        self.all_limits: dict[str, Limit] = {}
        for limit in limits:
            self.all_limits[limit.key] = limit
        self.gauges: dict[str, float] = {}
        self.buckets: dict[str, tuple[float, float]] = {}
        self.daily: dict[str, float] = {}
        self.leases: dict[str, Lease] = {}
        self.released: dict[str, Settled] = {}
        self.graves: dict[str, Grave] = {}
        self.hold: dict[str, float] = {}  # gauge key -> typical hold of its released leases
        self.events: list[Event] = []  # bucket consumption, for the window invariant
        self.overuse: dict[str, float] = {}  # daily key -> honest overuse charged today

    def at(self, now: float) -> None:
        """Every operation reads the time once and first reaps what has expired."""
        assert now >= self.now - 1e-9, (now, self.now)
        self.now = max(self.now, now)
        for lease_id, lease in list(self.leases.items()):
            if lease.expires <= self.now:
                self._end(lease, 0.0, 0.0)  # the full reservation stays charged
                self.graves[lease_id] = Grave(lease, lease.expires + lease.ticket.ttl)
        for lease_id, done in list(self.released.items()):
            if done.drop_at <= self.now:
                del self.released[lease_id]
        for lease_id, grave in list(self.graves.items()):
            if grave.drop_at <= self.now:
                del self.graves[lease_id]

    def level(self, limit: Limit) -> float:
        if limit.kind == "gauge":
            return self.gauges.get(limit.key, 0.0)
        if limit.kind == "bucket":
            level, at = self.buckets.get(limit.key, (limit.capacity, self.now))
            return min(limit.capacity, level + (self.now - at) * limit.rate)
        return self.daily.get(limit.key, 0.0)

    def levels(self) -> dict[str, float]:
        return {key: self.level(limit) for key, limit in self.all_limits.items()}

    def fits(self, limit: Limit, amount: float) -> bool | None:
        level = self.level(limit)
        if limit.kind == "bucket":
            if abs(level - amount) <= EPS * max(1.0, amount):
                return None
            return amount <= level
        return level + amount <= limit.capacity

    def check(
        self, t: Ticket, kinds: tuple[str, ...] = ("gauge", "bucket", "daily")
    ) -> tuple[str, Limit | None]:
        """("fits" | "denied" | "unsure", the first limit that does not (or may not) fit)."""
        unsure: Limit | None = None
        for limit in t.limits:
            if limit.kind not in kinds:
                continue
            verdict = self.fits(limit, t.amount(limit.unit))
            if verdict is False:
                return ("unsure" if unsure else "denied"), (unsure or limit)
            if verdict is None and unsure is None:
                unsure = limit
        return ("unsure", unsure) if unsure else ("fits", None)

    def refusal(self, t: Ticket, held_by: Limit | None) -> Refusal:
        """Why ``t`` is refused now: every limit it does not fit, each with the time until
        it does as things stand; the longest names the refusal and is the retry delay.
        ``held_by``: what refused it when it fits them all (waiters ahead of it)."""
        waits: list[tuple[float, Limit, bool]] = []  # wait, limit, sure it does not fit
        for limit in t.limits:
            verdict = self.fits(limit, t.amount(limit.unit))
            if verdict is not True:
                waits.append((self.wait(limit, t.amount(limit.unit)), limit, verdict is False))
        sure = [wait for wait, _, is_sure in waits if is_sure]
        if not sure:
            reasons = {limit.reason for _, limit, _ in waits}
            if held_by is not None:
                reasons.add(held_by.reason)
            return Refusal(reasons, None, checked=False, what="held by waiters ahead")
        longest = max(sure)
        binding = [limit for wait, limit, _ in waits if wait >= longest - EPS]
        what = ", ".join(f"{limit.key} {wait:.6f}" for wait, limit, _ in waits)
        return Refusal({limit.reason for limit in binding}, longest, what=what)

    def wait(self, limit: Limit, amount: float) -> float:
        """Seconds until ``limit`` fits ``amount``, as things stand."""
        level = self.level(limit)
        if limit.kind == "bucket":
            return hint((amount - level) / limit.rate)
        if limit.kind == "daily":
            return hint(DAY - (self.now + self.wall_offset) % DAY)
        # A slot's holder is expected at its grant time plus the gauge's typical hold while
        # that is ahead, else at its lease's expiry.
        hold = self.hold.get(limit.key)
        ends = []
        for lease in self.leases.values():
            if limit in lease.ticket.limits:
                end = lease.expires
                if hold is not None and lease.granted + hold > self.now:
                    end = min(end, lease.granted + hold)
                ends.append(end - self.now)
        need = math.ceil(level + amount - limit.capacity)
        return hint(max(MIN_SLOT_WAIT, sorted(ends)[need - 1]))

    def _held(self, lease: Lease) -> None:
        seconds = self.now - lease.granted
        for limit in lease.ticket.limits:
            if limit.kind == "gauge":
                old = self.hold.get(limit.key)
                hold = seconds if old is None else old + HOLD_WEIGHT * (seconds - old)
                self.hold[limit.key] = hold

    @staticmethod
    def never_fits(t: Ticket) -> Limit | None:
        for limit in t.limits:
            if limit.kind != "gauge" and t.amount(limit.unit) > limit.capacity:
                return limit
        return None

    def _reserve(self, t: Ticket) -> None:
        for limit in t.limits:
            amount = t.amount(limit.unit)
            if limit.kind == "gauge":
                self.gauges[limit.key] = self.gauges.get(limit.key, 0.0) + amount
            elif limit.kind == "bucket":
                self.buckets[limit.key] = (self.level(limit) - amount, self.now)
                self.events.append(Event(self.now, limit.key, amount))
            else:
                self.daily[limit.key] = self.daily.get(limit.key, 0.0) + amount
        self.leases[t.id] = Lease(t, self.now, self.now + t.ttl)

    def _end(self, lease: Lease, token_delta: float, usd_delta: float) -> None:
        """Free the slots and move token/USD counters by charged - reserved."""
        t = lease.ticket
        del self.leases[t.id]
        for limit in t.limits:
            if limit.unit == "slot":
                self.gauges[limit.key] = max(0.0, self.gauges.get(limit.key, 0.0) - 1)
                continue
            delta = {"token": token_delta, "nano_usd": usd_delta}.get(limit.unit, 0.0)
            if delta == 0:
                continue
            if limit.kind == "bucket":
                level = self.level(limit)
                # A refund never lifts a bucket above capacity; overuse may put it in debt.
                self.buckets[limit.key] = (min(limit.capacity, level - delta), self.now)
                if delta < 0:  # a refund: room handed back (overuse only adds debt)
                    self.events.append(Event(self.now, limit.key, delta))
            else:
                self.daily[limit.key] = max(0.0, self.daily.get(limit.key, 0.0) + delta)
                if delta > 0:
                    self.overuse[limit.key] = self.overuse.get(limit.key, 0.0) + delta

    def _settle_expired(self, grave: Grave, token_delta: float, usd_delta: float) -> None:
        """A late Release moves an expired lease's daily counters by charged - reserved,
        both ways; its buckets only by overuse (into debt: never room handed back, as they
        refilled meanwhile); its slots were freed at the expiry."""
        for limit in grave.lease.ticket.limits:
            delta = {"token": token_delta, "nano_usd": usd_delta}.get(limit.unit, 0.0)
            if limit.unit == "slot" or delta == 0 or (limit.kind == "bucket" and delta < 0):
                continue
            if limit.kind == "bucket":
                self.buckets[limit.key] = (self.level(limit) - delta, self.now)
            else:
                self.daily[limit.key] = max(0.0, self.daily.get(limit.key, 0.0) + delta)
                if delta > 0:
                    self.overuse[limit.key] = self.overuse.get(limit.key, 0.0) + delta

    def check_without_unsure(self, t: Ticket) -> tuple[str, Limit | None]:
        """The first limit that surely does not fit, treating unsure buckets as fitting."""
        for limit in t.limits:
            if self.fits(limit, t.amount(limit.unit)) is False:
                return "denied", limit
        return "fits", None

    # -- what the server must show ------------------------------------------------------

    def in_flight(self) -> tuple[dict[str, int], dict[str, int]]:
        pools: dict[str, int] = {}
        tenants: dict[str, int] = {}
        for lease in self.leases.values():
            pools[lease.ticket.pool] = pools.get(lease.ticket.pool, 0) + 1
            tenants[lease.ticket.tenant] = tenants.get(lease.ticket.tenant, 0) + 1
        return pools, tenants

    def window_violations(self, start: float) -> list[str]:
        """Tokens (requests) reserved from a bucket within any window [t0, t1], net of
        refunds, never exceed its capacity plus what it refills in that time. Usage above a
        reservation (debt) only makes later grants wait, so it is not counted as room."""
        problems = []
        for key, limit in self.all_limits.items():
            if limit.kind != "bucket":
                continue
            events = sorted((e for e in self.events if e.key == key), key=lambda e: e.at)
            for t0 in sorted({start, *(e.at for e in events)}):
                taken = 0.0
                for e in events:
                    if e.at < t0:
                        continue
                    taken += e.amount
                    allowance = limit.capacity + limit.rate * (e.at - t0)
                    if taken > allowance + EPS * max(1.0, limit.capacity):
                        problems.append(
                            f"{key}: {taken:g} taken in [{t0:.6f}, {e.at:.6f}]"
                            f" > allowance {allowance:g}"
                        )
                        break
        return problems

    def daily_violations(self, levels: dict[str, float]) -> list[str]:
        """A daily quota is exceeded only by usage above reservations (honest overuse)."""
        problems = []
        for key, limit in self.all_limits.items():
            if limit.kind == "daily":
                allowed = limit.capacity + self.overuse.get(key, 0.0)
                if levels.get(key, 0.0) > allowed + EPS:
                    problems.append(f"{key}: {levels[key]:g} used > {allowed:g}")
        return problems
