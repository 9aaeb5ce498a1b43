"""A provider's retry-after, read from the exception a ``lease`` block ends with (or one it
records, or set by hand), reported at release: admitd then pauses the pool for everyone.

Against a real admitd (ManualClock: no time passes); the header parsing also on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from email.utils import format_datetime
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from admitd_client import AdmissionClient, AsyncAdmissionClient, Outcome, Reason, Rejected
from admitd_client._retry_after import MAX_HINT, parse_retry_after, retry_after_for
from support.client import GPT4, GPT4O, ProviderRateLimit, aio_channel, serve, sync_channel, target

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z


class Headers(Mapping[str, str]):
    """Shaped like httpx.Headers: a mapping whose lookups ignore case."""

    def __init__(self, items: dict[str, str]) -> None:
        self._items = {key.lower(): value for key, value in items.items()}

    def __getitem__(self, key: str) -> str:
        return self._items[key.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


class HTTPStatusError(Exception):
    """Shaped like httpx.HTTPStatusError: the status is only on ``response``."""

    def __init__(self, status: int, headers: Any) -> None:
        super().__init__(f"Server error '{status}'")
        self.response = SimpleNamespace(status_code=status, headers=headers)


def http_date(seconds_from_now: float) -> str:
    return format_datetime(datetime.fromtimestamp(NOW + seconds_from_now, UTC), usegmt=True)


@pytest.mark.parametrize(
    ("headers", "hint"),
    [
        ({"retry-after": "20"}, 20.0),
        ({"Retry-After": "1.5"}, 1.5),  # any case; fractions as OpenAI's SDK takes them
        ({"retry-after-ms": "250", "retry-after": "20"}, 0.25),  # the ms header first
        ({"retry-after": http_date(90)}, 90.0),
        ({"retry-after": "Thu, 01 Jan 2026 00:00:30 -0000"}, 30.0),  # no zone: UTC
        ({"retry-after": http_date(-5)}, None),  # already over
        ({"retry-after": "0"}, None),
        ({"retry-after": "-3"}, None),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": str(10 * MAX_HINT)}, MAX_HINT),
        ({"retry-after": b"7"}, 7.0),
        ({}, None),
        (Headers({"Retry-After-Ms": "1200"}), 1.2),
        (None, None),
        ([("retry-after", "5")], None),  # not a mapping: not read
    ],
)
def test_the_hint_in_the_headers(headers: Any, hint: float | None) -> None:
    assert parse_retry_after(headers, NOW) == hint


def test_the_hint_of_an_exception() -> None:
    assert retry_after_for(ProviderRateLimit(), NOW) == 20.0
    # httpx's HTTPStatusError: the status and headers are on the response only.
    assert retry_after_for(HTTPStatusError(429, Headers({"Retry-After": "3"})), NOW) == 3.0
    assert retry_after_for(HTTPStatusError(503, {"retry-after": "4"}), NOW) == 4.0
    # Other statuses' headers are not a pause the provider asked for.
    assert retry_after_for(HTTPStatusError(500, {"retry-after": "4"}), NOW) is None
    assert retry_after_for(ValueError("no response"), NOW) is None
    assert retry_after_for(None, NOW) is None
    # Wrapped (e.g. by the caller's own retry loop): found through __cause__.
    wrapped = RuntimeError("retries exhausted")
    wrapped.__cause__ = ProviderRateLimit({"retry-after": "9"})
    assert retry_after_for(wrapped, NOW) == 9.0
    # An exception carrying headers itself, with the status on it.
    own = HTTPStatusError(429, None)
    own.headers = {"retry-after": "2"}  # type: ignore[attr-defined]
    assert retry_after_for(own, NOW) == 2.0


async def test_a_429_with_retry_after_pauses_the_pool_for_everyone() -> None:
    async with serve() as h:
        channel, sent = aio_channel(target(h))
        assert h.clock is not None
        client = AsyncAdmissionClient(channel, tenant="a", wall=h.clock.wall)
        other = AsyncAdmissionClient(target(h), tenant="b")
        error = ProviderRateLimit({"Retry-After": http_date(12)})  # an HTTP date, 12 s on
        with pytest.raises(ProviderRateLimit):
            async with client.lease(pool=GPT4O, input_tokens=10) as lease:
                raise error
        assert (lease.outcome, lease.provider_retry_after) == (Outcome.PROVIDER_RATE_LIMITED, 12)
        release = sent.last("Release").request
        assert release.outcome == Outcome.PROVIDER_RATE_LIMITED
        assert release.provider_retry_after.ToTimedelta().total_seconds() == 12.0
        assert (await h.pool(GPT4O)).paused_for.ToTimedelta().total_seconds() == 12.0

        # Another tenant's next call is refused at once, for as long as the pause lasts.
        with pytest.raises(Rejected) as caught:
            await other.acquire(pool=GPT4O, input_tokens=10)
        rejected = caught.value
        assert rejected.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (rejected.reason, rejected.metadata["cause"]) == (Reason.POOL_UNAVAILABLE, "paused")
        assert rejected.retry_after == 12.0
        assert (await other.acquire(pool=GPT4, input_tokens=10)).pool == GPT4  # others: open

        await h.advance(12)  # the pause is over
        assert (await other.acquire(pool=GPT4O, input_tokens=10)).pool == GPT4O
        await other.close()
        await channel.close()


async def test_a_recorded_error_and_a_hint_set_by_hand() -> None:
    async with serve() as h:
        channel, sent = aio_channel(target(h))
        client = AsyncAdmissionClient(channel, tenant="a")
        # The code answers from elsewhere after the 429: the block ends well.
        async with client.lease(pool=GPT4O, input_tokens=10) as lease:
            try:
                raise ProviderRateLimit({"retry-after-ms": "2500"})
            except ProviderRateLimit as error:
                lease.record_error(error)
        release = sent.last("Release").request
        assert release.outcome == Outcome.PROVIDER_RATE_LIMITED
        assert release.provider_retry_after.ToTimedelta().total_seconds() == 2.5
        await h.advance(2.5)

        # A hint from somewhere no exception shows (a response header, a queue message).
        async with client.lease(pool=GPT4O, input_tokens=10) as lease:
            lease.provider_retry_after = 4
        release = sent.last("Release").request
        assert release.outcome == Outcome.OK
        assert release.provider_retry_after.ToTimedelta().total_seconds() == 4.0
        await h.advance(4)

        # Set by hand, it wins over the exception's; manual release reads the lease too.
        lease = await client.acquire(pool=GPT4O, input_tokens=10)
        lease.record_error(ProviderRateLimit())  # 20 s in its header
        lease.provider_retry_after = 1
        await client.release(lease)
        release = sent.last("Release").request
        assert release.outcome == Outcome.PROVIDER_RATE_LIMITED
        assert release.provider_retry_after.ToTimedelta().total_seconds() == 1.0
        await h.advance(1)

        # No hint anywhere: nothing is paused.
        with pytest.raises(ProviderRateLimit):
            async with client.lease(pool=GPT4O, input_tokens=10):
                raise ProviderRateLimit(headers={})
        assert not sent.last("Release").request.HasField("provider_retry_after")
        assert (await h.pool(GPT4O)).paused_for.ToTimedelta().total_seconds() == 0.0
        await channel.close()


async def test_the_blocking_client_reports_the_hint_too() -> None:
    async with serve() as h:

        def scenario() -> Rejected:
            channel, sent = sync_channel(target(h))
            client = AdmissionClient(channel, tenant="a")
            with pytest.raises(ProviderRateLimit), client.lease(pool=GPT4O, input_tokens=5):
                raise ProviderRateLimit({"retry-after": "30"})
            hint = sent.last("Release").request.provider_retry_after
            assert hint.ToTimedelta().total_seconds() == 30.0
            with pytest.raises(Rejected) as caught:
                client.acquire(pool=GPT4O, input_tokens=5)
            channel.close()
            return caught.value

        rejected = await asyncio.to_thread(scenario)
        assert (rejected.reason, rejected.metadata["cause"]) == (Reason.POOL_UNAVAILABLE, "paused")
        assert rejected.retry_after == 30.0
