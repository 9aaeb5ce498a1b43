"""One pool's queue: four strict priority classes with aging, and weighted fair queueing on
token cost within a class (virtual finish tags, no banked credit, FIFO per tenant), owed on
usage: a release's refund moves its tenant's finish and waiters back, not below the virtual
time."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from support.model.limits import Ticket


@dataclass
class Waiter:
    ticket: Ticket
    tag: float
    seq: int
    enq: float

    @property
    def deadline(self) -> float:
        return self.enq + self.ticket.wait


class FairQueue:
    """The waiters of one pool. The time comes from the caller, so that aging is measured
    on the model's clock."""

    def __init__(self, aging: float) -> None:
        self.aging = aging
        self.classes: list[list[Waiter]] = [[] for _ in range(4)]
        self.vtime = [0.0] * 4
        self.last: dict[tuple[int, str], float] = {}
        self.waiters: dict[str, Waiter] = {}
        self.seq = 0

    def push(self, t: Ticket, now: float) -> Waiter:
        key = (t.prio, t.tenant)
        tag = max(self.vtime[t.prio], self.last.get(key, 0.0)) + t.cost
        self.last[key] = tag
        self.seq += 1
        waiter = Waiter(t, tag, self.seq, now)
        self.classes[t.prio].append(waiter)
        self.classes[t.prio].sort(key=lambda w: (w.tag, w.seq))
        self.waiters[t.id] = waiter
        return waiter

    def remove(self, lease_id: str, *, served: bool) -> Waiter:
        """Out of the queue; served advances virtual time, otherwise the tag is given back."""
        w = self.waiters.pop(lease_id)
        c, key = w.ticket.prio, (w.ticket.prio, w.ticket.tenant)
        self.classes[c].remove(w)
        if served:
            self.vtime[c] = max(self.vtime[c], w.tag)
        elif self.last.get(key) == w.tag:
            self.last[key] = w.tag - w.ticket.cost  # a later waiter must not be pushed back
        if self.last.get(key, 0.0) <= self.vtime[c]:
            self.last.pop(key, None)  # an idle tenant banks no credit
        return w

    def credit(self, t: Ticket, refunded: int) -> None:
        """README: a refund moves the tenant's last finish and its waiters in the class back
        by refund / weight (cost / tokens), never below the virtual time."""
        c, key = t.prio, (t.prio, t.tenant)
        if refunded <= 0 or key not in self.last:
            return
        shift = min(t.cost * refunded / t.tokens, self.last[key] - self.vtime[c])
        if shift <= 0:
            return
        for w in self.classes[c]:
            if w.ticket.tenant == t.tenant:
                w.tag -= shift
        self.classes[c].sort(key=lambda w: (w.tag, w.seq))
        self.last[key] -= shift
        if self.last[key] <= self.vtime[c]:
            del self.last[key]

    def ordered(self, now: float) -> Iterator[Waiter]:
        """Service order: the best head of the four classes each time, a waiter climbing one
        class per ``aging`` of waiting."""
        cursors = [0] * 4
        while True:
            best: Waiter | None = None
            best_key: tuple[int, int, float, int] | None = None
            for c in range(4):
                if cursors[c] < len(self.classes[c]):
                    w = self.classes[c][cursors[c]]
                    key = (c - int((now - w.enq) / self.aging), c, w.tag, w.seq)
                    if best_key is None or key < best_key:
                        best, best_key = w, key
            if best is None:
                return
            cursors[best.ticket.prio] += 1
            yield best
