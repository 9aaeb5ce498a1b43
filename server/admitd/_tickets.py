"""Deferred admission: tickets that wait in the fair queue with no RPC attached.

The classic batch pattern: ``Enqueue`` takes a place in the same fair queue as Acquire and
returns a ticket at once; ``GetTicket`` polls it (and claims its lease once granted);
``WaitTicket`` long-polls; ``CancelTicket`` leaves. A ticket lives in the backend, so with
Redis it survives the replica that took it, and any replica answers for it. A granted ticket
nobody claims within ``queue.ticket_claim_timeout`` goes back to the pool, and a ticket that
left unserved is remembered for one lease TTL so a poll can say why (the same rejection an
Acquire would have got).
"""

from __future__ import annotations

from dataclasses import dataclass

from ._engine import Engine
from ._model import LeaseRecord, Look
from ._policy import QueueEstimate
from ._refusals import draining, not_owner
from ._requests import AcquireSpec, check_lease_id


@dataclass(frozen=True, slots=True)
class TicketView:
    """A ticket as its caller sees it: queued (``estimate``) or granted (``lease``)."""

    ticket_id: str
    estimate: QueueEstimate | None = None
    wait_left: float = 0.0  # seconds until a queued ticket leaves unserved
    lease: LeaseRecord | None = None


class Tickets:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def enqueue(self, spec: AcquireSpec) -> TicketView:
        """Take a place in the queue; granted at once when the call fits now.

        Raises:
            Rejected: it can never fit, or the queue is full.
        """
        engine = self.engine
        if engine.draining:
            raise draining()
        candidates, _ = await engine.requests.tickets(spec, deadline=None, deferred=True)
        first = candidates[0]
        with engine.telemetry.deciding("admitd.Enqueue", first.pool, first.tenant, first.priority):
            result, ticket = await engine.admit(candidates, queue=True, hold=False)
        if result.lease is not None:
            engine.admitted(ticket, result.lease)
            return TicketView(result.lease.lease_id, lease=result.lease)
        return await self.get(result.waiting_on, None)  # an idempotent retry: the first one

    async def get(self, ticket_id: str, tenant: str | None) -> TicketView:
        """The ticket now; a granted one's lease is claimed for the caller."""
        check_lease_id(ticket_id, "ticket_id")
        return await self._view(ticket_id, await self.engine.look(ticket_id), tenant)

    async def wait(self, ticket_id: str, seconds: float, tenant: str | None) -> TicketView:
        """Like :meth:`get`, after waiting up to ``seconds`` for a queued ticket's grant."""
        check_lease_id(ticket_id, "ticket_id")
        look = await self.engine.look(ticket_id)
        if look.queued is not None and seconds > 0:
            self._check_owner(ticket_id, look.queued.tenant, tenant)
            await self.engine.waits.for_ticket(ticket_id, seconds)
            look = await self.engine.look(ticket_id)
        return await self._view(ticket_id, look, tenant)

    async def cancel(self, ticket_id: str, tenant: str | None) -> bool:
        """Leave the queue (or give back an unclaimed grant); False when there was nothing
        left to cancel: the lease was claimed (release it instead) or the ticket ended."""
        check_lease_id(ticket_id, "ticket_id")
        look = await self.engine.look(ticket_id)
        self._check_owner(ticket_id, _tenant_of(look), tenant)
        if look.queued is not None or (look.lease is not None and not look.claimed):
            await self.engine.cancel(ticket_id)
            return True
        return False

    async def _view(self, ticket_id: str, look: Look, tenant: str | None) -> TicketView:
        self._check_owner(ticket_id, _tenant_of(look), tenant)
        if look.queued is not None:
            spot = look.queued
            estimate = self.engine.history.estimate(spot, self.engine.policy)
            return TicketView(ticket_id, estimate, wait_left=spot.wait_left)
        if look.lease is not None:
            if not look.claimed:  # checked the owner first: only the owner claims
                look = await self.engine.look(ticket_id, claim=True)
            if look.lease is not None:
                return TicketView(ticket_id, lease=look.lease)
        raise self.engine.policy.ticket_ended(ticket_id, look.ended, wall=self.engine.clock.wall())

    def _check_owner(self, ticket_id: str, owner: str | None, tenant: str | None) -> None:
        wanted = self.engine.requests.owner(tenant)
        if wanted is not None and owner is not None and owner != wanted:
            raise not_owner(ticket_id, "ticket")


def _tenant_of(look: Look) -> str | None:
    if look.queued is not None:
        return look.queued.tenant
    if look.lease is not None:
        return look.lease.tenant
    return look.ended.tenant if look.ended is not None else None
