"""The client's exceptions: every failed admitd RPC surfaces as one of these.

```
AdmitdError        an RPC failed: gRPC ``code``, ``message``, ``field_violations``
├── Rejected       RESOURCE_EXHAUSTED, or ABORTED (a dedup follower without a result):
│                  ``reason`` (a Reason), ``retry_after``, ``metadata``
├── LeaseEnded     NOT_FOUND with a ``reason``: a Release or Renew of a lease that ended
│                  (LEASE_EXPIRED, with what it stands charged); never retried
└── Unavailable    admitd did not answer (UNAVAILABLE or CANCELLED by the server after
                   the retries, or the deadline passed); under
                   ``on_unavailable="fail_open"`` Acquire yields an unadmitted lease
                   instead of raising it
```

``Rejected`` means the call must not run now; ``retry_after`` (seconds) says when a retry can
succeed, and is None when it never can (the call is bigger than a limit or a daily quota).
Its ``code`` is ABORTED for ``DEDUP_LEADER_FAILED`` and ``DEDUP_IN_FLIGHT``: the identical
call this one joined ended without a result, or this one did not wait for it; a retry may
lead a call of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

import grpc


class Reason(StrEnum):
    """Why admitd rejected a call, or why a lease ended (``ErrorInfo.reason`` in the status
    details)."""

    CONCURRENCY_LIMIT = "CONCURRENCY_LIMIT"
    TOKEN_RATE_LIMIT = "TOKEN_RATE_LIMIT"
    REQUEST_RATE_LIMIT = "REQUEST_RATE_LIMIT"
    TENANT_QUOTA = "TENANT_QUOTA"
    BUDGET_EXHAUSTED = "BUDGET_EXHAUSTED"
    QUEUE_FULL = "QUEUE_FULL"
    QUEUE_TIMEOUT = "QUEUE_TIMEOUT"
    POOL_UNAVAILABLE = "POOL_UNAVAILABLE"
    """The pool is paused by its provider's retry-after, or its circuit is open."""
    DEDUP_IN_FLIGHT = "DEDUP_IN_FLIGHT"
    """An identical call (same dedup_key) is in flight and this one did not wait for it."""
    DEDUP_LEADER_FAILED = "DEDUP_LEADER_FAILED"
    """The identical call this one joined ended without a result to share: retry."""
    SERVER_OVERLOADED = "SERVER_OVERLOADED"
    """The replica was past its capacity and reserved nothing: the client retries after
    ``retry_after`` by itself, while the call's deadline allows."""
    LEASE_EXPIRED = "LEASE_EXPIRED"
    """A Release or Renew came after the lease expired (``LeaseEnded``): its full
    reservation was charged then; a Release records the usage it reports all the same."""
    UNKNOWN = "UNKNOWN"
    """A reason this client version does not know (a newer server); see the message."""

    @classmethod
    def _missing_(cls, value: object) -> Reason:
        return cls.UNKNOWN


class AdmitdError(Exception):
    """An admitd RPC failed.

    Attributes:
        code: The gRPC status code.
        message: The server's message (it names the offending field or limit).
        field_violations: For INVALID_ARGUMENT: request field -> what is wrong with it.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        field_violations: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.field_violations = dict(field_violations or {})

    @property
    def retryable(self) -> bool:
        """True when the same request may succeed on another attempt right away."""
        # UNAVAILABLE: no connection, or a draining replica (retrying reaches another one).
        # CANCELLED: the server side ended the call (a replica shutting down); a caller's
        # own cancellation never arrives as an RPC error.
        return self.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


class Rejected(AdmitdError):
    """admitd refused the call: it must not run now.

    Attributes:
        reason: Which limit refused it.
        retry_after: Seconds after which a retry can succeed; None when it never can.
        metadata: ``ErrorInfo.metadata`` (``scope``, ``pool``/``tenant``, ``limit``,
            ``limit_value``, ``requested``; ``cause`` for POOL_UNAVAILABLE: ``paused``,
            ``open`` or ``probing``; ``candidates`` with fallback pools;
            ``dedup_leader`` for the dedup reasons).
    """

    def __init__(
        self,
        message: str,
        *,
        reason: Reason,
        retry_after: float | None = None,
        metadata: Mapping[str, str] | None = None,
        code: grpc.StatusCode = grpc.StatusCode.RESOURCE_EXHAUSTED,
    ) -> None:
        super().__init__(code, message)
        self.reason = reason
        self.retry_after = retry_after
        self.metadata = dict(metadata or {})


class Unavailable(AdmitdError):
    """admitd could not be reached (after the retries) or did not answer in time."""


class LeaseEnded(AdmitdError):
    """admitd no longer holds the lease, and says why (``code`` NOT_FOUND with a
    ``reason``): LEASE_EXPIRED, a Release or Renew came after it expired. No retry changes
    that, so none is made. (A NOT_FOUND without a reason, an unknown lease, is a plain
    ``AdmitdError``.)

    LEASE_EXPIRED: the lease's full reservation was charged when it expired. A Release
    after that still records the usage it reports (admitd's ledger and daily budgets then
    hold it; the ``lease`` block's release does this for you) and ``charged_tokens`` /
    ``charged_usd`` say so; a Renew cannot bring the lease back.

    Attributes:
        reason: Why: ``Reason.LEASE_EXPIRED`` (UNKNOWN for a reason this client version
            does not know).
        metadata: ``ErrorInfo.metadata``; for LEASE_EXPIRED parsed into the attributes
            below (0 / False for another reason).
        reserved_tokens: The reservation, charged in full when the lease expired.
        charged_tokens: What stands charged for the lease now: its reported usage once a
            Release after the expiry settled it (``settled``), else the reservation.
        charged_usd: The same in USD.
        settled: True once a Release after the expiry recorded the call's usage.
        already_released: True when an earlier Release had (this one changed nothing).
    """

    def __init__(
        self,
        message: str,
        *,
        reason: Reason,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(grpc.StatusCode.NOT_FOUND, message)
        self.reason = reason
        self.metadata = dict(metadata or {})
        self.reserved_tokens = int(self.metadata.get("reserved_tokens", 0))
        self.charged_tokens = int(self.metadata.get("charged_tokens", self.reserved_tokens))
        self.charged_usd = float(self.metadata.get("charged_usd", 0.0))
        self.settled = self.metadata.get("settled") == "true"
        self.already_released = self.metadata.get("already_released") == "true"
