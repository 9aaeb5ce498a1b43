"""In-process singleflight: identical concurrent calls share one lease and one provider call.

The first caller of a key (the leader) runs the work; callers arriving while it runs wait
for its result, or its exception, instead of acquiring a lease of their own. Once the work
ends the key is free again: singleflight shares concurrent work, it is not a cache.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, TypeVar, cast

T = TypeVar("T")


class AsyncFlights:
    """Singleflight for coroutines.

    The shared work runs in a task of its own, so a waiter that is cancelled leaves the
    others unharmed; the work itself is cancelled only when no waiter is left.
    """

    def __init__(self) -> None:
        self._flights: dict[str, tuple[asyncio.Task[Any], list[int]]] = {}

    async def join(self, key: str, work: Callable[[], Awaitable[T]]) -> T:
        flight = self._flights.get(key)
        if flight is None:
            task = asyncio.ensure_future(work())
            flight = (task, [0])
            self._flights[key] = flight
            task.add_done_callback(lambda _: self._forget(key, task))
        task, waiters = flight
        waiters[0] += 1
        try:
            return cast(T, await asyncio.shield(task))
        finally:
            waiters[0] -= 1
            if waiters[0] == 0 and not task.done():
                task.cancel()

    def waiters(self, key: str) -> int:
        """How many callers share the flight of ``key`` now (0: none in flight)."""
        flight = self._flights.get(key)
        return flight[1][0] if flight else 0

    def _forget(self, key: str, task: asyncio.Task[Any]) -> None:
        if self._flights.get(key, (None,))[0] is task:
            del self._flights[key]


class SyncFlights:
    """Singleflight for threads: the leader runs the work in its own thread."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        """Notified whenever a caller joins or a flight ends (tests wait on it)."""
        self._flights: dict[str, tuple[Future[Any], list[int]]] = {}

    def join(self, key: str, work: Callable[[], T]) -> T:
        with self.changed:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = (Future(), [0])
                self._flights[key] = flight
            flight[1][0] += 1
            self.changed.notify_all()
        future = flight[0]
        if not leader:
            return cast(T, future.result())
        try:
            result = work()
        except BaseException as error:
            future.set_exception(error)
            raise
        else:
            future.set_result(result)
            return result
        finally:
            with self.changed:
                del self._flights[key]
                self.changed.notify_all()

    def waiters(self, key: str) -> int:
        """How many callers share the flight of ``key`` now (0: none in flight)."""
        with self.changed:
            flight = self._flights.get(key)
            return flight[1][0] if flight else 0
