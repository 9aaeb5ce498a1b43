"""The one source of time for the service, injectable so tests never sleep.

Every timer in admitd (queue timeouts, bucket-refill wake-ups, the lease reaper) is scheduled
with :meth:`Clock.call_at`, and every reading of time goes through :meth:`Clock.now` (monotonic
seconds, for buckets and expiry) or :meth:`Clock.wall` (Unix seconds, for timestamps and day
boundaries). :class:`ManualClock` moves only when a test advances it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Protocol


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds."""
        ...

    def wall(self) -> float:
        """Unix time in seconds."""
        ...

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` once ``now()`` reaches ``when``."""
        ...


class SystemClock:
    """The process's monotonic clock; timers run on the running asyncio loop."""

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        loop = asyncio.get_running_loop()
        return loop.call_later(max(0.0, when - self.now()), callback)


class Alarm:
    """One timer on a clock that can be set and moved: ``fire`` runs when it goes off, and
    the alarm is then unset (the engine's refill wake-up and lease reaper)."""

    def __init__(self, clock: Clock, fire: Callable[[], None]) -> None:
        self._clock = clock
        self._fire = fire
        self._set: tuple[float, TimerHandle] | None = None

    def set(self, when: float) -> None:
        """Go off at ``when``, instead of when it was set to."""
        self.cancel()
        self._set = (when, self._clock.call_at(when, self._go_off))

    @property
    def when(self) -> float | None:
        """When it goes off; None: unset."""
        return None if self._set is None else self._set[0]

    def sooner(self, when: float, *, arm: bool = True) -> None:
        """Go off at ``when`` if that is sooner than it is set to; if it is not set, only
        with ``arm``."""
        if self._set is None:
            if arm:
                self.set(when)
        elif when < self._set[0]:
            self.set(when)

    def cancel(self) -> None:
        if self._set is not None:
            self._set[1].cancel()
            self._set = None

    def _go_off(self) -> None:
        self._set = None
        self._fire()


class _ManualTimer:
    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock that stands still until :meth:`advance` moves it (for tests).

    ``idle`` is awaited after each timer fires, so that work the timer started (which may do
    real I/O, e.g. to Redis) finishes before time moves on; the engine sets it.
    """

    def __init__(self, start: float = 1_000.0, wall_start: float = 1_767_225_600.0) -> None:
        # wall_start is 2026-01-01T00:00:00Z, so day boundaries are easy to reason about.
        self.idle: Callable[[], Awaitable[None]] | None = None
        self._now = start
        self._wall_offset = wall_start - start
        self._timers: list[tuple[float, int, _ManualTimer]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        timer = _ManualTimer(callback)
        heapq.heappush(self._timers, (when, next(self._seq), timer))
        return timer

    async def advance(self, seconds: float) -> None:
        """Move time forward, firing due timers in order, then let woken tasks run."""
        target = self._now + seconds
        while self._timers and self._timers[0][0] <= target:
            when, _, timer = heapq.heappop(self._timers)
            self._now = max(self._now, when)
            if not timer.cancelled:
                timer.callback()
            await self._settle()
        self._now = target
        await self._settle()

    async def _settle(self) -> None:
        await settle()
        if self.idle is not None:
            await self.idle()
            await settle()


async def settle(rounds: int = 20) -> None:
    """Yield to the event loop until tasks woken by a timer have had their turn.

    This is not waiting for time to pass (time does not move); it only lets ready callbacks
    run, the way a loop iteration would.
    """
    for _ in range(rounds):
        await asyncio.sleep(0)
