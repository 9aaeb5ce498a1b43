"""The engine's one path to the backend: every backend call goes through :meth:`Store.call`.

That one place translates what a backend raises into what a caller is told (an unknown or
expired lease, another tenant's lease, an idempotency key reused, the store unreachable),
counts the store being unreachable (``admitd_store_errors_total``: RPCs, background dispatch
and expiry, health pings alike; the grant listener's losses too, through
:meth:`Store.subscribe`), and hands the :class:`~admitd._model.Progress` an operation
reports (grants, refusals, dedup ends) to the engine, whichever operation made it. A store
whose connections are all busy (load) is a SERVER_OVERLOADED refusal, not an outage. It is
the server's twin of the Python client's ``Core.rpc``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection
from typing import ParamSpec, Protocol, TypeVar, runtime_checkable

from ._backends import Backend
from ._backends.errors import (
    FingerprintMismatch,
    LeaseExpired,
    LeaseGone,
    LeaseLost,
    NotOwner,
    StoreUnreachable,
)
from ._errors import StoreBusy, Unavailable
from ._model import (
    AcquireResult,
    Beat,
    DedupEnd,
    ExpireResult,
    LeaseRecord,
    Outcome,
    Progress,
    ReleaseResult,
    Settlement,
    Ticket,
)
from ._policy import UNCHECKED_PREFIX
from ._refusals import (
    idempotency_key_reused,
    lease_expired,
    lease_gone,
    lease_lost,
    not_owner,
    server_overloaded,
    store_unreachable,
)
from ._telemetry import Telemetry
from ._usage import Unreported, Usage

log = logging.getLogger("admitd")

P = ParamSpec("P")
R = TypeVar("R")


@runtime_checkable
class SendsLater(Protocol):
    """A backend whose calls may wait (for a connection) between being made and being sent,
    which awaits ``first`` itself just before each call goes out (the Redis backend)."""

    first: Callable[[], Awaitable[None] | None]


def _nothing() -> None:
    return None


# The results that carry a Progress. A tuple made once: ``A | B | C | D`` in the isinstance
# built a union of the four anew on every store call.
_REPORTING = (AcquireResult, ReleaseResult, ExpireResult, Beat)


class Store:
    """The backend, as the engine calls it.

    Args:
        backend: the backend every call goes to (``store.backend``).
        telemetry: counts store errors.
        deliver: hears the progress of every operation that reports one.
        first: before each call, what must reach the store ahead of it, if anything (the
            heartbeat of a replica whose event loop stalled: ``Heartbeat.due``); None when
            nothing ever must. A backend whose calls may wait for a connection
            (:class:`SendsLater`) asks it itself, once it has one, just before the call is
            sent.
    """

    def __init__(
        self,
        backend: Backend,
        telemetry: Telemetry,
        deliver: Callable[[Progress], None],
        first: Callable[[], Awaitable[None] | None] | None = None,
    ) -> None:
        self.backend = backend
        self._telemetry = telemetry
        self._deliver = deliver
        if isinstance(backend, SendsLater):
            backend.first, first = first or _nothing, None
        self._first = first

    async def call(
        self, operation: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """Run one backend operation (a method of ``self.backend``).

        Raises:
            Unavailable: the store did not answer (counted).
            Rejected: SERVER_OVERLOADED: no store connection came free in time (an Acquire).
            NotFound: the lease is unknown, released, or expired over a lease TTL ago;
                with reason LEASE_EXPIRED, it expired less than that ago.
            PermissionDenied: the lease belongs to another tenant.
            InvalidArgument: an idempotency key reused for a different request.
        """
        ahead = self._first() if self._first is not None else None
        try:
            if ahead is not None:
                await ahead
            result = await operation(*args, **kwargs)
        except StoreBusy as busy:  # load, not an outage: neither counted nor failed open
            self._telemetry.overloaded("store_busy")
            raise server_overloaded("store_busy", busy.waited) from None
        except StoreUnreachable as down:
            self._telemetry.store_error()
            raise store_unreachable(down.detail) from None
        except LeaseLost as lost:
            raise lease_lost(lost.lease_id) from None
        except LeaseExpired as expired:
            raise lease_expired(expired) from None
        except LeaseGone as gone:
            raise lease_gone(gone.lease_id) from None
        except NotOwner as other:
            raise not_owner(other.lease_id) from None
        except FingerprintMismatch:
            raise idempotency_key_reused() from None
        if isinstance(result, Progress):
            self._deliver(result)
        elif isinstance(result, _REPORTING):
            self._deliver(result.progress)
        return result

    def subscribe(
        self,
        waiting: Callable[[], Collection[str]],
        deliver: Callable[[LeaseRecord], None],
        finish: Callable[[DedupEnd], None],
    ) -> None:
        """Start the backend's grant listener (``Backend.subscribe``); each time it loses the
        store (it retries by itself) is counted and logged like a call that did not reach it."""
        self.backend.subscribe(waiting, deliver, finish, self._listener_failed)

    def _listener_failed(self, error: Exception) -> None:
        self._telemetry.store_error()
        log.warning("grant listener: %s; retrying", error)

    async def give_back(self, lease: LeaseRecord) -> None:
        """The caller of a granted Acquire gave up before it could hear of its lease (its
        deadline passed while admitd worked): the lease goes back at once, charged
        nothing, instead of holding capacity until its TTL. (Not for a call with an
        idempotency key: a retry of it is to get this lease.)"""
        if lease.lease_id and not lease.lease_id.startswith(UNCHECKED_PREFIX):
            nothing, cancelled = Unreported.NOTHING, Outcome.CANCELLED
            await self.call(self.backend.release, lease.lease_id, nothing, None, cancelled)

    def admit_unchecked(self, ticket: Ticket, error: Unavailable) -> LeaseRecord:
        """fail_open: the store is down, so admit without reserving anything (and say so:
        a warning, a metric, and a lease id that says so)."""
        self._telemetry.unchecked(ticket.pool)
        log.warning(
            "admitting unchecked, store unreachable: %s",
            error.message,
            extra={"tenant": ticket.tenant, "pool": ticket.pool},
        )
        return ticket.lease(ticket.ttl, lease_id=UNCHECKED_PREFIX + ticket.lease_id)


def unchecked_settlement(lease_id: str, usage: Usage | None) -> Settlement:
    """Release of a lease admitted unchecked: nothing was reserved, so nothing to settle."""
    charged = usage.tokens if usage is not None else 0
    lease = LeaseRecord(lease_id, "", "", 0, 0, 0, 0.0, 0.0)
    return Settlement(lease, charged, 0, 0, already_released=False)
