"""Waiting for something in the real world (a process, a socket, Redis) with a hard bound.

Not for waiting for time to pass: a test on a manual clock advances the clock instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def until(
    condition: Callable[[], Awaitable[bool]], within: float, what: str, every: float = 0.05
) -> float:
    """Poll ``condition`` until it holds; fail after ``within`` real seconds. Returns the
    seconds it took."""
    start = time.monotonic()
    while True:
        if await condition():
            return time.monotonic() - start
        if time.monotonic() - start > within:
            raise AssertionError(f"not within {within:g}s: {what}")
        await asyncio.sleep(every)


def until_sync(
    condition: Callable[[], bool], within: float, what: str, every: float = 0.05
) -> float:
    """:func:`until` for a condition read without an event loop (blocking while it waits).
    Returns the seconds it took."""
    start = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - start
        if time.monotonic() - start > within:
            raise AssertionError(f"not within {within:g}s: {what}")
        time.sleep(every)
