"""How a call ended, reported to admitd at release: exceptions map to an ``Outcome``.

Provider SDK exceptions are recognised by shape, so no SDK is imported: OpenAI's and
Anthropic's ``APIStatusError`` subclasses carry ``status_code`` (429 for ``RateLimitError``),
httpx's ``HTTPStatusError`` carries ``response.status_code``, and timeouts are
``TimeoutError`` or classes named like one (``APITimeoutError``, httpx's
``TimeoutException``). Wrapped errors are followed through ``__cause__``/``__context__``.
"""

from __future__ import annotations

import asyncio
from enum import IntEnum


class Outcome(IntEnum):
    """How the provider call behind a lease ended (``admitd.v1.Outcome``)."""

    OK = 1
    PROVIDER_RATE_LIMITED = 2
    PROVIDER_ERROR = 3
    TIMEOUT = 4
    CANCELLED = 5


class Priority(IntEnum):
    """Queue priority class (``admitd.v1.Priority``); classes are served strictly in order."""

    CRITICAL = 1
    HIGH = 2
    NORMAL = 3
    LOW = 4


class DedupRole(IntEnum):
    """A deduplicated call's part (``admitd.v1.DedupRole``): it leads, or it joined a leader."""

    LEADER = 1
    """It holds the lease and makes the provider call; it shares its result at release."""
    FOLLOWER = 2
    """It joined an identical call in flight: no lease, no provider call, the leader's result."""


_CANCELLED = (asyncio.CancelledError, KeyboardInterrupt, GeneratorExit)
_TIMEOUT_STATUS = {408, 504}
_CHAIN_DEPTH = 5  # how far to follow wrapped exceptions


def outcome_for(error: BaseException | None) -> Outcome:
    """The outcome to report for a call that raised ``error`` (None: it returned)."""
    if error is None:
        return Outcome.OK
    if isinstance(error, _CANCELLED):
        return Outcome.CANCELLED
    for link in _chain(error):
        status = _status_code(link)
        # 529: Anthropic's "overloaded", the provider asking everyone to slow down.
        if status in (429, 529) or _named(link, "RateLimitError"):
            return Outcome.PROVIDER_RATE_LIMITED
        if status in _TIMEOUT_STATUS or isinstance(link, TimeoutError) or _named(link, "Timeout"):
            return Outcome.TIMEOUT
    return Outcome.PROVIDER_ERROR


def _chain(error: BaseException) -> list[BaseException]:
    links = [error]
    while len(links) < _CHAIN_DEPTH:
        cause = links[-1].__cause__ or links[-1].__context__
        if cause is None or cause in links:
            break
        links.append(cause)
    return links


def _status_code(error: BaseException) -> int | None:
    for holder in (error, getattr(error, "response", None)):
        code = getattr(holder, "status_code", None)
        if isinstance(code, int):
            return code
    return None


def _named(error: BaseException, fragment: str) -> bool:
    return any(fragment in kind.__name__ for kind in type(error).__mro__)
