"""The memory backend's leases, dedup leaders and cost ledger.

Its twin for Redis is ``_backends/redis/lua/_lib4_leases.lua`` (a lease is a hash there, the
expiry order a sorted set, the ledger a hash per UTC day), and for the gauges' holders
``_lib4_holders.lua``; the conformance suite keeps the two equal.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..._model import (
    DEDUP_KEEP,
    GAUGE,
    HOLD_WEIGHT,
    MAX_EXAMINED,
    DedupEnd,
    LeaseRecord,
    Ticket,
    UsageRow,
)
from ..._usage import Usage
from ..errors import FingerprintMismatch, LeaseGone, NotOwner
from .expiring import Expiring


@dataclass(slots=True)
class Lease:
    ticket: Ticket
    day: str  # the UTC day its daily quotas were taken on
    granted_at: float
    expires_at: float
    queued_for: float
    shadowed: str = ""
    probe: bool = False  # went through a half-open circuit as a probe
    gauges: tuple[str, ...] = field(init=False)  # the keys of the gauges it holds a slot of

    def __post_init__(self) -> None:
        # Read three times a lease (granted, released, held): found once.
        self.gauges = tuple([limit.key for limit in self.ticket.limits if limit.kind is GAUGE])

    def record(self, now: float) -> LeaseRecord:
        return self.ticket.lease(
            self.expires_at - now, self.queued_for, now - self.granted_at, self.shadowed
        )


class Leases:
    """Live leases by id, and their expiry order (a heap; a lease released or renewed since
    leaves a stale entry, skipped when it comes up); the leases holding each gauge's slots,
    oldest first, and each gauge's typical hold (an average of the holds released)."""

    def __init__(self) -> None:
        self._leases: dict[str, Lease] = {}
        self._expiry: list[tuple[float, str]] = []
        self._holders: dict[str, dict[str, Lease]] = {}
        self._hold: dict[str, float] = {}

    def __contains__(self, lease_id: str) -> bool:
        return lease_id in self._leases

    def get(self, lease_id: str) -> Lease | None:
        return self._leases.get(lease_id)

    def live(self, lease_id: str, tenant: str | None) -> Lease:
        """The lease ``tenant`` (None: anyone) may release or renew.

        Raises:
            LeaseGone: it is unknown, expired or released.
            NotOwner: it is another tenant's.
        """
        lease = self._leases.get(lease_id)
        if lease is None:
            raise LeaseGone(lease_id)
        if tenant and lease.ticket.tenant != tenant:
            raise NotOwner(lease_id)
        return lease

    def add(self, lease: Lease) -> None:
        lease_id = lease.ticket.lease_id
        self._leases[lease_id] = lease
        heapq.heappush(self._expiry, (lease.expires_at, lease_id))
        for key in lease.gauges:
            self._holders.setdefault(key, {})[lease_id] = lease

    def remove(self, lease: Lease) -> None:
        lease_id = lease.ticket.lease_id
        del self._leases[lease_id]
        for key in lease.gauges:
            holders = self._holders[key]
            del holders[lease_id]
            if not holders:
                del self._holders[key]

    def held(self, lease: Lease, now: float) -> None:
        """Its holder released ``lease``: fold how long it was held into the typical hold
        of each gauge it held a slot of."""
        seconds = now - lease.granted_at
        for key in lease.gauges:
            old = self._hold.get(key)
            self._hold[key] = seconds if old is None else old + HOLD_WEIGHT * (seconds - old)

    def ends(self, key: str, need: int, now: float) -> tuple[float, ...]:
        """Seconds until the first ``need`` holders of gauge ``key`` are expected to end,
        soonest first: a holder at its grant time plus the gauge's typical hold while that
        is ahead, else (no hold seen yet, or held longer than usual) at its expiry."""
        hold = self._hold.get(key)
        ends = []
        for lease in itertools.islice(self._holders.get(key, {}).values(), MAX_EXAMINED):
            end = lease.expires_at
            if hold is not None and lease.granted_at + hold > now:
                end = min(end, lease.granted_at + hold)
            ends.append(end - now)
        return tuple(sorted(ends)[:need])

    def extend(self, lease: Lease, expires_at: float) -> None:
        lease.expires_at = expires_at
        heapq.heappush(self._expiry, (expires_at, lease.ticket.lease_id))

    def due(self, now: float) -> Iterator[Lease]:
        """The leases past their expiry (each once); the caller removes them."""
        while self._expiry and self._expiry[0][0] <= now:
            at, lease_id = heapq.heappop(self._expiry)
            lease = self._leases.get(lease_id)
            if lease is not None and lease.expires_at == at:
                yield lease

    def next_expiry(self) -> float | None:
        while self._expiry:
            at, lease_id = self._expiry[0]
            lease = self._leases.get(lease_id)
            if lease is not None and lease.expires_at == at:
                return at
            heapq.heappop(self._expiry)  # released or renewed since
        return None

    def in_flight(self) -> tuple[dict[str, int], dict[str, int]]:
        """Live leases by pool and by tenant."""
        by_pool: dict[str, int] = {}
        by_tenant: dict[str, int] = {}
        for lease in self._leases.values():
            by_pool[lease.ticket.pool] = by_pool.get(lease.ticket.pool, 0) + 1
            by_tenant[lease.ticket.tenant] = by_tenant.get(lease.ticket.tenant, 0) + 1
        return by_pool, by_tenant


class Unclaimed:
    """Grants made for a waiter whose RPC has not taken them yet, each with the time it is
    given back unless claimed (in grant order, which is deadline order per claim timeout)."""

    def __init__(self) -> None:
        self._give_up_at: OrderedDict[str, float] = OrderedDict()

    def __contains__(self, lease_id: str) -> bool:
        return lease_id in self._give_up_at

    def add(self, lease_id: str, give_up_at: float) -> None:
        self._give_up_at[lease_id] = give_up_at

    def claim(self, lease_id: str) -> bool:
        """Take the grant for its caller; False when it was not unclaimed."""
        return self._give_up_at.pop(lease_id, None) is not None

    def due(self, now: float) -> Iterator[str]:
        """The grants past their deadline, each taken out as it is given."""
        while self._give_up_at:
            lease_id, give_up_at = next(iter(self._give_up_at.items()))
            if give_up_at > now:
                return
            del self._give_up_at[lease_id]
            yield lease_id

    def next_deadline(self) -> float | None:
        return next(iter(self._give_up_at.values()), None)


class Idempotency:
    """(tenant, idempotency key) -> the waiter or lease it names, with the fingerprint a
    retry must repeat; kept one lease TTL."""

    def __init__(self) -> None:
        self._keys: Expiring[tuple[str, str], tuple[str, str]] = Expiring()

    def remember(self, ticket: Ticket, now: float) -> None:
        key = (ticket.tenant, ticket.idempotency_key)
        self._keys.put(key, (ticket.lease_id, ticket.fingerprint), now + ticket.ttl)

    def forget(self, ticket: Ticket) -> None:
        self._keys.pop((ticket.tenant, ticket.idempotency_key))

    def known(self, ticket: Ticket, now: float) -> str | None:
        """The waiter or lease an earlier Acquire with ``ticket``'s key got, if any.

        Raises:
            FingerprintMismatch: the key was used for a different request.
        """
        if not ticket.idempotency_key:
            self._keys.prune(now)
            return None
        known = self._keys.get((ticket.tenant, ticket.idempotency_key), now)
        if known is None:
            return None
        ref, fingerprint = known
        if fingerprint != ticket.fingerprint:
            raise FingerprintMismatch(ticket.idempotency_key)
        return ref


class Dedup:
    """Dedup leaders in flight, by (tenant, dedup key), and how finished ones ended: kept
    :data:`~admitd._model.DEDUP_KEEP` seconds for followers that look late, and reported in
    the next :class:`~admitd._model.Progress` (``take``)."""

    def __init__(self) -> None:
        self._leaders: dict[tuple[str, str], str] = {}
        self._ends: Expiring[str, DedupEnd] = Expiring()
        self._finished: list[DedupEnd] = []

    def leader(self, ticket: Ticket) -> str | None:
        return self._leaders.get((ticket.tenant, ticket.dedup_key))

    def lead(self, ticket: Ticket) -> None:
        self._leaders[(ticket.tenant, ticket.dedup_key)] = ticket.lease_id

    def forget(self, ticket: Ticket) -> None:
        """A leader refused in the step that made it one: nobody can have joined it."""
        self._leaders.pop((ticket.tenant, ticket.dedup_key), None)

    def finish(self, ticket: Ticket, result: bytes | None, now: float) -> None:
        """A dedup leader's call ended, with a result for its followers or without."""
        if not ticket.dedup_key:
            return
        key = (ticket.tenant, ticket.dedup_key)
        if self._leaders.get(key) == ticket.lease_id:
            del self._leaders[key]
        end = DedupEnd(ticket.lease_id, result)
        self._ends.put(ticket.lease_id, end, now + DEDUP_KEEP)
        self._finished.append(end)

    def end(self, leader: str, now: float) -> DedupEnd | None:
        return self._ends.get(leader, now)

    def take(self) -> list[DedupEnd]:
        """The ends not yet reported."""
        finished, self._finished = self._finished, []
        return finished


class Ledger:
    """The cost ledger: (day_number, tenant, pool) -> [calls, input, output, nano-USD,
    cached input, cache-write input] (the fields of ``UsageRow`` in order)."""

    def __init__(self) -> None:
        self._rows: dict[tuple[int, str, str], list[int]] = {}

    def charge(self, day: int, ticket: Ticket, used: Usage, nano_usd: int, calls: int = 1) -> None:
        """A settled lease (or, ``calls`` 0, usage reported after the call)."""
        row = self._rows.setdefault((day, ticket.tenant, ticket.pool), [0] * 6)
        row[0] += calls
        row[1] += used.input_tokens
        row[2] += used.output_tokens
        row[3] += nano_usd
        row[4] += used.cached_input_tokens
        row[5] += used.cache_write_input_tokens

    def keep_after(self, oldest: int) -> None:
        """Drop the days up to ``oldest``."""
        self._rows = {k: v for k, v in self._rows.items() if k[0] > oldest}

    def rows(self, days: list[int]) -> list[UsageRow]:
        wanted = set(days)
        return [
            UsageRow(day, tenant, pool, *row)
            for (day, tenant, pool), row in sorted(self._rows.items())
            if day in wanted
        ]
