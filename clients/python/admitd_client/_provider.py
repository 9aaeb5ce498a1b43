"""One provider call through admitd, retried outside the lease: the plan the SDK wrappers run.

Each attempt acquires a lease for the request, calls the provider once (its SDK's own
retries off) while the lease is renewed, and releases it: with the usage for a success,
and for a failure with the outcome and the provider's retry-after (admitd then pauses the
pool for every caller). A retryable failure (429, 529, 408, 409, 5xx, a timeout or a lost
connection, or whatever ``x-should-retry`` says) is retried up to the SDK client's own
``max_retries``, never by sleeping inside a lease: the next Acquire waits in admitd's
queue, and a refusal that says when to come back (``Rejected.retry_after``) is waited out,
all within ``wait_timeout``. Without a hint it backs off as the SDKs do (0.5 s doubling
to 8 s, less up to a quarter of jitter).

A provider that answered with an HTTP error billed nothing: that attempt is released with
zero usage. A streamed call is returned with its lease unreleased: the stream proxies
(``_streams``) record its events and release it when it ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ._core import Core
from ._effects import Invoke, Plan, Sleep
from ._errors import Rejected
from ._lease import Lease, LeaseArgs
from ._outcome import _chain, _named, _status_code
from ._retry_after import retry_after_for

log = logging.getLogger("admitd_client")

INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
_RETRY_STATUS = {408, 409, 429}


@dataclass(frozen=True)
class CallPolicy:
    """How a wrapped SDK call is admitted and retried.

    Attributes:
        max_retries: Retries after the first attempt (the SDK client's ``max_retries``).
        wait_timeout: Seconds the call may spend waiting for admission in all: in admitd's
            queue and for retry hints, across every attempt.
        args: Lease arguments besides the request (tenant, priority, labels, pool).
    """

    max_retries: int
    wait_timeout: float
    args: Mapping[str, Any]


def provider_call(
    core: Core,
    request: Mapping[str, Any],
    api: str,
    policy: CallPolicy,
    call: Callable[[], Any],
    stream: bool,
) -> Plan[tuple[Lease, Any]]:
    """Admit, call and (unless ``stream``) release, retrying as the module says.

    Returns the lease and what ``call`` returned; a streamed call's lease is still held.
    """
    deadline = core.wall() + policy.wait_timeout
    retries = 0
    while True:
        args: LeaseArgs = {**policy.args, "request": request, "api": api}  # type: ignore[typeddict-item]
        args["wait_timeout"] = max(0.0, deadline - core.wall())
        try:
            lease = yield from core.acquire(args, where="create")
        except Rejected as refused:
            hint = refused.retry_after
            if hint is None or core.wall() + hint > deadline:
                raise
            log.info("admitd refused %s for %.3fs (%s): waiting", api, hint, refused.reason)
            yield Sleep(hint)
            continue
        try:
            result = yield Invoke(call, lease)
        except Exception as error:
            if _http_status(error) is not None:
                lease.record(input_tokens=0, output_tokens=0)  # an error response bills nothing
            yield from core.settle(lease, error)
            hint = retry_after_for(error, core.wall())
            if retries >= policy.max_retries or not retryable(error):
                raise
            retries += 1
            if hint is not None and core.wall() + hint > deadline:
                raise
            if hint is None:  # admitd pauses the pool for a hint; without one, back off here
                yield Sleep(_backoff(retries, core.random()))
            log.info("%s failed (%s): retry %d through admitd", api, type(error).__name__, retries)
            continue
        if not stream:
            lease.record(result)
            yield from core.settle(lease, None)
        return lease, result


def retryable(error: BaseException) -> bool:
    """Whether the SDK itself would retry ``error``."""
    for link in _chain(error):
        headers = getattr(getattr(link, "response", None), "headers", None)
        should = headers.get("x-should-retry") if isinstance(headers, Mapping) else None
        if should in ("true", "false"):
            return bool(should == "true")
        status = _status_code(link)
        if status is not None:
            return status in _RETRY_STATUS or status >= 500
        if isinstance(link, TimeoutError) or _named(link, "APIConnectionError"):
            return True
    return False


def _http_status(error: BaseException) -> int | None:
    for link in _chain(error):
        status = _status_code(link)
        if status is not None:
            return status
    return None


def _backoff(retry: int, uniform: float) -> float:
    delay = min(INITIAL_RETRY_DELAY * 2.0 ** (retry - 1), MAX_RETRY_DELAY)
    return delay * (1 - 0.25 * uniform)
