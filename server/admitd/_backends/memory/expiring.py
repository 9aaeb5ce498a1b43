"""A map whose entries expire, each at its own deadline.

The memory backend remembers several things for a while: settlements (so a retried Release
gets the same answer), idempotency keys, why a deferred ticket ended, how a dedup leader's
call ended. Entries are pruned from the front of the insertion order, which is cheap because
lifetimes there are nearly constant; a lookup checks the deadline itself, so no entry ever
outlives it even when a shorter lifetime (a config change) breaks that order.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Expiring(Generic[K, V]):
    def __init__(self) -> None:
        self._items: OrderedDict[K, tuple[V, float]] = OrderedDict()

    def put(self, key: K, value: V, until: float) -> None:
        self._items[key] = (value, until)
        self._items.move_to_end(key)

    def get(self, key: K, now: float) -> V | None:
        self.prune(now)
        item = self._items.get(key)
        return item[0] if item is not None and item[1] > now else None

    def pop(self, key: K) -> None:
        self._items.pop(key, None)

    def prune(self, now: float) -> None:
        while self._items:
            first, (_, until) = next(iter(self._items.items()))
            if until > now:
                return
            del self._items[first]
