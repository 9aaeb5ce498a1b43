"""The operations the server answers (acquire, release, renew, cancel), on a ``Ledger``
and one pool's ``FairQueue``, from a configuration (the server's YAML, as a dict)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from support.model.ledger import Ledger, Refusal, Settled
from support.model.limits import (
    DAILY_FIELDS,
    FLOW_FIELDS,
    Limit,
    Ticket,
    limits_of,
    nano_per_token,
    price,
)
from support.model.queue import FairQueue, Waiter

# What a release without usage is charged, by outcome (README, "How admission works").
UNREPORTED = {
    "OK": "reservation",
    "PROVIDER_RATE_LIMITED": "nothing",
    "PROVIDER_ERROR": "nothing",
    "TIMEOUT": "input",
    "CANCELLED": "input",
}


@dataclass
class Pass:
    """What one dispatch pass did, and where it disagreed with the observed server."""

    grants: list[str] = field(default_factory=list)
    rejections: list[tuple[str, Limit]] = field(default_factory=list)
    watched: Limit | None = None
    blocked: Limit | None = None
    unsure: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)


class Model(Ledger):
    """The server as README.md describes it: a ledger of the configured limits, and the
    queue of the one pool the state machine drives."""

    def __init__(self, config: dict[str, Any], now: float, wall_offset: float = 0.0) -> None:
        self.config = config
        self.max_wait = float(config["queue"]["max_wait"])
        self.max_per_tenant = int(config["queue"]["max_per_tenant"])
        self.max_length = int(config["queue"]["max_length"])
        self.ttl = float(config["lease"]["ttl"])
        self.pools = {p["name"]: p for p in config["pools"]}
        self.tenants = {t["name"]: t for t in config["tenants"]}
        super().__init__(self._all(), now, wall_offset)
        self.queue = FairQueue(float(config["queue"]["aging"]))

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

    # -- the queue ----------------------------------------------------------------------

    @property
    def waiters(self) -> dict[str, Waiter]:
        return self.queue.waiters

    def remove(self, lease_id: str, *, served: bool) -> Waiter:
        """Out of the queue; served advances virtual time, otherwise the tag is given back."""
        return self.queue.remove(lease_id, served=served)

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
        for w in list(self.queue.ordered(self.now)):
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
        self.queue.push(t, self.now)
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
        """("settled", Settled) | ("already", Settled) | ("expired" | "expired_already",
        Settled: how a Release after its expiry settled it) | ("gone", None). ``usage``:
        input, output, and the cached and cache-write parts of the input."""
        done = self.released.get(lease_id)
        if done is not None:
            return "already", done, Pass()
        grave = self.graves.get(lease_id)
        if grave is not None:
            if grave.settled is not None:
                return "expired_already", grave.settled, Pass()
            t = grave.lease.ticket
            charged, charged_usd = self._charge(t, usage, outcome)
            self._settle_expired(grave, charged - t.tokens, charged_usd - t.usd)
            grave.settled = Settled(charged, max(0, t.tokens - charged), grave.drop_at)
            return "expired", grave.settled, Pass()
        lease = self.leases.get(lease_id)
        if lease is None:
            return "gone", None, Pass()
        t = lease.ticket
        charged, charged_usd = self._charge(t, usage, outcome)
        self._held(lease)
        self._end(lease, charged - t.tokens, charged_usd - t.usd)
        settled = Settled(charged, max(0, t.tokens - charged), self.now + t.ttl)
        self.released[lease_id] = settled
        self.queue.credit(t, settled.refunded)
        return "settled", settled, self.dispatch(observed)

    @staticmethod
    def _charge(
        t: Ticket, usage: tuple[int, int, int, int] | None, outcome: str
    ) -> tuple[int, int]:
        """Tokens and nano-USD a release charges: the usage, or the outcome's rule."""
        rule = UNREPORTED[outcome] if usage is None else "reported"
        if rule == "reservation":
            return t.tokens, t.usd
        inp, out, read, written = usage or (t.inp if rule == "input" else 0, 0, 0, 0)
        cached = (read, written, t.pread, t.pwrite)
        return inp + out, price(inp, out, t.pin, t.pout, cached)

    def renew(self, lease_id: str, extend_by: float) -> tuple[str, int]:
        """("renewed" | "expired" | "gone", the tokens an expired lease stands charged)."""
        grave = self.graves.get(lease_id)
        if grave is not None:
            settled = grave.settled
            return "expired", grave.lease.ticket.tokens if settled is None else settled.charged
        lease = self.leases.get(lease_id)
        if lease is None:
            return "gone", 0
        lease.expires = self.now + (extend_by or self.ttl)
        return "renewed", 0

    def queued(self) -> tuple[dict[str, list[int]], dict[str, int]]:
        pools: dict[str, list[int]] = {}
        tenants: dict[str, int] = {}
        for w in self.waiters.values():
            pools.setdefault(w.ticket.pool, [0, 0, 0, 0])[w.ticket.prio] += 1
            tenants[w.ticket.tenant] = tenants.get(w.ticket.tenant, 0) + 1
        return pools, tenants
