"""The replica's heartbeat: every ``backend.heartbeat_interval`` it tells the store it is
alive, promising its next beat within ``backend.dead_after``. With Redis, the waiters of a
replica past its promise (it died, even by ``kill -9``) leave the shared queue and the grants
made for them go back at once, so they do not hold freed slots until their claim times out.

Liveness is a matter of real time (processes die in real time, and Redis judges it on its
own ``TIME``), so the heartbeat runs on the event loop's clock, not the injected one, as the
server's housekeeping does: a test that moves a manual clock by an hour must not make its
replica dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from ._config import BackendConfig
from ._errors import Unavailable
from ._store import Store

log = logging.getLogger("admitd")


class Heartbeat:
    """Args:
    store: the one path to the backend (``beat``; what it dispatches is delivered).
    settings: the backend settings in force.
    """

    def __init__(self, store: Store, settings: Callable[[], BackendConfig]) -> None:
        self._store = store
        self._settings = settings
        self._task: asyncio.Task[None] | None = None
        self._landed: float | None = None  # loop time the last beat to reach the store set out
        self._beating: asyncio.Future[None] | None = None

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
            return None
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

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._settings().heartbeat_interval)  # real time: see above
            try:
                await self.beat()
            except Exception:  # a bug: said loudly, but a replica that stops beating is dead
                log.exception("heartbeat failed")
