"""What this process has seen of each pool, and the wait estimates drawn from it.

The store keeps each pool's grant rate (shared by all replicas; see
``_backends/memory/rate.py``); this process adds how long its leases are held and which
limit held the queue last. From these come every estimate a caller sees: a queued caller's
expected wait, a retry delay after QUEUE_FULL or QUEUE_TIMEOUT, the wait a fallback
candidate promises.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._clock import Clock
from ._errors import Rejected
from ._model import Denial, QueueFull, QueueSpot
from ._policy import Policy, QueueEstimate, wait_estimate

_EWMA = 0.2  # weight of the newest sample in the hold-time average


@dataclass(slots=True)
class _Seen:
    hold_time: float | None = None  # EWMA of how long leases are held
    blocked: Denial | None = None  # what held the head of the queue last time


class PoolHistory:
    """What this process saw of each pool. Estimates read the policy in force, which each
    caller passes (a config reload replaces it)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._pools: dict[str, _Seen] = {}

    def held(self, pool: str, seconds: float) -> None:
        """A lease of ``pool`` was held this long."""
        seen = self._pools.setdefault(pool, _Seen())
        old = seen.hold_time
        seen.hold_time = seconds if old is None else old + _EWMA * (seconds - old)

    def blocked(self, pool: str, denial: Denial) -> None:
        self._pools.setdefault(pool, _Seen()).blocked = denial

    def blocked_by(self, pool: str) -> Denial | None:
        """The limit that held the pool's queue the last time this process looked."""
        seen = self._pools.get(pool)
        return seen.blocked if seen is not None else None

    def hold_time(self, pool: str) -> float | None:
        seen = self._pools.get(pool)
        return seen.hold_time if seen is not None else None

    def first_grant_in(self, pool: str, policy: Policy) -> float:
        """Seconds until the pool is likely to grant again, from what this process saw:
        the blocking limit's own delay, else a typical hold, else one lease TTL."""
        seen = self._pools.get(pool)
        if seen is not None and seen.blocked is not None:
            wall = self._clock.wall()
            return policy.retry_after(seen.blocked, wall=wall, hold_time=seen.hold_time)
        if seen is not None and seen.hold_time is not None:
            return seen.hold_time
        return policy.settings.lease.ttl

    def estimate(self, spot: QueueSpot, policy: Policy) -> QueueEstimate:
        first = self.first_grant_in(spot.pool, policy)
        wait = wait_estimate(spot.position, spot.grants_per_second, first)
        return QueueEstimate(spot.position, spot.depth, wait)

    def queue_full(self, pool: str, full: QueueFull, policy: Policy) -> Rejected:
        """No room: a retry can succeed once the next waiter has been served."""
        rate, first = full.grants_per_second, self.first_grant_in(pool, policy)
        joining = QueueEstimate(
            full.pool_depth, full.pool_depth, wait_estimate(full.pool_depth, rate, first)
        )
        return policy.queue_full(full, retry_after=wait_estimate(0, rate, first), estimate=joining)

    def queue_timeout(
        self, pool: str, waited: float, spot: QueueSpot | None, policy: Policy
    ) -> Rejected:
        """Not admitted in time; ``spot``: where the waiter stood when it gave up, if known."""
        rate = spot.grants_per_second if spot is not None else None
        return policy.queue_timeout(
            waited,
            retry_after=wait_estimate(0, rate, self.first_grant_in(pool, policy)),
            blocked_by=self.blocked_by(pool),
            estimate=self.estimate(spot, policy) if spot is not None else None,
        )
