"""The lease reaper: on the injected clock, it asks the store to reclaim expired leases
(their full reservation stays charged) and to give back grants nobody claimed in time (their
replica died), which also hands the freed capacity to waiters.

It comes round every ``lease.reap_interval`` while RPCs wait in this process, otherwise at
the earliest expiry or unclaimed grant's deadline the store reports, and at least once per
lease TTL (which covers leases granted meanwhile, by other replicas too).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine

from ._clock import Alarm, Clock
from ._config import Settings
from ._store import Store
from ._telemetry import Telemetry
from ._waiting import Waiting

log = logging.getLogger("admitd")


class Reaper:
    """Args:
    clock: the injected clock.
    store: the one path to the backend (``expire``).
    telemetry: counts expiries.
    waiting: the RPCs waiting here (while there are any, it comes round often).
    settings: the settings in force (a config reload replaces them).
    spawn: runs a reap in the background.
    """

    def __init__(
        self,
        clock: Clock,
        store: Store,
        telemetry: Telemetry,
        waiting: Waiting,
        *,
        settings: Callable[[], Settings],
        spawn: Callable[[Coroutine[object, object, object]], None],
    ) -> None:
        self._clock = clock
        self._store = store
        self._telemetry = telemetry
        self._waiting = waiting
        self._settings = settings
        self._alarm = Alarm(clock, lambda: spawn(self._reap()))
        self.stopping = False  # draining: reap once more if due, then no more

    def start(self) -> None:
        self._schedule(None)

    def cancel(self) -> None:
        self.stopping = True
        self._alarm.cancel()

    def within(self, seconds: float) -> None:
        """Come round within ``seconds`` (an RPC waits for capacity, a grant may go
        unclaimed); after that reap, the usual schedule resumes."""
        self._alarm.sooner(self._clock.now() + seconds, arm=False)

    def _schedule(self, next_expiry_in: float | None) -> None:
        lease = self._settings().lease
        delay = lease.ttl if next_expiry_in is None else next_expiry_in
        if self._waiting:
            delay = lease.reap_interval
        delay = min(max(delay, lease.reap_interval), lease.ttl)
        self._alarm.set(self._clock.now() + delay)

    async def _reap(self) -> None:
        next_expiry_in = None
        try:
            result = await self._store.call(self._store.backend.expire)
            next_expiry_in = result.next_expiry_in
            for lease in result.expired:
                self._telemetry.expired(lease.pool)
                log.info(
                    "lease expired",
                    extra={"lease_id": lease.lease_id, "tenant": lease.tenant, "pool": lease.pool},
                )
        finally:
            if not self.stopping:
                self._schedule(next_expiry_in)
