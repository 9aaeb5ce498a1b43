"""The rendezvous of the RPCs waiting in this process: a future per awaited grant (by lease
id) and per dedup leader's end, and sleeps on the injected clock.

An RPC waits here for a grant (a queued Acquire or AcquireStream, a WaitTicket) or for the
end of the dedup leader it joined. Grants, refusals and leader ends come from this process's
own backend operations (in their :class:`~admitd._model.Progress`) or, with Redis, from other
replicas' (through ``Backend.subscribe``): either way the engine hands them over with
:meth:`Waiting.grant`, :meth:`Waiting.refuse` and :meth:`Waiting.finish`. This module knows
nothing of the engine or the store; how long an RPC waits and what it does when the wait is
over are the engine's (``_waits.py``).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any

from ._clock import Alarm, Clock
from ._errors import AdmitdError
from ._model import END_PREFIX, AcquireResult, DedupEnd, LeaseRecord


@dataclass(slots=True)
class Waiter:
    """What the RPCs waiting for one grant share: idempotent retries of one Acquire, or
    several WaitTickets of one ticket, wait on the same future."""

    future: asyncio.Future[LeaseRecord]
    holders: int = 1
    claims: bool = True
    """The grant is claimed for it before it hears of it (an Acquire); False: it is only
    woken, and claims for itself (a WaitTicket, after checking the owner)."""
    claiming: bool = False  # its grant's claim is under way
    waiting: bool = False
    """Its RPC waits, its wait's time running (``join``); False while it is only held
    across the backend call that may queue it."""


class Awaited(Collection[str]):
    """What this process waits to hear of, seen live (nothing copied): the lease ids of its
    waiters, then ``end:<leader>`` for the dedup leaders its followers joined. The grant
    listener asks ``in`` at every message and poll: a list of every waiter built each time,
    and searched, cost 28% of a core with 97,868 waiters parked and nothing happening."""

    __slots__ = ("_followers", "_waiters")

    def __init__(self, waiters: dict[str, Waiter], followers: dict[str, Any]) -> None:
        self._waiters = waiters
        self._followers = followers

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, str):
            return False
        if item.startswith(END_PREFIX):
            return item[len(END_PREFIX) :] in self._followers
        return item in self._waiters

    def __iter__(self) -> Iterator[str]:
        yield from list(self._waiters)
        yield from self.ends()

    def __len__(self) -> int:
        return len(self._waiters) + len(self._followers)

    def ends(self) -> list[str]:
        """The ``end:<leader>`` ids alone."""
        return [END_PREFIX + leader for leader in self._followers]


WAKE_BATCH = 256  # timed-out waits woken in one turn of the event loop, at most


class Timeouts:
    """The timeouts of the waits in this process, on one timer of the clock: a wait holds an
    entry of this heap (about 150 bytes: a list, its time and its number) rather than an
    event-loop timer of its own (uvloop's handle, its libuv timer and the context it copies:
    about 510 bytes, tracemalloc), which with 100,000 RPCs parked was 50 MB. The clock's
    timer is set for the earliest live entry; one given up (a grant came first) is only
    marked, and dropped when it reaches the top of the heap, or all together once they
    are half of it."""

    __slots__ = ("_alarm", "_clock", "_given_up", "_heap", "_seq")

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._heap: list[list[Any]] = []  # [when, seq, callback (None: given up)]
        self._given_up = 0
        self._seq = itertools.count()
        self._alarm = Alarm(clock, self._fire)

    def __len__(self) -> int:
        """Timeouts still to come."""
        return len(self._heap) - self._given_up

    def at(self, when: float, callback: Callable[[], object]) -> list[Any]:
        """Run ``callback`` once the clock reaches ``when``; the entry, to :meth:`give_up`."""
        entry = [when, next(self._seq), callback]
        heapq.heappush(self._heap, entry)
        self._alarm.sooner(when)
        return entry

    def give_up(self, entry: list[Any]) -> None:
        """``entry``'s callback is not to run (a no-op once it has run)."""
        if entry[2] is None:
            return
        entry[2] = None
        self._given_up += 1
        if self._given_up * 2 > len(self._heap):
            self._heap = [e for e in self._heap if e[2] is not None]
            heapq.heapify(self._heap)
            self._given_up = 0
        self._drop_given_up()

    def _fire(self) -> None:
        """Wake the waits whose time has come, :data:`WAKE_BATCH` at most: the rest in the
        next turn of the loop (the timer is set for their time, which has passed). Each
        woken wait then leaves its queue, a store call: 10,000 woken in one turn kept the
        loop busy past ``backend.dead_after`` before the heartbeat's timer could run."""
        now = self._clock.now()
        woken = 0
        while self._heap and self._heap[0][0] <= now and woken < WAKE_BATCH:
            entry = heapq.heappop(self._heap)
            callback, entry[2] = entry[2], None
            if callback is None:
                self._given_up -= 1
            else:
                callback()  # wakes a future: what it wakes runs later, on the loop
                woken += 1
        self._drop_given_up()

    def _drop_given_up(self) -> None:
        """Pop the given-up entries off the top and set the clock's timer for the first
        live one (none: unset), as a timer per wait would have been."""
        heap = self._heap
        while heap and heap[0][2] is None:
            heapq.heappop(heap)
            self._given_up -= 1
        if not heap:
            self._alarm.cancel()
        elif self._alarm.when != heap[0][0]:
            self._alarm.set(heap[0][0])


class Waiting:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.timeouts = Timeouts(clock)
        self._waiters: dict[str, Waiter] = {}
        self._followers: dict[str, set[asyncio.Future[DedupEnd]]] = {}  # by leader
        self._drained: AdmitdError | None = None  # draining: every wait ends with this
        self._awaited = Awaited(self._waiters, self._followers)

    def __bool__(self) -> bool:
        return bool(self._waiters or self._followers)

    def waits_for(self, lease_id: str) -> bool:
        """An RPC here waits for the grant of ``lease_id``, its wait's time running (tests
        move a manual clock only once it is)."""
        waiter = self._waiters.get(lease_id)
        return waiter is not None and waiter.waiting

    def joining(self) -> int:
        """RPCs held across the backend call that may queue them, their wait's time not yet
        running (tests move a manual clock only once none is)."""
        return sum(not waiter.waiting for waiter in self._waiters.values())

    def followers_of(self, leader: str) -> int:
        """Dedup followers here waiting for ``leader``."""
        return len(self._followers.get(leader, ()))

    def awaited(self) -> Awaited:
        """What this process waits to hear of: the grants of its waiters, and the ends of
        the dedup leaders its followers joined (``end:<leader>``); a live view."""
        return self._awaited

    # -- registering ------------------------------------------------------------------------

    def hold(self, lease_id: str) -> Waiter:
        """An RPC is about to ask for ``lease_id`` and may wait for it: register first, as a
        grant may arrive (from another replica) before the backend call returns."""
        waiter = self._waiters[lease_id] = Waiter(asyncio.get_running_loop().create_future())
        if self._drained is not None:  # registered after the drain began: ends at once
            waiter.future.set_exception(self._drained)
        return waiter

    def unhold(self, lease_id: str, waiter: Waiter, result: AcquireResult | None) -> None:
        """After the backend call: keep the registration only if the RPC now waits on it."""
        queued = result is not None and result.queued and not result.replayed
        if not (self._waiters.get(lease_id) is waiter and queued):
            self._waiters.pop(lease_id, None)

    def join(self, lease_id: str, *, shared: bool, claims: bool = True) -> Waiter:
        """The registration an RPC waits on for ``lease_id``: a new one, or the one already
        there (``shared``: another RPC waits on it too, e.g. an idempotent retry)."""
        waiter = self._waiters.get(lease_id)
        if waiter is None:
            waiter = self.hold(lease_id)
            waiter.claims = claims
        elif shared:
            waiter.holders += 1
        waiter.waiting = True
        return waiter

    def leave(self, lease_id: str, waiter: Waiter) -> bool:
        """An RPC stops waiting. True when it was the last one and no grant reached it (timed
        out, cancelled or drained): then the waiter's place must be given up, and a grant
        racing with that finds no waiter and stays unclaimed, so the give-up returns it."""
        waiter.holders -= 1
        if waiter.holders:
            return False
        self._waiters.pop(lease_id, None)
        if waiter.future.done() and waiter.future.exception() is None:
            return False
        waiter.future.cancel()
        return True

    def follow(self, leader: str) -> asyncio.Future[DedupEnd]:
        """A dedup follower waits for ``leader``'s end."""
        future: asyncio.Future[DedupEnd] = asyncio.get_running_loop().create_future()
        if self._drained is not None:
            future.set_exception(self._drained)
        self._followers.setdefault(leader, set()).add(future)
        return future

    def unfollow(self, leader: str, future: asyncio.Future[DedupEnd]) -> None:
        followers = self._followers.get(leader, set())
        followers.discard(future)
        if not followers:
            self._followers.pop(leader, None)

    # -- what reaches the waiting RPCs ------------------------------------------------------

    def claiming(self, lease_id: str) -> bool | None:
        """How a grant of ``lease_id`` reaches the RPC waiting here. True: it is claimed for
        it first (an Acquire), once, however often the grant is delivered (by the operation
        that made it and by pub/sub); False: the RPC is only woken (a WaitTicket claims for
        itself); None: no RPC here waits for it, or its claim is under way."""
        waiter = self._waiters.get(lease_id)
        if waiter is None or waiter.future.done() or waiter.claiming:
            return None
        waiter.claiming = waiter.claims
        return waiter.claims

    def grant(self, lease: LeaseRecord) -> bool:
        """Hand a grant to its waiting RPC; True when one took it. A grant for an RPC that
        has just given up stays unclaimed (its give-up returns it), as does one for a
        deferred ticket or another replica's RPC."""
        waiter = self._waiters.get(lease.lease_id)
        if waiter is None or waiter.future.done():
            return False
        waiter.future.set_result(lease)
        return True

    def queued_here(self) -> list[str]:
        """The lease ids of the Acquires waiting here for a grant that has not reached them
        (nor is being claimed for them): those a store that dropped this replica's waiters
        may have left with no place (``Heartbeat.recount``)."""
        return [
            lease_id
            for lease_id, w in self._waiters.items()
            if w.waiting and w.claims and not w.claiming and not w.future.done()
        ]

    def lose(self, lease_id: str, refusal: AdmitdError) -> bool:
        """A waiter lost its place in the queue: its RPCs get ``refusal``, unless a grant
        reached it or is being claimed for it meanwhile. True when it was refused."""
        waiter = self._waiters.get(lease_id)
        if waiter is None or waiter.future.done() or waiter.claiming:
            return False
        waiter.future.set_exception(refusal)
        return True

    def refuse(self, lease_id: str, refusal: AdmitdError) -> None:
        waiter = self._waiters.get(lease_id)
        if waiter is not None and not waiter.future.done():
            waiter.future.set_exception(refusal)

    def finish(self, end: DedupEnd) -> None:
        """A dedup leader's call ended: its followers here hear how."""
        for future in self._followers.pop(end.leader, ()):
            if not future.done():
                future.set_result(end)

    def drain(self, error: AdmitdError) -> None:
        """Every waiter gets ``error`` (UNAVAILABLE), so its client goes elsewhere; so does
        every waiter registered from now on (an Acquire that was counting its prompt when
        the drain began would otherwise wait out its whole wait)."""
        self._drained = error
        futures: list[asyncio.Future[Any]] = [w.future for w in self._waiters.values()]
        for followers in self._followers.values():
            futures += followers
        for future in futures:
            if not future.done():
                future.set_exception(error)

    # -- time -------------------------------------------------------------------------------

    def sleep(self, seconds: float) -> asyncio.Future[None]:
        """A future that resolves ``seconds`` from now on the injected clock."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        handle = self.clock.call_at(self.clock.now() + seconds, lambda: _resolve(future))
        future.add_done_callback(lambda _: handle.cancel())
        return future

    async def until(
        self, future: asyncio.Future[Any], within: float | asyncio.Future[None]
    ) -> bool:
        """Wait for ``future`` at most ``within`` seconds on the injected clock, or until
        ``within``, a :meth:`sleep` begun earlier, goes off (it is then cancelled); True if
        ``future`` is done.

        Every parked RPC holds what this allocates for as long as it waits: one future of
        its own, woken by ``future`` or by its entry in :class:`Timeouts`, through one
        callback. A :meth:`sleep` raced with ``future`` by ``asyncio.wait`` held about 2 KB
        more per waiter (its future, two closures, a set, wait's own future and callbacks
        and two coroutine frames; tracemalloc)."""
        if future.done():
            if isinstance(within, asyncio.Future):
                within.cancel()
            return True
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        wake = _Wake(woken)
        timeout = None
        if isinstance(within, asyncio.Future):
            within.add_done_callback(wake)
        else:
            timeout = self.timeouts.at(self.clock.now() + within, wake)
        future.add_done_callback(wake)
        try:
            await woken
        finally:
            if isinstance(within, asyncio.Future):
                within.cancel()
            elif timeout is not None:
                self.timeouts.give_up(timeout)
            future.remove_done_callback(wake)
        return future.done()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Wake:
    """``until``'s callback: from its timeout (no argument) or as ``future``'s done callback.
    One object of one slot (56 bytes) rather than a ``functools.partial`` (with its arguments'
    tuple and an empty keywords dict: 192 bytes, tracemalloc), as every parked RPC holds one."""

    __slots__ = ("woken",)

    def __init__(self, woken: asyncio.Future[None]) -> None:
        self.woken = woken

    def __call__(self, _done: object = None) -> None:
        if not self.woken.done():
            self.woken.set_result(None)
