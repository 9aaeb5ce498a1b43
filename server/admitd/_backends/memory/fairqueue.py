"""Weighted fair queue of one pool: strict priority classes with aging, WFQ within a class.

Within a class a waiter's virtual finish tag is ``max(V, tenant's last finish) + cost`` where
``cost = reservation / weight`` and ``V`` is the tag of the last waiter served (self-clocked
fair queueing). A tenant that was idle has no last finish above ``V``, so it cannot bank credit;
a busy tenant's waiters get increasing tags, so each tenant is served FIFO.

A tag is paid in reservations, but fairness is owed on what was used (VTC): when a lease is
released for less than it reserved, :meth:`FairQueue.credit` moves the tenant's last finish
and its queued waiters back by the refund over its weight, never below ``V``.

Between classes the order is strict, except that a waiter climbs one class per ``aging``
seconds of waiting, so a saturated higher class delays a lower one but never starves it.

Its twin is ``_backends/redis/lua/_lib5_queue.lua`` (``push``, ``unqueue``, ``fair_order``).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..._model import PRIORITY_CLASSES


@dataclass(order=True, slots=True)
class Entry:
    tag: float
    seq: int
    lease_id: str = field(compare=False)
    tenant: str = field(compare=False)
    priority: int = field(compare=False)
    cost: float = field(compare=False)
    enqueued_at: float = field(compare=False)


class FairQueue:
    def __init__(self) -> None:
        self._classes: list[list[Entry]] = [[] for _ in range(PRIORITY_CLASSES)]
        self._vtime = [0.0] * PRIORITY_CLASSES
        self._last_finish: dict[tuple[int, str], float] = {}
        # Each tenant's waiters per class, oldest first: the ones a credit moves.
        self._mine: dict[tuple[int, str], dict[int, Entry]] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return sum(len(c) for c in self._classes)

    def depth_by_class(self) -> list[int]:
        return [len(c) for c in self._classes]

    def push(self, lease_id: str, tenant: str, priority: int, cost: float, now: float) -> Entry:
        key = (priority, tenant)
        start = max(self._vtime[priority], self._last_finish.get(key, 0.0))
        entry = Entry(start + cost, next(self._seq), lease_id, tenant, priority, cost, now)
        self._last_finish[key] = entry.tag
        bisect.insort(self._classes[priority], entry)
        self._mine.setdefault(key, {})[entry.seq] = entry
        return entry

    def remove(self, entry: Entry, *, served: bool) -> None:
        """Take an entry out; ``served`` advances virtual time, otherwise its tag is given back."""
        queue = self._classes[entry.priority]
        i = bisect.bisect_left(queue, entry)
        if i < len(queue) and queue[i] is entry:
            del queue[i]
        key = (entry.priority, entry.tenant)
        mine = self._mine[key]
        del mine[entry.seq]
        if not mine:
            del self._mine[key]
        if served:
            self._vtime[entry.priority] = max(self._vtime[entry.priority], entry.tag)
        elif self._last_finish.get(key) == entry.tag:
            # The tenant's newest waiter left unserved: it must not push later ones back.
            self._last_finish[key] = entry.tag - entry.cost
        if self._last_finish.get(key, 0.0) <= self._vtime[entry.priority]:
            self._last_finish.pop(key, None)  # no credit left to remember

    def credit(self, tenant: str, priority: int, amount: float) -> None:
        """Give ``tenant`` back ``amount`` of virtual time in class ``priority`` (the part of
        a lease's reservation it did not use, over its weight): its last finish and every
        waiter it has queued there move back by it, as if it had reserved only what it used.

        Never below ``V``: a tenant's finish at or under ``V`` is already as early as a
        newcomer's, and a credit below it would let a tenant whose calls all ran bank their
        refunds and burst past the busy tenants later, which is what ``max(V, ...)`` in
        :meth:`push` exists to stop. So only a tenant still waiting is credited, at most
        down to ``V``; moving all its waiters by the same amount keeps it FIFO."""
        key = (priority, tenant)
        last = self._last_finish.get(key)
        vtime = self._vtime[priority]
        if last is None or min(amount, last - vtime) <= 0:
            return  # its finish is not above V: an idle tenant banks no credit
        shift = min(amount, last - vtime)
        queue = self._classes[priority]
        for entry in self._mine.get(key, {}).values():
            del queue[bisect.bisect_left(queue, entry)]
            entry.tag -= shift
            bisect.insort(queue, entry)
        last -= shift
        if last <= vtime:
            del self._last_finish[key]
        else:
            self._last_finish[key] = last

    def position(self, target: Entry, now: float, aging: float, exact_up_to: int) -> int:
        """How many entries are served before ``target``: exact within the first
        ``exact_up_to`` of the order; beyond, the higher classes plus its rank in its own
        (aging ignored), which is cheap however long the queue. With one class holding
        waiters its own order is the service order: the rank is exact."""
        own = bisect.bisect_left(self._classes[target.priority], target)
        if len(self) == len(self._classes[target.priority]):
            return own
        for i, entry in enumerate(self.ordered(now, aging)):
            if entry is target:
                return i
            if i >= exact_up_to:
                break
        ahead = sum(len(queue) for queue in self._classes[: target.priority])
        return max(exact_up_to, ahead + own)

    def ordered(self, now: float, aging: float) -> Iterator[Entry]:
        """Entries in service order. Do not push or remove while iterating."""
        cursors = [0] * PRIORITY_CLASSES
        while True:
            best: Entry | None = None
            best_key: tuple[int, int, float, int] | None = None
            for cls, queue in enumerate(self._classes):
                if cursors[cls] < len(queue):
                    entry = queue[cursors[cls]]
                    climbed = int((now - entry.enqueued_at) / aging)
                    key = (cls - climbed, cls, entry.tag, entry.seq)
                    if best_key is None or key < best_key:
                        best, best_key = entry, key
            if best is None:
                return
            cursors[best.priority] += 1
            yield best
