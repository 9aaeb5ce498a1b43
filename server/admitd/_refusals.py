"""What a caller is told when it gets no lease, in words: the policy's vocabulary.

The policy (``_policy.py``) decides which limit refused a call and when a retry can succeed,
and writes those refusals (a limit, a call that can never fit, a full queue, a queue
timeout, a ticket's end) from the phrases and the ``ErrorInfo`` metadata written here
(:func:`describe`, :func:`amount_text`, :func:`limit_metadata`, :func:`reason`). The
refusals that are not about a limit are written here whole (a draining server, an
unreachable store, a queued
call that lost its place, an unknown or foreign lease, a reused idempotency key, a dedup
follower without a result, a replica past its capacity, a lease that expired or was lost,
a caller without a valid credential or acting for another tenant, an internal error).
Field validation messages are ``_requests.py``'s.
"""

from __future__ import annotations

from ._backends.errors import LeaseExpired
from ._errors import (
    Aborted,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Reason,
    Rejected,
    Unauthenticated,
    Unavailable,
)
from ._model import Kind, Limit, Scope, Unit
from ._usage import NANO_PER_USD

MIN_RETRY = 0.001  # seconds: the shortest retry delay a refusal gives
MIN_OVERLOAD_RETRY = 0.1  # an overloaded replica's shortest retry hint, seconds

GATE_STATES = {
    "paused": "is paused: the provider asked callers to retry later",
    "open": "is unavailable: its circuit is open after too many provider errors",
    "probing": "is being probed after an outage: its probe calls are all in flight",
}


def draining() -> Unavailable:
    return Unavailable("server is draining; retry on another replica")


def store_unreachable(detail: str) -> Unavailable:
    """The store did not answer (``detail``: how): fail closed."""
    return Unavailable(f"state store unreachable: {detail}")


def place_lost() -> Unavailable:
    """A queued call whose grant went back before this replica could claim it (the replica
    stalled past ``backend.dead_after`` or the claim timeout)."""
    return Unavailable("this call lost its place in the queue (its replica stalled); retry")


def lease_gone(lease_id: str) -> NotFound:
    return NotFound(
        "lease_id", f"no lease {lease_id!r}: unknown, released, or expired over a lease TTL ago"
    )


def lease_expired(expired: LeaseExpired) -> NotFound:
    """A Release or Renew of a lease that expired (within one lease TTL of its expiry): its
    full reservation was charged then; a Release since has settled it to its usage."""
    lease, settled = expired.lease, expired.settlement
    reserved = f"{lease.reserved_tokens} tokens, ${lease.nano_usd / NANO_PER_USD:.6f}"
    message = f"lease {lease.lease_id!r} expired: its full reservation ({reserved}) was charged"
    charged_tokens, charged_usd = lease.reserved_tokens, lease.nano_usd
    if settled is None:
        message += "; release it with its usage to record what the call used"
    else:
        charged_tokens, charged_usd = settled.charged_tokens, settled.charged_nano_usd
        by = "an earlier Release" if settled.already_released else "this Release"
        charged = f"{charged_tokens} tokens, ${charged_usd / NANO_PER_USD:.6f}"
        message += f"; {by} settled it to {charged}"
    metadata = {
        "reserved_tokens": str(lease.reserved_tokens),
        "reserved_usd": f"{lease.nano_usd / NANO_PER_USD:g}",
        "charged_tokens": str(charged_tokens),
        "charged_usd": f"{charged_usd / NANO_PER_USD:g}",
        "settled": "true" if settled is not None else "false",
        "already_released": "true" if settled and settled.already_released else "false",
    }
    return NotFound("lease_id", message, reason=Reason.LEASE_EXPIRED, metadata=metadata)


def lease_lost(lease_id: str) -> NotFound:
    return NotFound(
        "lease_id",
        f"no lease {lease_id!r} on the Redis primary that took over after a failover: if it"
        " was granted shortly before, replication lost it, and its slot is not counted",
        reason=Reason.LEASE_LOST,
    )


def not_owner(lease_id: str, what: str = "lease") -> PermissionDenied:
    """Another tenant's lease or ticket (``what``)."""
    return PermissionDenied(f"{what} {lease_id!r} belongs to another tenant")


def unchecked_not_renewable() -> NotFound:
    return NotFound("lease_id", "leases admitted while the store was down cannot be renewed")


def internal(incident: str) -> Internal:
    """A bug: the caller gets only the incident id the server logged it under."""
    return Internal(f"internal error {incident}; the server log has the details")


def credentials_required() -> Unauthenticated:
    return Unauthenticated(
        "credentials required: send 'authorization: Bearer <api key>' metadata"
        " or a client certificate"
    )


def malformed_authorization() -> Unauthenticated:
    return Unauthenticated("authorization metadata must be 'Bearer <api key>'")


def unknown_api_key() -> Unauthenticated:
    return Unauthenticated("unknown API key")


def unknown_certificate(common_name: str) -> Unauthenticated:
    return Unauthenticated(f"no client with certificate common name {common_name!r}")


def other_tenant(client: str, tenant: str, requested: str) -> PermissionDenied:
    """A client bound to ``tenant`` named another one."""
    return PermissionDenied(
        f"client {client!r} may act only for tenant {tenant!r}, not {requested!r}"
    )


def idempotency_key_reused() -> InvalidArgument:
    return InvalidArgument("idempotency_key", "already used by this tenant for a different request")


def dedup_in_flight(leader: str, waited: float | None) -> Aborted:
    """A dedup follower whose leader is still in flight: it did not wait (``waited``
    None), or not long enough."""
    detail = (
        "set wait_timeout to wait for its result"
        if waited is None
        else f"still in flight after {waited:g}s"
    )
    return Aborted(
        Reason.DEDUP_IN_FLIGHT,
        f"an identical call (same dedup_key) is in flight: {detail}",
        retry_after=MIN_RETRY,
        metadata={"dedup_leader": leader},
    )


def dedup_leader_failed(leader: str) -> Aborted:
    return Aborted(
        Reason.DEDUP_LEADER_FAILED,
        "the identical call joined ended without a result to share; retry",
        retry_after=MIN_RETRY,
        metadata={"dedup_leader": leader},
    )


OVERLOAD_CAUSES = {
    "queue_delay": "calls wait {:.3f}s here before they are looked at",
    "store_busy": "every connection to the state store stayed busy for {:.3f}s",
    "deadline": "the call waited here until its deadline ({:.3f}s)",
}


def server_overloaded(cause: str, delay: float) -> Rejected:
    """This replica is past its capacity (``cause``: see ``OVERLOAD_CAUSES``; ``delay`` s):
    nothing was reserved; a retry after that delay, here or elsewhere, can succeed."""
    retry = max(MIN_OVERLOAD_RETRY, delay)
    why = OVERLOAD_CAUSES[cause].format(delay)
    message = f"server overloaded: {why}; nothing was reserved, retry in {retry:.3f}s"
    metadata = {"cause": cause, "delay_seconds": f"{delay:.3f}"}
    return Rejected(Reason.SERVER_OVERLOADED, message, retry_after=retry, metadata=metadata)


def reason(limit: Limit) -> Reason:
    """The reason a refusal by ``limit`` gives."""
    if limit.kind is Kind.GATE:
        return Reason.POOL_UNAVAILABLE
    if limit.kind is Kind.GAUGE:
        return Reason.CONCURRENCY_LIMIT
    if limit.kind is Kind.BUCKET:
        return Reason.TOKEN_RATE_LIMIT if limit.unit is Unit.TOKEN else Reason.REQUEST_RATE_LIMIT
    return Reason.TENANT_QUOTA if limit.scope is Scope.TENANT else Reason.BUDGET_EXHAUSTED


def describe(limit: Limit) -> str:
    """``limit`` as a message names it."""
    if limit.scope is Scope.GLOBAL:
        return f"global budget {limit.name}"
    return f"{limit.scope.value} {limit.owner!r} {limit.name}"


def amount_text(limit: Limit, amount: float) -> str:
    """``amount`` of what ``limit`` counts, as a message writes it."""
    if limit.unit is Unit.NANO_USD:
        return f"${amount / NANO_PER_USD:.6f}"
    noun = {Unit.TOKEN: "tokens", Unit.REQUEST: "requests", Unit.SLOT: "slots"}[limit.unit]
    return f"{amount:.0f} {noun}"


def limit_metadata(limit: Limit, amount: float) -> dict[str, str]:
    """The ``ErrorInfo`` metadata naming ``limit`` and what the call needed of it."""
    meta = {
        "scope": limit.scope.value,
        "limit": limit.name,
        "limit_value": f"{limit.capacity:g}",
        "requested": f"{amount:g}",
    }
    if limit.unit is Unit.NANO_USD:
        meta["limit_value"] = f"{limit.capacity / NANO_PER_USD:g}"
        meta["requested"] = f"{amount / NANO_PER_USD:g}"
    if limit.owner:
        meta[limit.scope.value] = limit.owner
    return meta
