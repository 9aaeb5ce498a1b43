"""The serving process's garbage-collection policy (``admitd._collector``): what a collection
walks stays what one interval left alive, and the cyclic garbage freezing keeps is swept when
that is short. Time is the test's (``now``); nothing sleeps."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from admitd._collector import Collector


class Node:
    """A reference cycle: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Iterator[Clock]:
    yield Clock()
    gc.unfreeze()  # whatever a test froze: the rest of the session collects as usual


def walked(obj: object) -> bool:
    """Whether a collection would walk ``obj`` (frozen objects are in no generation)."""
    return any(o is obj for o in gc.get_objects())


async def test_start_up_and_each_tick_freeze_what_survived_so_collections_skip_it(
    clock: Clock,
) -> None:
    collector = Collector(interval=3600, sweep_every=60, now=clock)
    before = Node()
    collector.start()
    try:
        after = Node()
        assert not walked(before)  # frozen at start-up
        assert walked(after)
        frozen = gc.get_freeze_count()
        collector.tick()
        assert not walked(after)
        assert gc.get_freeze_count() > frozen
        # What died in a cycle since the last tick is collected before the freeze.
        dead = Node()
        gone = weakref.ref(dead)
        del dead
        assert collector.tick() >= 1
        assert gone() is None
    finally:
        await collector.stop()
    assert walked(after)  # stop unfreezes


async def test_a_cycle_frozen_alive_is_swept_when_due_and_short(clock: Clock) -> None:
    collector = Collector(interval=3600, sweep_every=60, now=clock)
    collector.start()
    try:
        node = Node()
        gone = weakref.ref(node)
        collector.tick()  # frozen alive
        del node
        clock.t = 59
        collector.tick()
        assert gone() is not None  # the trade-off: kept while frozen
        clock.t = 60
        collector.tick()
        assert gone() is None  # the sweep
        assert gc.get_freeze_count() > 0  # and what is alive is frozen again
    finally:
        await collector.stop()


async def test_a_sweep_waits_while_too_many_objects_are_frozen(clock: Clock) -> None:
    collector = Collector(interval=3600, sweep_every=60, sweep_max=0, now=clock)
    collector.start()
    try:
        node = Node()
        gone = weakref.ref(node)
        collector.tick()
        del node
        clock.t = 60
        collector.tick()
        assert gone() is not None  # over sweep_max: postponed
        collector._sweep_max = 10**9  # the replica now holds fewer waiters
        clock.t = 65
        collector.tick()
        assert gone() is not None  # counted again a tenth of sweep_every later, not sooner
        clock.t = 66
        collector.tick()
        assert gone() is None
    finally:
        await collector.stop()
