"""How many store calls a replica makes at once, and who waits for a connection.

redis-py's asyncio pool fails a call at once ("Too many connections") when every connection
is busy, and under load that turned into UNAVAILABLE and lost Releases. Here at most
``size`` calls hold a connection (the pool is sized to match, so it never runs out); the
others wait their turn in two lanes: settling calls (Release, Renew, claims, cancels,
expiry: what frees capacity and must never be lost) before new admissions, FIFO within
each. An admission waits at most ``backend.pool_timeout``, then gives up with
:class:`~admitd._errors.StoreBusy` (refused SERVER_OVERLOADED, nothing reserved); a
settling call waits as long as it takes (each call ahead of it is bounded by the command
timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque

from ..._errors import StoreBusy


class Lanes:
    def __init__(self, size: int, admit_timeout: float) -> None:
        self._free = size
        self._admit_timeout = admit_timeout
        self._settle: deque[asyncio.Future[None]] = deque()
        self._admit: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> tuple[int, int]:
        """Calls waiting for a connection: (settling, admitting)."""
        return len(self._settle), len(self._admit)

    async def take(self, *, admit: bool) -> None:
        """Wait for a connection of one's own (``admit``: for a new admission); ``give``
        it back when the store call is over. A caller cancelled while it waits holds none."""
        if self._free > 0 and not (self._settle or self._admit):
            self._free -= 1  # the common case: no wait, no future
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        lane = self._admit if admit else self._settle
        lane.append(turn)
        started = time.monotonic()
        try:
            if admit:
                await asyncio.wait_for(turn, self._admit_timeout)
            else:
                await turn
        except (TimeoutError, asyncio.CancelledError) as stopped:
            if turn.done() and not turn.cancelled():
                self.give()  # handed a connection just as it gave up: pass it on
            else:
                with contextlib.suppress(ValueError):  # give() may have dropped it already
                    lane.remove(turn)
            if isinstance(stopped, TimeoutError):
                waited = time.monotonic() - started
                raise StoreBusy(
                    f"no connection to the state store came free in {waited:.3f}s", waited
                ) from None
            raise

    def give(self) -> None:
        """A connection came free: the next waiter takes it, else it goes back."""
        for lane in (self._settle, self._admit):
            while lane:
                turn = lane.popleft()
                if not turn.done():  # one cancelled a moment ago may not have left yet
                    turn.set_result(None)
                    return
        self._free += 1
