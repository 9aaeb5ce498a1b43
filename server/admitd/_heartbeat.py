"""The replica's heartbeat: every ``backend.heartbeat_interval`` it tells the store it is
alive, promising its next beat within ``backend.dead_after``. With Redis, the waiters of a
replica past its promise (it died, even by ``kill -9``) leave the shared queue and the grants
made for them go back at once, so they do not hold freed slots until their claim times out.

A live replica can miss its promise too, when its event loop stalls. Then (``Beat.lapsed``)
its waiters that lost their place meanwhile are told so (UNAVAILABLE, retry) instead of
waiting out their wait with no place in the queue: see :meth:`Heartbeat.recount`.

Liveness is a matter of real time (processes die in real time, and Redis judges it on its
own ``TIME``), so the heartbeat runs on the event loop's clock, not the injected one, as the
server's housekeeping does: a test that moves a manual clock by an hour must not make its
replica dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, runtime_checkable

from ._config import BackendConfig
from ._errors import Unavailable
from ._refusals import place_lost
from ._store import Store
from ._waiting import Waiting

log = logging.getLogger("admitd")

RECOUNT_BATCH = 1000
"""Waiters looked up per store call by a recount: one call for 100,000 would hold a store
connection, and the event loop decoding its reply, for long."""


@runtime_checkable
class Places(Protocol):
    """A backend that can drop a live replica's waiters (it judges replicas dead by their
    heartbeats: Redis) says which of them still have a place."""

    async def placed(self, lease_ids: Sequence[str]) -> set[str]:
        """Those of ``lease_ids`` still queued, or granted and not yet claimed."""
        ...


class Heartbeat:
    """Args:
    store: the one path to the backend (``beat``; what it dispatches is delivered).
    settings: the backend settings in force.
    waiting: this process's waiting RPCs, told when they lost their place.
    """

    def __init__(
        self,
        store: Store,
        settings: Callable[[], BackendConfig],
        waiting: Waiting | None = None,
    ) -> None:
        self._store = store
        self._settings = settings
        self._waiting = waiting
        self._task: asyncio.Task[None] | None = None
        self._landed: float | None = None  # loop time the last beat to reach the store set out
        self._beating: asyncio.Future[None] | None = None
        self._recounting: asyncio.Future[None] | None = None
        self._recounts = 0  # recounts still to run (see _beat)

    def due(self) -> Awaitable[None] | None:
        """Just before a store call is sent: what to await first, when the last beat that
        reached the store set out over halfway from its interval to ``dead_after`` ago (the
        event loop stalled, e.g. in a long garbage collection). Then the call goes after a
        beat, never before it: a replica's own call must not find it dead, or the dispatch
        it runs drops the replica's own waiters from the queue. A beat that has set out but
        not landed does not count: on another connection, the call could overtake it."""
        if self._landed is None:
            return None
        settings = self._settings()
        late = (settings.heartbeat_interval + settings.dead_after) / 2
        if asyncio.get_running_loop().time() - self._landed <= late:
            return None  # the usual case, told first: current_task() is a call of its own
        if asyncio.current_task() is self._beating:
            return None  # the beat's own call (through Store.call) must not wait for itself
        return self._next()

    async def beat(self) -> None:
        """One heartbeat, or the one already under way: never two at once (a replica's
        beats share one connection, apart from the store calls that may be waiting for
        one, so that a beat is never late because the replica is busy)."""
        await self._next()

    def _next(self) -> asyncio.Future[None]:
        if self._beating is None or self._beating.done():
            self._beating = asyncio.ensure_future(self._beat())
        return asyncio.shield(self._beating)

    async def _beat(self) -> None:
        """A store that does not answer was counted on the way; the next beat tries again."""
        sent = asyncio.get_running_loop().time()
        dead_after = self._settings().dead_after
        with contextlib.suppress(Unavailable):
            beat = await self._store.call(self._store.backend.beat, dead_after)
            self._landed = sent
            if beat.lapsed:
                log.warning(
                    "this replica missed its heartbeats for over backend.dead_after (%gs):"
                    " other replicas may have dropped its queued calls",
                    dead_after,
                )
                # Twice: a waiter whose Acquire was on its way to the store during the lapse
                # is looked at only once its RPC waits, by the next beat.
                self._recounts = 2
            if self._recounts and (self._recounting is None or self._recounting.done()):
                self._recounts -= 1
                self._recounting = asyncio.ensure_future(self.recount())

    async def recount(self) -> None:
        """After a lapse: this replica's waiters that lost their place in the queue (another
        replica, or a call of its own, found it dead and dropped them, or gave back the
        grant made for them) are answered UNAVAILABLE, so their clients retry, rather than
        wait out their wait for a grant that will never come.

        Putting them back in the queue instead would not be exact: a waiter's place in the
        fair order (its finish tag) and its idempotency entry went with its queue entry, and
        the slot a grant given back for it freed may be another caller's by now. A waiter
        still queued, or with a grant on its way, keeps its place; one whose grant is being
        claimed is left to its claim (a claim that finds the grant gone answers the same)."""
        backend = self._store.backend
        if self._waiting is None or not isinstance(backend, Places):
            return  # the memory backend drops no live replica's waiters
        ids = self._waiting.queued_here()
        lost = 0
        for start in range(0, len(ids), RECOUNT_BATCH):
            batch = ids[start : start + RECOUNT_BATCH]
            try:
                kept = await self._store.call(backend.placed, batch)
            except Unavailable:
                return  # the next lapse, or each waiter's own wait, ends them
            lost += sum(self._waiting.lose(i, place_lost()) for i in batch if i not in kept)
        if lost:
            log.warning(
                "%d queued calls of this replica lost their place while it missed its"
                " heartbeats; answered UNAVAILABLE so that they retry",
                lost,
            )

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        for task in (self._task, self._recounting):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._recounting = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._settings().heartbeat_interval)  # real time: see above
            try:
                await self.beat()
            except Exception:  # a bug: said loudly, but a replica that stops beating is dead
                log.exception("heartbeat failed")
