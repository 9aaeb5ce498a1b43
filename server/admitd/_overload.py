"""The overload gate: whether this replica takes new work now, and what it says when not.

A replica past its capacity must say so at once, cheaply and explicitly (SERVER_OVERLOADED
with a RetryInfo, nothing reserved), instead of letting calls pile up until their callers
give up. What it measures is the wait a new call has here before admitd looks at it: gRPC
core holds calls the event loop has not taken yet, and a probe (``_api/probe.py``) times a
call of this replica to itself every ``overload.probe_interval`` (real time: it measures
the machine, not admission logic). While that wait is above ``overload.max_queue_delay``,
new Acquires, AcquireStreams and Enqueues are refused; everything that settles or reads
existing state (Release, Renew, tickets, status) is always served. A probe still
outstanding counts with the time it has waited so far, so a queue that has just grown is
seen before the probe returns.

The store's own bound (``backend.pool_timeout``: a call waiting for a free connection) is
refused the same way, by ``Store.call``; the words are ``_refusals.server_overloaded``.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable

from ._config import Settings
from ._errors import Rejected
from ._refusals import server_overloaded

log = logging.getLogger("admitd")


class Gate:
    """Args:
    settings: the settings in force (``overload`` applies live).
    refused: counts a refusal by its cause (the metric).
    measured: hears each measured wait (the metric).
    """

    def __init__(
        self,
        settings: Callable[[], Settings],
        refused: Callable[[str], None],
        measured: Callable[[float], None],
    ) -> None:
        self._settings = settings
        self._refused = refused
        self._measured = measured
        self._delay = 0.0  # the last probe's wait, seconds
        self._probe_since: float | None = None  # when the outstanding probe was sent
        self._overloaded = False  # for the log: said once per episode
        self._refusals = 0  # in this episode
        self.probes = 0  # probes answered
        self.probe_pool = f"\x00probe-{secrets.token_hex(8)}"
        """The pool name the probe's Acquire asks for: answered at once with an empty
        lease, reserving nothing (random: no configured pool is named so)."""

    # -- what the probe measures (times: real monotonic seconds) ------------------------------

    def probe_sent(self, at: float) -> None:
        self._probe_since = at

    def probe_answered(self, at: float) -> None:
        if self._probe_since is not None:
            self._delay = at - self._probe_since
            self._probe_since = None
            self.probes += 1
        self._measured(self._delay)

    def queue_delay(self, now: float) -> float:
        """Seconds a new call waits here before it is looked at, as last measured (or as
        long as the outstanding probe has waited, when that is longer)."""
        if self._probe_since is None:
            return self._delay
        return max(self._delay, now - self._probe_since)

    # -- the decision -----------------------------------------------------------------------

    def check(self, now: float, time_remaining: float | None) -> None:
        """Raise SERVER_OVERLOADED unless this replica takes new work at ``now``.

        ``time_remaining``: what the call's deadline leaves (None: it has none); a call
        whose deadline passed while it waited here is refused without any work.
        """
        limit = self._settings().overload.max_queue_delay
        if limit is not None:
            delay = self.queue_delay(now)
            if delay > limit:
                if not self._overloaded:
                    self._overloaded = True
                    log.warning(
                        "overloaded: calls wait %.3fs here (overload.max_queue_delay %.3fs);"
                        " refusing new Acquires with SERVER_OVERLOADED",
                        delay,
                        limit,
                    )
                raise self._refusal("queue_delay", delay)
            if self._overloaded:
                self._overloaded = False
                log.warning("no longer overloaded: %d calls were refused", self._refusals)
                self._refusals = 0
        if time_remaining is not None and time_remaining <= 0:
            raise self._refusal("deadline", self.queue_delay(now))

    def _refusal(self, cause: str, delay: float) -> Rejected:
        self._refusals += 1
        self._refused(cause)
        return server_overloaded(cause, delay)
