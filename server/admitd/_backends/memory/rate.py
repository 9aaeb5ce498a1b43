"""A pool's recent grant rate, as the memory backend keeps it; its twin,
``_backends/redis/lua/_lib4_leases.lua``, keeps the same state and arithmetic in a hash."""

from __future__ import annotations

import math

from ..._model import RATE_WINDOW


class GrantRate:
    """Grants per second of one pool, over a sliding window of two fixed windows.

    Before a full window has passed since the first grant, it is the plain average since
    then. Both backends keep exactly this state (the Redis one in a hash).
    """

    __slots__ = ("current", "first", "previous", "total", "window")

    def __init__(self, now: float) -> None:
        self.first = now
        self.total = 0
        self.window = math.floor(now / RATE_WINDOW)
        self.current = 0
        self.previous = 0

    def add(self, now: float) -> None:
        self._roll(now)
        self.current += 1
        self.total += 1

    def per_second(self, now: float) -> float | None:
        self._roll(now)
        span = now - self.first
        if span < RATE_WINDOW:
            return (self.total - 1) / span if span > 0 and self.total > 1 else None
        into = now / RATE_WINDOW - self.window
        return (self.previous * (1 - into) + self.current) / RATE_WINDOW

    def _roll(self, now: float) -> None:
        window = math.floor(now / RATE_WINDOW)
        if window != self.window:
            self.previous = self.current if window == self.window + 1 else 0
            self.current, self.window = 0, window
