"""A small reference model of admission, written from README.md ("How admission
works"), for the state-machine test (``test_state_machine.py``). Pure Python; it imports
nothing from admitd.

What it models: limits of three kinds (gauges: concurrency; continuous token buckets holding
one minute of capacity; daily quotas), checked and reserved all-or-nothing in a fixed order
that decides the reason of a rejection; leases that end exactly once (released, or expired
and reaped lazily by the next operation); release settling actual usage (refunds never above
a bucket's capacity, overuse into debt); and one pool's queue: strict priority classes with
aging, weighted fair queueing on token cost within a class (virtual finish tags, no banked
credit, FIFO per tenant), a waiter held back by its own tenant's limit passed over, one held
back by the pool blocking the rest, and a call that can never fit today rejected.

Time is whatever base the backend under test uses (monotonic seconds for memory, Unix
seconds for Redis) so that bucket arithmetic is done on the same floats. Bucket comparisons
within ``EPS`` of the boundary are *unsure*: the model then follows what the server did (an
observation) instead of predicting, and says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

EPS = 1e-6
DAY = 86_400.0
# README, "How admission works": a refused call's retry delay.
HOLD_WEIGHT = 0.2  # a gauge's typical hold: each new hold weighs this much
MIN_SLOT_WAIT = 0.05  # a slot's holder is expected no sooner than this
MIN_RETRY = 0.001
DAILY_FIELDS = ("tokens_per_day", "usd_per_day")
FLOW_FIELDS = ("max_concurrency", "tokens_per_minute", "requests_per_minute")
KIND = {
    "tokens_per_day": "daily",
    "usd_per_day": "daily",
    "max_concurrency": "gauge",
    "tokens_per_minute": "bucket",
    "requests_per_minute": "bucket",
}
UNIT = {
    "tokens_per_day": "token",
    "usd_per_day": "nano_usd",
    "max_concurrency": "slot",
    "tokens_per_minute": "token",
    "requests_per_minute": "request",
}


@dataclass(frozen=True)
class Limit:
    key: str  # the server's key: "<scope>:<owner>:<field>", or "global:<field>"
    kind: str  # gauge | bucket | daily
    unit: str  # slot | request | token | nano_usd
    scope: str  # pool | tenant | global
    capacity: float
    rate: float = 0.0  # per second, buckets only

    @property
    def reason(self) -> str:
        if self.kind == "gauge":
            return "CONCURRENCY_LIMIT"
        if self.kind == "bucket":
            return "TOKEN_RATE_LIMIT" if self.unit == "token" else "REQUEST_RATE_LIMIT"
        return "TENANT_QUOTA" if self.scope == "tenant" else "BUDGET_EXHAUSTED"


def limits_of(
    scope: str, owner: str, section: dict[str, Any], fields: tuple[str, ...]
) -> list[Limit]:
    out = []
    for name in fields:
        value = section.get(name)
        if value is None:
            continue
        capacity = float(round(value * 1e9)) if UNIT[name] == "nano_usd" else float(value)
        rate = capacity / 60.0 if KIND[name] == "bucket" else 0.0
        key = f"{scope}:{owner}:{name}" if owner else f"{scope}:{name}"
        out.append(Limit(key, KIND[name], UNIT[name], scope, capacity, rate))
    return out


def nano_per_token(per_million: float) -> float:
    return per_million * 1_000_000_000 / 1_000_000


def price(
    inp: int,
    out: int,
    pin: float,
    pout: float,
    cached: tuple[int, int, float, float] = (0, 0, 0.0, 0.0),
) -> int:
    """Rounded up, so that a budget is never under-counted. ``cached``: tokens read from and
    written to the provider's cache (parts of ``inp``), and their prices."""
    read, written, pread, pwrite = cached
    uncached = inp - read - written
    return math.ceil(uncached * pin + read * pread + written * pwrite + out * pout - 1e-6)


# What a release without usage is charged, by outcome (README, "How admission works").
UNREPORTED = {
    "OK": "reservation",
    "PROVIDER_RATE_LIMITED": "nothing",
    "PROVIDER_ERROR": "nothing",
    "TIMEOUT": "input",
    "CANCELLED": "input",
}


@dataclass
class Ticket:
    id: str
    tenant: str
    pool: str
    inp: int
    out: int
    usd: int
    pin: float
    pout: float
    pread: float  # cached input
    pwrite: float  # cache-write input
    prio: int  # class 0 (critical) .. 3 (low)
    cost: float  # reservation / weight
    limits: tuple[Limit, ...]
    wait: float
    ttl: float

    @property
    def tokens(self) -> int:
        return self.inp + self.out

    def amount(self, unit: str) -> float:
        return {"token": float(self.tokens), "nano_usd": float(self.usd)}.get(unit, 1.0)


@dataclass
class Waiter:
    ticket: Ticket
    tag: float
    seq: int
    enq: float

    @property
    def deadline(self) -> float:
        return self.enq + self.ticket.wait


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
class Refusal:
    """What a refused caller is told: one of ``reasons`` (more than one where waits tie or
    the model is unsure), and after how long a retry can succeed (None: never). ``checked``
    False: the model does not predict the delay (the call was held by waiters ahead)."""

    reasons: set[str]
    retry: float | None
    checked: bool = True
    what: str = ""


def hint(seconds: float) -> float:
    """A retry delay as the server words it: rounded up to the microsecond."""
    return max(MIN_RETRY, math.ceil(round(seconds * 1e6, 3)) / 1e6)


@dataclass
class Pass:
    """What one dispatch pass did, and where it disagreed with the observed server."""

    grants: list[str] = field(default_factory=list)
    rejections: list[tuple[str, Limit]] = field(default_factory=list)
    watched: Limit | None = None
    blocked: Limit | None = None
    unsure: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)


@dataclass
class Event:
    """For the window checks: a bucket's consumption at a time (grant +, refund -)."""

    at: float
    key: str
    amount: float


class Model:
    def __init__(self, config: dict[str, Any], now: float, wall_offset: float = 0.0) -> None:
        self.config = config
        self.now = now
        self.wall_offset = wall_offset  # wall time (UTC) = now + this
        self.aging = float(config["queue"]["aging"])
        self.max_wait = float(config["queue"]["max_wait"])
        self.max_per_tenant = int(config["queue"]["max_per_tenant"])
        self.max_length = int(config["queue"]["max_length"])
        self.ttl = float(config["lease"]["ttl"])
        self.pools = {p["name"]: p for p in config["pools"]}
        self.tenants = {t["name"]: t for t in config["tenants"]}
        self.all_limits: dict[str, Limit] = {}
        for limit in self._all():
            self.all_limits[limit.key] = limit
        self.gauges: dict[str, float] = {}
        self.buckets: dict[str, tuple[float, float]] = {}
        self.daily: dict[str, float] = {}
        self.leases: dict[str, Lease] = {}
        self.released: dict[str, Settled] = {}
        self.expired: set[str] = set()
        self.classes: list[list[Waiter]] = [[] for _ in range(4)]
        self.vtime = [0.0] * 4
        self.last: dict[tuple[int, str], float] = {}
        self.waiters: dict[str, Waiter] = {}
        self.seq = 0
        self.hold: dict[str, float] = {}  # gauge key -> typical hold of its released leases
        self.events: list[Event] = []  # bucket consumption, for the window invariant
        self.overuse: dict[str, float] = {}  # daily key -> honest overuse charged today

    # -- configuration ------------------------------------------------------------------

    def _all(self) -> list[Limit]:
        limits = limits_of("global", "", self.config.get("budget", {}), DAILY_FIELDS)
        for pool in self.config["pools"]:
            limits += limits_of("pool", pool["name"], pool, DAILY_FIELDS + FLOW_FIELDS)
        for tenant in self.config["tenants"]:
            limits += limits_of("tenant", tenant["name"], tenant, DAILY_FIELDS + FLOW_FIELDS)
        return limits

    def limits_for(self, pool: str, tenant: str) -> tuple[Limit, ...]:
        """Daily quotas first (global, pool, tenant), then the pool's flow limits, then the
        tenant's: the first that does not fit names the reason."""
        p, t = self.pools[pool], self.tenants[tenant]
        return (
            *limits_of("global", "", self.config.get("budget", {}), DAILY_FIELDS),
            *limits_of("pool", pool, p, DAILY_FIELDS),
            *limits_of("tenant", tenant, t, DAILY_FIELDS),
            *limits_of("pool", pool, p, FLOW_FIELDS),
            *limits_of("tenant", tenant, t, FLOW_FIELDS),
        )

    def ticket(
        self, id: str, tenant: str, pool: str, inp: int, out: int, priority: int, wait: float
    ) -> Ticket:
        prices = self.pools[pool].get("price", {})
        pin = nano_per_token(prices.get("input_per_million", 0.0))
        pout = nano_per_token(prices.get("output_per_million", 0.0))
        # Cached input and cache writes cost what input costs unless the table says.
        per_input = prices.get("input_per_million", 0.0)
        pread = nano_per_token(prices.get("cached_input_per_million", per_input))
        pwrite = nano_per_token(prices.get("cache_write_input_per_million", per_input))
        weight = float(self.tenants[tenant].get("weight", 1.0))
        return Ticket(
            id=id,
            tenant=tenant,
            pool=pool,
            inp=inp,
            out=out,
            # Which input a cache will take is unknown: reserved at the dearer price.
            usd=price(inp, out, max(pin, pwrite), pout),
            pin=pin,
            pout=pout,
            pread=pread,
            pwrite=pwrite,
            prio=(priority or 3) - 1,
            cost=(inp + out) / weight,
            limits=self.limits_for(pool, tenant),
            wait=min(wait, self.max_wait),
            ttl=self.ttl,
        )

    # -- levels -------------------------------------------------------------------------

    def at(self, now: float) -> None:
        """Every operation reads the time once and first reaps what has expired."""
        assert now >= self.now - 1e-9, (now, self.now)
        self.now = max(self.now, now)
        for lease_id, lease in list(self.leases.items()):
            if lease.expires <= self.now:
                self._end(lease, 0.0, 0.0)  # the full reservation stays charged
                self.expired.add(lease_id)
        for lease_id, done in list(self.released.items()):
            if done.drop_at <= self.now:
                del self.released[lease_id]

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

    # -- the queue ----------------------------------------------------------------------

    def _push(self, t: Ticket) -> Waiter:
        key = (t.prio, t.tenant)
        tag = max(self.vtime[t.prio], self.last.get(key, 0.0)) + t.cost
        self.last[key] = tag
        self.seq += 1
        waiter = Waiter(t, tag, self.seq, self.now)
        self.classes[t.prio].append(waiter)
        self.classes[t.prio].sort(key=lambda w: (w.tag, w.seq))
        self.waiters[t.id] = waiter
        return waiter

    def remove(self, lease_id: str, *, served: bool) -> Waiter:
        """Out of the queue; served advances virtual time, otherwise the tag is given back."""
        w = self.waiters.pop(lease_id)
        c, key = w.ticket.prio, (w.ticket.prio, w.ticket.tenant)
        self.classes[c].remove(w)
        if served:
            self.vtime[c] = max(self.vtime[c], w.tag)
        elif self.last.get(key) == w.tag:
            self.last[key] = w.tag - w.ticket.cost  # a later waiter must not be pushed back
        if self.last.get(key, 0.0) <= self.vtime[c]:
            self.last.pop(key, None)  # an idle tenant banks no credit
        return w

    def ordered(self) -> Iterator[Waiter]:
        """Service order: the best head of the four classes each time, a waiter climbing one
        class per ``aging`` of waiting."""
        cursors = [0] * 4
        while True:
            best: Waiter | None = None
            best_key: tuple[int, int, float, int] | None = None
            for c in range(4):
                if cursors[c] < len(self.classes[c]):
                    w = self.classes[c][cursors[c]]
                    key = (c - int((self.now - w.enq) / self.aging), c, w.tag, w.seq)
                    if best_key is None or key < best_key:
                        best, best_key = w, key
            if best is None:
                return
            cursors[best.ticket.prio] += 1
            yield best

    def dispatch(
        self, observed: Callable[[str], bool], watch: str = "", *, lenient: bool = False
    ) -> Pass:
        """Grant waiters in fair order until a pool-wide limit blocks the head. ``observed``
        says whether the server granted a waiter in this pass: followed where the model is
        unsure, compared where it is not. ``lenient``: several passes ran at this instant
        and ``observed`` is what all of them granted, so a waiter that does not fit in this
        one may still have been granted by a later one (the caller checks the union)."""
        result = Pass()
        skipped: dict[str, Limit] = {}
        served: list[str] = []
        gone: list[str] = []
        never: list[tuple[str, Limit]] = []
        for w in list(self.ordered()):
            t = w.ticket
            if t.tenant in skipped:
                if t.id == watch:
                    result.watched = skipped[t.tenant]  # held back behind its own tenant
                continue
            if t.id != watch and self.now > w.deadline:
                gone.append(t.id)
                continue
            verdict, limit = self.check(t)
            saw = observed(t.id)
            if verdict == "unsure":
                result.unsure.append(t.id)
                if saw:
                    verdict = "fits"
                elif limit is not None and limit.kind == "bucket":
                    verdict = "denied"
                else:
                    _, limit = self.check_without_unsure(t)
                    verdict = "denied"
            if verdict == "fits":
                if not saw:
                    result.mismatches.append(f"{t.id} fits now but was not granted")
                self._reserve(t)
                served.append(t.id)
                result.grants.append(t.id)
                continue
            assert limit is not None
            if saw and not lenient:
                result.mismatches.append(f"{t.id} was granted but {limit.key} does not fit")
            if t.id == watch:
                result.watched = limit
            if limit.kind == "daily":
                never.append((t.id, limit))  # cannot fit before the day turns
            elif limit.scope == "tenant":
                skipped[t.tenant] = limit
            else:
                result.blocked = limit
                break
        for lease_id in served:
            self.remove(lease_id, served=True)
        for lease_id, limit in never:
            self.remove(lease_id, served=False)
            result.rejections.append((lease_id, limit))
        for lease_id in gone:
            self.remove(lease_id, served=False)
        return result

    def check_without_unsure(self, t: Ticket) -> tuple[str, Limit | None]:
        """The first limit that surely does not fit, treating unsure buckets as fitting."""
        for limit in t.limits:
            if self.fits(limit, t.amount(limit.unit)) is False:
                return "denied", limit
        return "fits", None

    # -- operations ---------------------------------------------------------------------

    def acquire(
        self, t: Ticket, *, wait: bool, observed: Callable[[str], bool]
    ) -> tuple[str, Any, Pass]:
        """("lease", id) | ("queued", id) | ("rejected", Limit) | ("full", scope), and the
        dispatch pass it ran (None-like empty Pass when it ran none)."""
        never = self.never_fits(t)
        if never is not None:
            return "rejected", Refusal({never.reason}, None, what=never.key), Pass()
        verdict, limit = self.check(t, kinds=("daily",))
        if verdict == "denied":
            return "rejected", self.refusal(t, limit), Pass()
        if wait:
            mine = sum(1 for w in self.waiters.values() if w.ticket.tenant == t.tenant)
            if mine >= self.max_per_tenant:
                return "full", "tenant", Pass()
            if len(self.waiters) >= self.max_length:
                return "full", "global", Pass()
        self._push(t)
        result = self.dispatch(observed, watch=t.id)
        if t.id in result.grants:
            result.grants.remove(t.id)
            return "lease", t.id, result
        for i, (lease_id, limit) in enumerate(result.rejections):
            if lease_id == t.id:  # waiters granted ahead of it took what was left today
                del result.rejections[i]
                return "rejected", Refusal({limit.reason}, None, checked=False), result
        if wait:
            return "queued", t.id, result
        self.remove(t.id, served=False)
        return "rejected", self.refusal(t, result.watched or result.blocked), result

    def release(
        self,
        lease_id: str,
        usage: tuple[int, int, int, int] | None,
        observed: Callable[[str], bool],
        outcome: str = "OK",
    ) -> tuple[str, Any, Pass]:
        """("settled", Settled) | ("already", Settled) | ("gone", None). ``usage``: input,
        output, and the cached and cache-write parts of the input."""
        done = self.released.get(lease_id)
        if done is not None:
            return "already", done, Pass()
        lease = self.leases.get(lease_id)
        if lease is None:
            return "gone", None, Pass()
        t = lease.ticket
        rule = UNREPORTED[outcome] if usage is None else "reported"
        if rule == "reservation":
            charged, charged_usd = t.tokens, t.usd
        else:
            inp, out, read, written = usage or (t.inp if rule == "input" else 0, 0, 0, 0)
            cached = (read, written, t.pread, t.pwrite)
            charged, charged_usd = inp + out, price(inp, out, t.pin, t.pout, cached)
        self._held(lease)
        self._end(lease, charged - t.tokens, charged_usd - t.usd)
        settled = Settled(charged, max(0, t.tokens - charged), self.now + t.ttl)
        self.released[lease_id] = settled
        return "settled", settled, self.dispatch(observed)

    def renew(self, lease_id: str, extend_by: float) -> bool:
        lease = self.leases.get(lease_id)
        if lease is None:
            return False
        lease.expires = self.now + (extend_by or self.ttl)
        return True

    # -- what the server must show ------------------------------------------------------

    def in_flight(self) -> tuple[dict[str, int], dict[str, int]]:
        pools: dict[str, int] = {}
        tenants: dict[str, int] = {}
        for lease in self.leases.values():
            pools[lease.ticket.pool] = pools.get(lease.ticket.pool, 0) + 1
            tenants[lease.ticket.tenant] = tenants.get(lease.ticket.tenant, 0) + 1
        return pools, tenants

    def queued(self) -> tuple[dict[str, list[int]], dict[str, int]]:
        pools: dict[str, list[int]] = {}
        tenants: dict[str, int] = {}
        for w in self.waiters.values():
            pools.setdefault(w.ticket.pool, [0, 0, 0, 0])[w.ticket.prio] += 1
            tenants[w.ticket.tenant] = tenants.get(w.ticket.tenant, 0) + 1
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
