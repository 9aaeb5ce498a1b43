"""Waiting in admitd's fair queue, as the caller sees it: queue updates and tickets.

A streamed wait (``acquire_stream``, or ``lease(on_queue_update=...)``) reports a
``QueueUpdate`` whenever the caller's place or estimated wait changes. A ``Ticket`` is a
deferred admission (``enqueue``): a place in the same queue with no call attached, polled
until it is granted; its ``lease`` is then an ordinary ``Lease``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum

from ._lease import Lease
from ._proto import admission_pb2 as pb


@dataclass(frozen=True)
class QueueUpdate:
    """Where a waiter stands in its pool's queue (``admitd.v1.QueuePosition``).

    Attributes:
        position: Waiters served before this one (0: it is next).
        depth: Waiters in the pool's queue now.
        estimated_wait: Seconds until the grant, estimated from the pool's recent grant
            rate.
    """

    position: int
    depth: int
    estimated_wait: float

    @classmethod
    def from_proto(cls, proto: pb.QueuePosition) -> QueueUpdate:
        wait = proto.estimated_wait
        return cls(proto.position, proto.depth, wait.seconds + wait.nanos / 1e9)


class TicketState(IntEnum):
    """Where a ticket is (``admitd.v1.TicketState``)."""

    QUEUED = 1
    GRANTED = 2


@dataclass(frozen=True, eq=False)  # snapshots: compare or key them by ``id``
class Ticket:
    """A deferred admission, as admitd reported it at one moment; poll for a newer one.

    A ticket that left the queue unserved is not a state: asking about it raises
    ``Rejected`` (``QUEUE_TIMEOUT``, or the limit that can no longer be met), and a
    cancelled, unclaimed or unknown one raises ``AdmitdError`` (``NOT_FOUND``).

    Attributes:
        id: admitd's id of the ticket; also the lease id once granted. Keep it to poll
            from elsewhere (``get_ticket(id)``).
        state: QUEUED or GRANTED.
        tenant: The tenant asked for; polls and cancels name it.
        position: While queued: waiters served before this one (0: next); else None.
        depth: While queued: waiters in the pool's queue; else None.
        estimated_wait: While queued: estimated seconds until the grant; else None.
        wait_deadline: While queued: when it leaves the queue unserved; else None.
        lease: Once granted: the lease, claimed for the caller, to use like any other
            (``lease.record``, ``client.release``, ``client.hold``); else None.
        proto: The ``admitd.v1.Ticket`` message.
    """

    id: str
    state: TicketState
    tenant: str
    position: int | None
    depth: int | None
    estimated_wait: float | None
    wait_deadline: datetime | None
    lease: Lease | None
    proto: pb.Ticket

    @property
    def granted(self) -> bool:
        """True once the ticket holds a lease."""
        return self.lease is not None

    @classmethod
    def from_proto(cls, proto: pb.Ticket, tenant: str) -> Ticket:
        if proto.state == pb.TicketState.TICKET_STATE_GRANTED:
            granted = proto.lease
            lease = Lease(
                proto=granted,
                tenant=granted.tenant,
                pool=granted.pool,
                input_tokens=granted.input_tokens,
                max_output_tokens=granted.reserved_tokens - granted.input_tokens,
                request_tenant=tenant,
            )
            return cls(proto.ticket_id, TicketState.GRANTED, tenant, *_NOT_QUEUED, lease, proto)
        update = QueueUpdate.from_proto(proto.position)
        deadline = proto.wait_deadline.ToDatetime(tzinfo=UTC)
        return cls(
            proto.ticket_id,
            TicketState.QUEUED,
            tenant,
            update.position,
            update.depth,
            update.estimated_wait,
            deadline,
            None,
            proto,
        )

    def __repr__(self) -> str:
        where = f"position={self.position}" if self.lease is None else f"lease={self.lease!r}"
        return f"<Ticket id={self.id} {self.state.name} {where}>"


_NOT_QUEUED = (None, None, None, None)
