"""The memory backend's tombstones of expired leases, so that a Release or Renew of one is
told it expired (LEASE_EXPIRED) and what it stands charged, and a Release settles it once to
what the call used.

Its twin for Redis is ``bury`` and ``settle_expired`` in ``_backends/redis/lua/_lib4_leases.lua``
(a hash ``tomb:<lease id>``); the conformance suite keeps the two equal.

A tombstone is kept one lease TTL past the lease's expiry, then forgotten (a Release or Renew
then answers NOT_FOUND): memory stays bounded by the leases that can expire in one TTL, the
same bound as the lease table itself and the settlements kept for retried Releases, and a
caller whose call overran its lease still has a whole TTL after the expiry to report it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..._model import Settlement
from ..._usage import Unreported, Usage
from ..errors import LeaseExpired, NotOwner
from .counters import Counters
from .expiring import Expiring
from .leases import Lease, Ledger


@dataclass(slots=True)
class Tombstone:
    lease: Lease
    ledger_day: int  # the ledger's day its expiry charged the full reservation to
    settlement: Settlement | None = None  # how a Release after the expiry settled it


class Tombstones:
    """Expired leases by id; a late Release settles one on ``counters`` and ``ledger``."""

    def __init__(self, counters: Counters, ledger: Ledger) -> None:
        self._graves: Expiring[str, Tombstone] = Expiring()
        self._counters = counters
        self._ledger = ledger

    def bury(self, lease: Lease, ledger_day: int, now: float) -> None:
        """``lease`` expired, its full reservation charged to ledger day ``ledger_day``."""
        until = lease.expires_at + lease.ticket.ttl
        self._graves.put(lease.ticket.lease_id, Tombstone(lease, ledger_day), until)
        self._graves.prune(now)

    def renew(self, lease_id: str, tenant: str | None, now: float) -> None:
        """Nothing for a lease without a tombstone.

        Raises:
            LeaseExpired: ``lease_id`` expired less than a lease TTL ago.
            NotOwner: it is another tenant's.
        """
        grave = self._find(lease_id, tenant, now)
        if grave is not None:
            settled = grave.settlement
            if settled is not None:
                settled = replace(settled, already_released=True)
            raise LeaseExpired(grave.lease.record(now), settled)

    def release(
        self,
        lease_id: str,
        usage: Usage | Unreported,
        tenant: str | None,
        now: float,
    ) -> None:
        """Settle an expired lease to ``usage`` (or what the rule for none charges), once:
        the ledger row its expiry charged and its daily quotas move from the reservation to
        that; its rate buckets only by usage above the reservation (they have refilled
        since its grant, so a refund now could grant what the provider's window no longer
        has); its slots were freed at the expiry. Nothing for a lease without a tombstone.

        Raises:
            LeaseExpired: always, for a lease with a tombstone (settled now, or before).
            NotOwner: it is another tenant's.
        """
        grave = self._find(lease_id, tenant, now)
        if grave is None:
            return
        record = grave.lease.record(now)
        if grave.settlement is not None:
            raise LeaseExpired(record, replace(grave.settlement, already_released=True))
        t = grave.lease.ticket
        used, charged_usd = t.settle(usage)
        token_delta, usd_delta = used.tokens - t.tokens, charged_usd - t.nano_usd
        self._counters.give(t, grave.lease.day, token_delta, usd_delta, False, now, expired=True)
        correction = Usage(
            used.input_tokens - t.input_tokens,
            used.output_tokens - t.max_output_tokens,
            used.cached_input_tokens,
            used.cache_write_input_tokens,
        )
        self._ledger.charge(grave.ledger_day, t, correction, usd_delta, calls=0)
        refunded = max(0, t.tokens - used.tokens)
        grave.settlement = Settlement(record, used.tokens, refunded, charged_usd, False)
        raise LeaseExpired(record, grave.settlement)

    def _find(self, lease_id: str, tenant: str | None, now: float) -> Tombstone | None:
        grave = self._graves.get(lease_id, now)
        if grave is not None and tenant and grave.lease.ticket.tenant != tenant:
            raise NotOwner(lease_id)
        return grave
