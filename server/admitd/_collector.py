"""Python's cyclic garbage collector, kept from stalling the event loop of a busy replica.

A full (generation 2) collection walks every object the collector tracks, and each held-open
Acquire RPC keeps about 73 of them (grpc.aio's coroutines and Cython scopes, asyncio futures,
tasks and contexts, the engine's ticket and waiter). With Python's own policy, the replica
stopped 0.3 s with 10,000 waiters parked, 0.8 s with 20,000 and 0.9-1.0 s with 29,000
(``python -m bench.gc_stalls``), about 3 s at 100,000: past ``backend.dead_after``, so
that Redis counted a live replica dead and other replicas dropped its waiters.

So a serving process (``admitd serve``) runs :class:`Collector`:

- At start-up, everything made so far (modules, settings, the server) is frozen
  (``gc.freeze``): the collector never walks it again.
- Every ``interval`` (1 s) what was made since is collected, then what survived is frozen
  too. Any collection, Python's automatic ones included, walks only what one interval left
  alive, however many waiters are held.
- The trade-off: an object frozen while alive that dies in a reference cycle is not
  collected while frozen (memory, not correctness: nothing is freed too early). So every
  ``sweep_every`` (5 min) everything is unfrozen and collected once, when that is short:
  while the frozen objects are at most ``sweep_max`` (1,000,000, ~0.3 s); a replica holding
  more waiters than that postpones the sweep until it holds fewer. After 29,207 waiters
  parked under this policy had ended (their clients gone), the sweep found 45 such objects;
  after 10,000 had ended QUEUE_TIMEOUT, 25.
  The sweep is at most ~0.3 s, and each heartbeat's promise leaves the loop 1 s of slack.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger("admitd")

INTERVAL = 1.0
SWEEP_EVERY = 300.0
SWEEP_MAX = 1_000_000


class Collector:
    """Args:
    interval: seconds between two collections of what was made since the last one.
    sweep_every: seconds between two collections of everything (see the module).
    sweep_max: the most frozen objects a sweep walks; more, and it waits.
    now: the time (seconds); tests pass their own.
    """

    def __init__(
        self,
        interval: float = INTERVAL,
        sweep_every: float = SWEEP_EVERY,
        sweep_max: int = SWEEP_MAX,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = interval
        self._sweep_every = sweep_every
        self._sweep_max = sweep_max
        self._now = now
        self._sweep_at = now() + sweep_every
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Freeze what start-up made, and collect on a timer from now on."""
        gc.collect()
        gc.freeze()
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        gc.unfreeze()  # the process may go on (tests): leave the collector as it was

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.tick()

    def tick(self) -> int:
        """Collect what was made since the last tick (everything, when a sweep is due and
        short), then freeze what is left; the objects collected."""
        if self._now() >= self._sweep_at:
            frozen = gc.get_freeze_count()
            if frozen <= self._sweep_max:
                gc.unfreeze()
                self._sweep_at = self._now() + self._sweep_every
                swept = gc.collect()
                log.debug("garbage collection swept %d of %d frozen objects", swept, frozen)
                gc.freeze()
                return swept
            # Counting the frozen objects walks them too (quickly): not at every tick.
            self._sweep_at = self._now() + self._sweep_every / 10
        collected = gc.collect()
        gc.freeze()
        return collected
