"""How an RPC waits, bounded, for what the store decides: a queued Acquire for its grant
(telling an AcquireStream where it stands meanwhile; the grant claimed for it before it is
handed over), a WaitTicket for its ticket's grant, a dedup follower for the end of the call
it joined.

Every wait is bounded on the injected clock (``Waiting.sleep``); an RPC that gives up leaves
the queue and keeps nothing. What reaches a waiting RPC arrives through
:class:`~admitd._waiting.Waiting`; every look at the store goes through
:meth:`~admitd._store.Store.call`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

from ._errors import Unavailable
from ._estimates import PoolHistory
from ._model import AcquireResult, LeaseRecord, Look, Ticket
from ._policy import Policy, QueueEstimate
from ._refusals import dedup_in_flight, dedup_leader_failed, place_lost
from ._store import Store
from ._telemetry import Telemetry
from ._waiting import Waiter, Waiting

QueueReport = Callable[[QueueEstimate], None]
"""Called with a waiter's place in the queue whenever it changes (AcquireStream)."""

LOOK_BUDGET = 0.1
"""Seconds a QUEUE_TIMEOUT may wait, after the wait ran out, for the store to say where the
waiter stood (its estimate is a courtesy). Without a bound the answer waited for a round trip
queued behind every other store call of the moment: 200 waiters timing out together, or a
slow Redis (up to ``backend.timeout``), made it that late."""


class Waits:
    """The bounded waits of the engine's RPCs.

    Args:
        waiting: where grants and leader ends reach the RPCs of this process.
        store: the one path to the backend.
        history: what this process saw of each pool, for estimates.
        telemetry: counts how dedup followers end.
        policy: the policy in force (a config reload replaces it while RPCs wait).
        reap_soon: called when an RPC starts waiting, so that the reaper comes round
            within ``lease.reap_interval`` (an expiry may free what it waits for).
        spawn: runs work in the background that an RPC's answer must not wait for (leaving
            the queue after a timeout or a drain); the engine waits for it before closing.
    """

    def __init__(
        self,
        waiting: Waiting,
        store: Store,
        history: PoolHistory,
        telemetry: Telemetry,
        *,
        policy: Callable[[], Policy],
        reap_soon: Callable[[], None],
        spawn: Callable[[Coroutine[object, object, object]], None],
    ) -> None:
        self._waiting = waiting
        self._store = store
        self._history = history
        self._telemetry = telemetry
        self._policy = policy
        self._reap_soon = reap_soon
        self._spawn = spawn

    async def for_grant(
        self,
        result: AcquireResult,
        pool: str,
        wait: float,
        report: QueueReport | None,
    ) -> LeaseRecord:
        """Wait for the grant of ``result.waiting_on`` (ours, or an earlier idempotent one),
        at most ``wait``; ``report`` hears where it stands meanwhile. The wait ends by a timer
        on the injected clock, and its QUEUE_TIMEOUT is answered within ``LOOK_BUDGET`` of
        it whatever the store does. On a timeout, cancel or drain it leaves the queue (a
        grant racing with that is given back), after the caller has its answer: with 200
        waiters timing out together, leaving first made the last QUEUE_TIMEOUT half a second
        late, and a drain's UNAVAILABLE later than the server's shutdown grace (the caller
        then saw CANCELLED).

        Raises:
            Rejected: QUEUE_TIMEOUT, or a refusal made while it waited.
            Unavailable: the server is draining.
        """
        lease_id = result.waiting_on
        waiter = self._waiting.join(lease_id, shared=result.replayed)
        self._reap_soon()
        started = self._waiting.clock.now()
        reporter = asyncio.ensure_future(self._report(lease_id, report)) if report else None
        try:
            if await self._waiting.until(waiter.future, wait):
                return waiter.future.result()  # the lease, or Rejected/Unavailable
            look = await self._look(lease_id)
            if look is not None and look.lease is not None and not waiter.future.done():
                await self._take_late(look.lease, waiter)
            if waiter.future.done():  # granted (and claimed) while we looked: it is ours
                return waiter.future.result()
            waited = self._waiting.clock.now() - started
            spot = look.queued if look is not None else None
            raise self._history.queue_timeout(pool, waited, spot, self._policy())
        finally:
            if reporter is not None:
                reporter.cancel()
            if self._waiting.leave(lease_id, waiter):
                self._spawn(self._store.call(self._store.backend.cancel, lease_id))

    def hand_over(self, lease: LeaseRecord) -> bool:
        """Hand a grant (made here or by another replica) to the RPC waiting here for it:
        an Acquire once it is claimed for it, a WaitTicket at once (it claims for itself,
        after checking the owner). False when no RPC here waits for it."""
        claiming = self._waiting.claiming(lease.lease_id)
        if claiming:
            self._spawn(self._claim(lease))
        elif claiming is not None:
            self._waiting.grant(lease)
        return claiming is not None

    async def _claim(self, lease: LeaseRecord) -> None:
        """Claim a grant, then hand it over. One that went back first (its RPC gave up, or
        this replica stalled past its heartbeats or the claim timeout) is nobody's: handed
        over, two callers would hold one slot; its RPC, whose place is gone, is told to
        retry. One claimed just as its RPC gave up goes back."""
        try:
            claimed = await self._store.call(self._store.backend.claim, lease.lease_id)
        except Unavailable as down:  # it goes back at its claim timeout
            self._waiting.refuse(lease.lease_id, down)
            return
        if not claimed:
            self._waiting.refuse(lease.lease_id, place_lost())
        elif not self._waiting.grant(lease):
            await self._store.give_back(lease)

    async def _look(self, lease_id: str) -> Look | None:
        """The waiter in the store now; None when the store does not say within
        ``LOOK_BUDGET`` (what it says is a courtesy, or a grant still on its way that the
        waiter's claim would have found anyway). A look that takes longer finishes in the
        background: cancelling a Redis command mid-reply costs its connection."""
        look = asyncio.ensure_future(self._looked(lease_id))
        if await self._waiting.until(look, LOOK_BUDGET):
            return look.result()
        self._spawn(_finished(look))
        return None

    async def _looked(self, lease_id: str) -> Look | None:
        with contextlib.suppress(Unavailable):
            return await self._store.call(self._store.backend.look, lease_id, claim=False)
        return None

    async def _take_late(self, lease: LeaseRecord, waiter: Waiter) -> None:
        """The wait ran out, but the store had granted the waiter's call within it: the grant
        is the waiter's, claimed now. Its message had not arrived: a grant for another
        replica's waiter comes by pub/sub, then a look and a claim, two or three round trips
        behind one for the replica that made it, and with the head of the queue at its
        deadline (waiters that time out, load beyond capacity) that lag decided which
        replica's callers were served. Already being claimed: that claim is awaited, within
        ``LOOK_BUDGET``."""
        if self._waiting.claiming(lease.lease_id):
            await self._claim(lease)
        else:
            await self._waiting.until(waiter.future, LOOK_BUDGET)

    async def _report(self, lease_id: str, report: QueueReport) -> None:
        """Tell ``report`` where the waiter stands now, and again every
        ``queue.update_interval`` when that changed, until it leaves the queue."""
        last: tuple[int, int, float] | None = None
        while True:
            look = None
            with contextlib.suppress(Unavailable):  # try again next time
                look = await self._store.call(self._store.backend.look, lease_id, claim=False)
            if look is not None:
                if look.queued is None:
                    return
                estimate = self._history.estimate(look.queued, self._policy())
                shown = (estimate.position, estimate.depth, round(estimate.wait, 1))
                if shown != last:
                    report(estimate)
                    last = shown
            await self._waiting.sleep(self._policy().settings.queue.update_interval)

    async def for_ticket(self, lease_id: str, seconds: float) -> LeaseRecord | None:
        """Wait up to ``seconds`` for the grant of a queued deferred ticket; None if it did
        not come. Leaving does not cancel the ticket."""
        waiter = self._waiting.join(lease_id, shared=True, claims=False)
        self._reap_soon()
        try:
            if await self._waiting.until(waiter.future, seconds):
                return waiter.future.result()
            return None
        finally:
            self._waiting.leave(lease_id, waiter)

    async def for_leader(self, ticket: Ticket, leader: str, wait: float) -> LeaseRecord:
        """A dedup follower: wait (at most ``wait``) for the leader's call to end, and take
        the result it shares; nothing is reserved for the follower.

        Raises:
            Aborted: the leader is still in flight, or ended without a result to share.
        """
        if wait <= 0:
            self._telemetry.followed(ticket.pool, ticket.tenant, "in_flight")
            raise dedup_in_flight(leader, None)
        started = self._waiting.clock.now()
        future = self._waiting.follow(leader)
        self._reap_soon()  # a leader that dies ends at its expiry: the reaper must come round
        timeout = self._waiting.sleep(wait)
        try:
            with contextlib.suppress(Unavailable):  # the listener still tells us
                backend = self._store.backend
                end = await self._store.call(backend.dedup_end, leader)  # it may be over
                if end is not None:
                    self._waiting.finish(end)
            await self._waiting.until(future, timeout)
        finally:
            timeout.cancel()
            self._waiting.unfollow(leader, future)
        shared = future.result().result if future.done() else None
        how = "shared" if shared is not None else "failed" if future.done() else "in_flight"
        self._telemetry.followed(ticket.pool, ticket.tenant, how)
        if not future.done():
            raise dedup_in_flight(leader, wait)
        if shared is None:
            raise dedup_leader_failed(leader)
        return LeaseRecord(
            lease_id="",
            tenant=ticket.tenant,
            pool=ticket.pool,
            input_tokens=0,
            max_output_tokens=0,
            nano_usd=0,
            expires_in=0.0,
            queued_for=self._waiting.clock.now() - started,
            dedup_leader=leader,
            shared_result=shared,
        )


async def _finished(future: asyncio.Future[Any]) -> None:
    """Wait for ``future``, as background work the engine waits for before closing."""
    await future
