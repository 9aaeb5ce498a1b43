"""Domain errors. The gRPC layer maps each to a status code in one place (``_api/status.py``).

::

    AdmitdError
    ├── InvalidArgument     a request field is wrong          -> INVALID_ARGUMENT
    ├── NotFound            unknown pool/tenant/lease, or a   -> NOT_FOUND
    │                       lease that ended (reason LEASE_EXPIRED, LEASE_LOST)
    ├── Unauthenticated     no, or a wrong, credential        -> UNAUTHENTICATED
    ├── PermissionDenied    another tenant's call or lease    -> PERMISSION_DENIED
    ├── Unavailable         draining, or the store unreachable -> UNAVAILABLE
    │   └── StoreBusy       (backend -> core only) no store connection free in time
    ├── Rejected            does not fit (reason, retry_after) -> RESOURCE_EXHAUSTED
    │   └── Aborted         a joined (dedup) call has no result for it: retry -> ABORTED
    └── Internal            a bug (details only in the log)   -> INTERNAL
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class Reason(enum.StrEnum):
    """Why an Acquire was rejected, or what became of a lease (a NOT_FOUND that says so);
    the ``ErrorInfo.reason`` on the wire."""

    CONCURRENCY_LIMIT = "CONCURRENCY_LIMIT"
    TOKEN_RATE_LIMIT = "TOKEN_RATE_LIMIT"
    REQUEST_RATE_LIMIT = "REQUEST_RATE_LIMIT"
    TENANT_QUOTA = "TENANT_QUOTA"
    BUDGET_EXHAUSTED = "BUDGET_EXHAUSTED"
    QUEUE_FULL = "QUEUE_FULL"
    QUEUE_TIMEOUT = "QUEUE_TIMEOUT"
    POOL_UNAVAILABLE = "POOL_UNAVAILABLE"  # paused by the provider, or its circuit is open
    DEDUP_IN_FLIGHT = "DEDUP_IN_FLIGHT"  # an identical call is in flight; not waited for
    DEDUP_LEADER_FAILED = "DEDUP_LEADER_FAILED"  # the joined call ended without a result
    SERVER_OVERLOADED = "SERVER_OVERLOADED"  # this replica is past its capacity: retry later
    LEASE_LOST = "LEASE_LOST"  # (NOT_FOUND) granted on a Redis primary that a failover replaced
    LEASE_EXPIRED = "LEASE_EXPIRED"  # (NOT_FOUND) expired less than a lease TTL ago


class AdmitdError(Exception):
    """Base of every error admitd reports to a caller."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(AdmitdError):
    """A request field is missing, malformed or out of range; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class NotFound(AdmitdError):
    """The named pool, tenant or lease does not exist. ``reason``, when set, says what
    became of a lease (LEASE_EXPIRED, LEASE_LOST), with ``metadata`` (an ``ErrorInfo`` on
    the wire): every answer about a lease no longer live is NOT_FOUND, never retried."""

    def __init__(
        self,
        field: str,
        message: str,
        *,
        reason: Reason | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = reason
        self.metadata = dict(metadata or {})


class Unauthenticated(AdmitdError):
    """The call carries no credential where one is required, or one admitd does not know."""


class PermissionDenied(AdmitdError):
    """The caller may not act for this tenant, or on this lease."""


class Unavailable(AdmitdError):
    """The server admits nothing right now (draining); try another replica."""


class StoreBusy(Unavailable):
    """Every connection to the store stayed busy for ``waited`` seconds
    (``backend.pool_timeout``): this replica has more store calls than connections (load),
    not a store that is down. Never reaches a caller: ``Store.call`` turns it into a
    SERVER_OVERLOADED refusal."""

    def __init__(self, message: str, waited: float) -> None:
        super().__init__(message)
        self.waited = waited


class Rejected(AdmitdError):
    """The call does not fit. ``retry_after`` is None when no later retry can succeed."""

    def __init__(
        self,
        reason: Reason,
        message: str,
        *,
        retry_after: float | None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after
        self.metadata = dict(metadata or {})


class Aborted(Rejected):
    """A dedup follower gets no shared result (its leader failed, or it did not wait): it
    should retry, and may then lead itself. ABORTED, with the same details as Rejected."""


class Internal(AdmitdError):
    """Something the server did not expect; the log has the traceback."""
