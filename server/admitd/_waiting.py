"""The RPCs waiting in this process, and what reaches them.

An RPC waits here for a grant (a queued Acquire or AcquireStream, a WaitTicket) or for the
end of the dedup leader it joined. Grants, refusals and leader ends come from this process's
own operations (in their :class:`~admitd._model.Progress`) or, with Redis, from other
replicas' (through ``Backend.subscribe``): either way :meth:`Waiting.grant`,
:meth:`Waiting.refuse` and :meth:`Waiting.finish` hand them over. Every wait is bounded, on
the engine's clock; an RPC that gives up leaves the queue and keeps nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._errors import Aborted, Reason, Rejected, Unavailable
from ._model import CLAIM_TIMEOUT, AcquireResult, DedupEnd, LeaseRecord, Ticket
from ._policy import MIN_RETRY, QueueEstimate

if TYPE_CHECKING:
    from ._engine import Engine

QueueReport = Callable[[QueueEstimate], None]
"""Called with a waiter's place in the queue whenever it changes (AcquireStream)."""


@dataclass(slots=True)
class _Waiter:
    future: asyncio.Future[LeaseRecord]
    holders: int = 1  # RPCs waiting on it (idempotent retries share one waiter)


class Waiting:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._waiters: dict[str, _Waiter] = {}
        self._followers: dict[str, set[asyncio.Future[DedupEnd]]] = {}  # by leader

    def __bool__(self) -> bool:
        return bool(self._waiters or self._followers)

    def waits_for(self, lease_id: str) -> bool:
        """An RPC here waits for the grant of ``lease_id``."""
        return lease_id in self._waiters

    def followers_of(self, leader: str) -> int:
        """Dedup followers here waiting for ``leader``."""
        return len(self._followers.get(leader, ()))

    def awaited(self) -> list[str]:
        """What this process waits to hear of: the grants of its waiters, and the ends of
        the dedup leaders its followers joined (``end:<leader>``)."""
        return [*self._waiters, *(f"end:{leader}" for leader in self._followers)]

    # -- registering ------------------------------------------------------------------------

    def hold(self, lease_id: str) -> _Waiter:
        """An RPC is about to ask for ``lease_id`` and may wait for it: register first, as a
        grant may arrive (from another replica) before the backend call returns."""
        waiter = self._waiters[lease_id] = _Waiter(asyncio.get_running_loop().create_future())
        return waiter

    def unhold(self, lease_id: str, waiter: _Waiter, result: AcquireResult | None) -> None:
        """After the backend call: keep the registration only if the RPC now waits on it."""
        queued = result is not None and result.queued and not result.replayed
        if not (self._waiters.get(lease_id) is waiter and queued):
            self._waiters.pop(lease_id, None)

    # -- waiting ----------------------------------------------------------------------------

    async def grant_of(
        self, result: AcquireResult, pool: str, wait: float, report: QueueReport | None
    ) -> LeaseRecord:
        """Wait for the grant of ``result.waiting_on`` (ours, or an earlier idempotent one),
        at most ``wait``; ``report`` hears where it stands meanwhile. On a timeout, cancel
        or drain it leaves the queue (a grant racing with that is given back)."""
        engine = self.engine
        lease_id = result.waiting_on
        waiter = self._waiters.get(lease_id)
        if waiter is None:
            waiter = self.hold(lease_id)
        elif result.replayed:
            waiter.holders += 1
        engine.reap_within(engine.settings.lease.reap_interval)
        started = engine.clock.now()
        timeout = self.sleep(wait)
        reporter = asyncio.ensure_future(self._report(lease_id, report)) if report else None
        try:
            await asyncio.wait((waiter.future, timeout), return_when=asyncio.FIRST_COMPLETED)
            if waiter.future.done():
                return waiter.future.result()  # the lease, or Rejected/Unavailable
            spot = None
            with contextlib.suppress(Unavailable):  # the estimate is a courtesy
                spot = (await engine.backend.look(lease_id, claim=False)).queued
            if waiter.future.done():  # granted (and claimed) while we looked: it is ours
                return waiter.future.result()
            history = engine.history
            raise engine.policy.queue_timeout(
                engine.clock.now() - started,
                retry_after=history.next_grant_in(pool, spot.grants_per_second if spot else None),
                blocked_by=history.blocked_by(pool),
                estimate=history.estimate(spot) if spot is not None else None,
            )
        finally:
            timeout.cancel()
            if reporter is not None:
                reporter.cancel()
            waiter.holders -= 1
            if waiter.holders == 0:
                self._waiters.pop(lease_id, None)
                if not waiter.future.done() or waiter.future.exception() is not None:
                    # Timed out, cancelled or drained: leave the queue. If a grant raced
                    # with us, it finds no waiter and stays unclaimed: cancel gives it back.
                    waiter.future.cancel()
                    engine.deliver(await asyncio.shield(engine.backend.cancel(lease_id)))

    async def _report(self, lease_id: str, report: QueueReport) -> None:
        """Tell ``report`` where the waiter stands now, and again every
        ``queue.update_interval`` when that changed, until it leaves the queue."""
        engine = self.engine
        last: tuple[int, int, float] | None = None
        while True:
            look = None
            with contextlib.suppress(Unavailable):  # try again next time
                look = await engine.backend.look(lease_id, claim=False)
            if look is not None:
                if look.queued is None:
                    return
                estimate = engine.history.estimate(look.queued)
                shown = (estimate.position, estimate.depth, round(estimate.wait, 1))
                if shown != last:
                    report(estimate)
                    last = shown
            await self.sleep(engine.settings.queue.update_interval)

    async def grant_of_ticket(self, lease_id: str, seconds: float) -> LeaseRecord | None:
        """Wait up to ``seconds`` for the grant of a queued deferred ticket; None if it did
        not come. Leaving does not cancel the ticket."""
        waiter = self._waiters.get(lease_id)
        if waiter is None:
            waiter = self.hold(lease_id)
        else:
            waiter.holders += 1
        self.engine.reap_within(self.engine.settings.lease.reap_interval)
        expired = self.sleep(seconds)
        try:
            await asyncio.wait((waiter.future, expired), return_when=asyncio.FIRST_COMPLETED)
            return waiter.future.result() if waiter.future.done() else None
        finally:
            expired.cancel()
            waiter.holders -= 1
            if waiter.holders == 0:
                self._waiters.pop(lease_id, None)

    async def end_of(self, ticket: Ticket, leader: str, wait: float) -> LeaseRecord:
        """A dedup follower: wait (at most ``wait``) for the leader's call to end, and take
        the result it shares; nothing is reserved for the follower."""
        engine = self.engine
        if wait <= 0:
            raise self._in_flight(ticket, leader, "set wait_timeout to wait for its result")
        started = engine.clock.now()
        future: asyncio.Future[DedupEnd] = asyncio.get_running_loop().create_future()
        self._followers.setdefault(leader, set()).add(future)
        # A leader that dies ends at its expiry: the reaper must come round in time.
        engine.reap_within(engine.settings.lease.reap_interval)
        expired = self.sleep(wait)
        try:
            with contextlib.suppress(Unavailable):  # the listener still tells us
                end = await engine.backend.dedup_end(leader)  # it may have ended already
                if end is not None:
                    self.finish(end)
            await asyncio.wait((future, expired), return_when=asyncio.FIRST_COMPLETED)
        finally:
            expired.cancel()
            followers = self._followers.get(leader, set())
            followers.discard(future)
            if not followers:
                self._followers.pop(leader, None)
        if not future.done():
            raise self._in_flight(ticket, leader, f"still in flight after {wait:g}s")
        shared = future.result().result
        how = "failed" if shared is None else "shared"
        engine.telemetry.followed(ticket.pool, ticket.tenant, how)
        if shared is None:
            raise Aborted(
                Reason.DEDUP_LEADER_FAILED,
                "the identical call joined ended without a result to share; retry",
                retry_after=MIN_RETRY,
                metadata={"dedup_leader": leader},
            )
        return LeaseRecord(
            lease_id="",
            tenant=ticket.tenant,
            pool=ticket.pool,
            input_tokens=0,
            max_output_tokens=0,
            nano_usd=0,
            expires_in=0.0,
            queued_for=engine.clock.now() - started,
            dedup_leader=leader,
            shared_result=shared,
        )

    def _in_flight(self, ticket: Ticket, leader: str, detail: str) -> Aborted:
        self.engine.telemetry.followed(ticket.pool, ticket.tenant, "in_flight")
        return Aborted(
            Reason.DEDUP_IN_FLIGHT,
            f"an identical call (same dedup_key) is in flight: {detail}",
            retry_after=MIN_RETRY,
            metadata={"dedup_leader": leader},
        )

    # -- what reaches the waiting RPCs ------------------------------------------------------

    def grant(self, lease: LeaseRecord) -> None:
        """Hand a grant to its waiting RPC if it is ours. A grant for an RPC that has just
        given up stays unclaimed (its cancel gives it back), as does one for a deferred
        ticket or another replica's RPC: the reaper comes back in time to give it back if
        nobody claims it."""
        waiter = self._waiters.get(lease.lease_id)
        if waiter is not None and not waiter.future.done():
            waiter.future.set_result(lease)
            self.engine.spawn(self.engine.backend.claim(lease.lease_id))
        else:
            self.engine.reap_within(CLAIM_TIMEOUT)

    def refuse(self, lease_id: str, refusal: Rejected) -> None:
        waiter = self._waiters.get(lease_id)
        if waiter is not None and not waiter.future.done():
            waiter.future.set_exception(refusal)

    def finish(self, end: DedupEnd) -> None:
        """A dedup leader's call ended: its followers here hear how."""
        for future in self._followers.pop(end.leader, ()):
            if not future.done():
                future.set_result(end)

    def drain(self, error: Unavailable) -> None:
        """Every waiter gets ``error`` (UNAVAILABLE), so its client goes elsewhere."""
        for waiter in self._waiters.values():
            if not waiter.future.done():
                waiter.future.set_exception(error)

    def sleep(self, seconds: float) -> asyncio.Future[None]:
        """A future that resolves ``seconds`` from now on the engine's clock."""
        clock = self.engine.clock
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        handle = clock.call_at(clock.now() + seconds, lambda: _resolve(future))
        future.add_done_callback(lambda _: handle.cancel())
        return future


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
