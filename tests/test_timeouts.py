"""The waits' timeouts share one timer of the clock (``Waiting.timeouts``): each fires at its
time, in order, one given up never does, and the clock holds one timer, set for the earliest
timeout still to come, as a timer per wait would have been."""

from __future__ import annotations

import functools
from collections.abc import Callable

from admitd._clock import ManualClock
from admitd._waiting import WAKE_BATCH, Timeouts


def timers(clock: ManualClock) -> list[float]:
    """When the clock's live timers go off."""
    return sorted(when for when, _, timer in clock._timers if not timer.cancelled)


async def test_timeouts_fire_in_order_at_their_time_on_one_timer() -> None:
    clock = ManualClock()
    start = clock.now()
    timeouts = Timeouts(clock)
    fired: list[tuple[int, float]] = []

    def record(d: int) -> Callable[[], None]:
        return lambda: fired.append((d, clock.now()))

    entries = {d: timeouts.at(start + d, record(d)) for d in (3, 1, 2, 5)}
    assert timers(clock) == [start + 1]
    timeouts.give_up(entries[2])
    await clock.advance(4)
    assert fired == [(1, start + 1), (3, start + 3)]
    assert len(timeouts) == 1
    assert timers(clock) == [start + 5]
    timeouts.give_up(entries[3])  # already fired: nothing changes
    assert len(timeouts) == 1
    await clock.advance(1)
    assert fired[-1] == (5, start + 5)
    assert len(timeouts) == 0
    assert timers(clock) == []


async def test_giving_up_the_earliest_moves_the_timer_to_the_next_and_none_is_left() -> None:
    clock = ManualClock()
    start = clock.now()
    timeouts = Timeouts(clock)
    first = timeouts.at(start + 1, lambda: None)
    second = timeouts.at(start + 2, lambda: None)
    timeouts.give_up(first)
    assert timers(clock) == [start + 2]
    timeouts.give_up(second)
    assert timers(clock) == []
    assert len(timeouts) == 0


async def test_an_earlier_timeout_sets_the_timer_sooner() -> None:
    clock = ManualClock()
    start = clock.now()
    timeouts = Timeouts(clock)
    fired: list[int] = []
    timeouts.at(start + 10, lambda: fired.append(10))
    timeouts.at(start + 0.1, lambda: fired.append(0))
    assert timers(clock) == [start + 0.1]
    await clock.advance(0.1)
    assert fired == [0]
    assert timers(clock) == [start + 10]


async def test_given_up_timeouts_do_not_pile_up() -> None:
    """A grant usually comes long before the wait would run out: those timeouts are given up
    while they are far from the top of the heap, and must not stay there until their time."""
    clock = ManualClock()
    start = clock.now()
    timeouts = Timeouts(clock)
    keep = timeouts.at(start + 1, lambda: None)
    for i in range(1000):
        timeouts.give_up(timeouts.at(start + 3600 + i, lambda: None))
    assert len(timeouts) == 1
    assert len(timeouts._heap) <= 2
    assert timers(clock) == [start + 1]
    timeouts.give_up(keep)
    assert timeouts._heap == []


async def test_a_flood_of_timeouts_is_woken_in_batches_letting_other_timers_run_between() -> None:
    """10,000 waits timing out at once are not all woken in one turn of the loop: a timer due
    at the same time (the heartbeat's) runs after the first batch, not after all of them."""
    clock = ManualClock()
    at = clock.now() + 1
    timeouts = Timeouts(clock)
    fired: list[int] = []
    for n in range(3 * WAKE_BATCH + 1):
        timeouts.at(at, functools.partial(fired.append, n))
    seen_by_beat: list[int] = []
    clock.call_at(at, lambda: seen_by_beat.append(len(fired)))
    await clock.advance(1)
    assert seen_by_beat == [WAKE_BATCH]
    assert fired == list(range(3 * WAKE_BATCH + 1))  # all of them, in order, at their time
    assert len(timeouts) == 0
    assert timers(clock) == []
