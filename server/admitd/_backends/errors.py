"""What a backend raises: the lease a Release or Renew names is unknown, expired, lost with a
Redis primary or another tenant's, an idempotency key was reused for another request, or the
store did not answer.

Both backends raise these (the memory backend in ``memory/leases.py`` and
``memory/tombstones.py``, the Redis backend by decoding a script's error in
``redis/codec.py``; the Redis backend alone raises ``StoreUnreachable``), and only
:meth:`Store.call <admitd._store.Store.call>` catches them: it is the one place that turns
each into what the caller is told (``_refusals.py`` words it).

::

    LeaseGone            unknown, released, or long expired (NOT_FOUND)
    ├── LeaseLost        unknown to a primary that took over within a lease TTL (NOT_FOUND,
    │                    reason LEASE_LOST)
    └── LeaseExpired     expired within a lease TTL (NOT_FOUND, reason LEASE_EXPIRED)
    NotOwner             another tenant's lease (PERMISSION_DENIED)
    FingerprintMismatch  an idempotency key reused for a different request (INVALID_ARGUMENT)
    StoreUnreachable     the store did not answer, or too late (UNAVAILABLE, counted)
"""

from __future__ import annotations

from .._model import LeaseRecord, Settlement


class LeaseGone(Exception):
    """Release/Renew of a lease that is unknown, released, or long expired."""

    def __init__(self, lease_id: str) -> None:
        super().__init__(lease_id)
        self.lease_id = lease_id


class LeaseLost(LeaseGone):
    """Release/Renew of a lease unknown to a Redis primary that took over within a lease TTL:
    it may have been granted on the old one, in writes replication had not carried."""


class LeaseExpired(LeaseGone):
    """Release/Renew of a lease that expired less than one lease TTL ago (its tombstone):
    the lease, and how a Release after its expiry settled it (None: none has, so its full
    reservation stays charged; ``already_released``: before this call)."""

    def __init__(self, lease: LeaseRecord, settlement: Settlement | None) -> None:
        super().__init__(lease.lease_id)
        self.lease, self.settlement = lease, settlement


class NotOwner(Exception):
    """Release/Renew by a tenant that does not own the lease."""

    def __init__(self, lease_id: str) -> None:
        super().__init__(lease_id)
        self.lease_id = lease_id


class FingerprintMismatch(Exception):
    """An idempotency key reused for a different request."""


class StoreUnreachable(Exception):
    """The store did not answer (down, unreachable, or slower than ``backend.timeout``);
    ``detail`` is what the client library said."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail
