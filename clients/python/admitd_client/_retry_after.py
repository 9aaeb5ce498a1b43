"""A provider's retry-after hint, read from the exception its call raised.

Reported at release (``provider_retry_after``), the hint pauses the pool in admitd for every
caller, so the whole fleet waits for the provider instead of each process finding out with
a 429 of its own.

No SDK is imported: OpenAI's and Anthropic's ``APIStatusError`` subclasses and httpx's
``HTTPStatusError`` carry the HTTP response as ``error.response``, whose ``headers`` (an
``httpx.Headers``, or any mapping) are read case-insensitively, in the order OpenAI's SDK
reads them: ``retry-after-ms`` (milliseconds, sent by OpenAI), then ``retry-after`` as
seconds (fractions allowed), then ``retry-after`` as an HTTP date. Only a response with
status 429 (RFC 6585), 503 (RFC 9110 section 10.2.3) or Anthropic's 529 (overloaded)
counts, and wrapped errors are
followed through ``__cause__``/``__context__``. Other rate-limit headers (OpenAI's
``x-ratelimit-reset-*``) describe a quota window, not a pause, and are not read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any

from ._outcome import _chain, _status_code

_HINTED_STATUS = {429, 503, 529}
MAX_HINT = 86_400.0
"""A longer hint is taken as a day (admitd caps a pause further, at its own maximum)."""


def retry_after_for(error: BaseException | None, now: float) -> float | None:
    """Seconds the provider asked callers to wait, from a failed call's exception.

    Args:
        error: What the call raised (None: it did not fail).
        now: The wall-clock time, in seconds since the epoch (for an HTTP-date hint).

    Returns:
        The hint in seconds, or None when there is none (or it is already over).
    """
    if error is None:
        return None
    for link in _chain(error):
        if _status_code(link) not in _HINTED_STATUS:
            continue
        for holder in (getattr(link, "response", None), link):
            hint = parse_retry_after(getattr(holder, "headers", None), now)
            if hint is not None:
                return hint
    return None


def parse_retry_after(headers: Any, now: float) -> float | None:
    """The hint in HTTP response ``headers`` (a mapping; None when there are none)."""
    millis = _number(_header(headers, "retry-after-ms"))
    if millis is not None:
        return _bounded(millis / 1000)
    text = _header(headers, "retry-after")
    if text is None:
        return None
    seconds = _number(text)
    if seconds is not None:
        return _bounded(seconds)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # "-0000": UTC by RFC 5322's convention
        moment = moment.replace(tzinfo=UTC)
    return _bounded(moment.timestamp() - now)


def _header(headers: Any, name: str) -> str | None:
    if not isinstance(headers, Mapping):
        return None
    value = headers.get(name)  # httpx.Headers and the like look up case-insensitively
    if value is None:
        value = next((v for k, v in headers.items() if str(k).lower() == name), None)
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return value.strip() if isinstance(value, str) else None


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _bounded(seconds: float) -> float | None:
    if math.isnan(seconds) or seconds <= 0:
        return None
    return min(seconds, MAX_HINT)
