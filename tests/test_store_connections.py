"""Store calls wait for a connection instead of failing: at most ``backend.pool_size`` at
once, settling calls (Release, Renew, claims) before new admissions; an Acquire that waits
past ``backend.pool_timeout`` is refused SERVER_OVERLOADED and reserves nothing, and a
Release is never lost to load, not even when its caller gives up halfway.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from admitd._backends.redis import Lanes, RedisBackend
from admitd._backends.redis.client import Line
from admitd._errors import StoreBusy
from admitd._model import day_number
from admitd._requests import AcquireSpec
from support.harness import Harness, start_harness
from support.polling import until
from support.redis_server import RedisServer


async def test_settling_calls_go_before_admissions_and_each_lane_is_fifo() -> None:
    lanes = Lanes(1, admit_timeout=60.0)
    await lanes.take(admit=False)  # the only connection is busy
    order: list[str] = []

    async def call(name: str, admit: bool) -> None:
        await lanes.take(admit=admit)
        order.append(name)
        lanes.give()

    calls = (("admit-1", True), ("settle-1", False), ("admit-2", True), ("settle-2", False))
    tasks = [asyncio.ensure_future(call(name, admit)) for name, admit in calls]
    await until(_waiting(lanes, settling=2, admitting=2), 5.0, "four calls waiting")
    lanes.give()
    await asyncio.gather(*tasks)
    assert order == ["settle-1", "settle-2", "admit-1", "admit-2"]


async def test_an_admission_gives_up_after_its_bound_and_a_cancelled_waiter_holds_nothing() -> None:
    lanes = Lanes(1, admit_timeout=0.01)
    await lanes.take(admit=False)
    with pytest.raises(StoreBusy) as busy:
        await lanes.take(admit=True)
    assert busy.value.waited >= 0.01
    waiter = asyncio.ensure_future(lanes.take(admit=False))
    await until(_waiting(lanes, settling=1), 5.0, "a waiter")
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert lanes.waiting == (0, 0)
    lanes.give()  # nobody waits now: the connection is free again, once
    await lanes.take(admit=False)
    assert lanes.waiting == (0, 0)


def _waiting(lanes: Lanes, settling: int | None = None, admitting: int | None = None) -> Any:
    async def check() -> bool:
        settle, admit = lanes.waiting
        return (settling is None or settle >= settling) and (admitting in (None, admit))

    return check


_PREFIXES = itertools.count()


@pytest.fixture
async def one_connection(shared_redis: RedisServer) -> AsyncIterator[Callable[..., Any]]:
    """``await one_connection(pool_timeout)``: a replica on Redis with a single store
    connection, on real time."""
    started: list[Harness] = []

    async def start(pool_timeout: str) -> Harness:
        backend = {
            "kind": "redis",
            "url": shared_redis.url,
            "key_prefix": f"lanes{next(_PREFIXES)}",
            "pool_size": 1,
            "pool_timeout": pool_timeout,
        }
        config = {"backend": backend, "pools": [{"name": "p", "max_concurrency": 5}]}
        started.append(await start_harness(config, manual_clock=False))
        return started[-1]

    yield start
    for harness in started:
        await harness.close()


def lanes_of(h: Harness) -> Lanes:
    backend = h.engine.backend
    assert isinstance(backend, RedisBackend)
    return backend.lanes


async def test_an_acquire_finding_no_free_connection_is_refused_and_a_release_waits(
    one_connection: Callable[..., Any],
) -> None:
    h = await one_connection("50ms")
    lease = await h.acquire(input_tokens=10)
    lanes = lanes_of(h)
    await lanes.take(admit=False)  # someone else's store call holds the only connection
    failure = await h.fail(h.acquire(input_tokens=10))
    assert failure.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (failure.reason, failure.metadata["cause"]) == ("SERVER_OVERLOADED", "store_busy")
    assert failure.retry_after is not None
    assert failure.retry_after >= 0.05
    release = asyncio.ensure_future(h.release(lease.lease_id, usage=(4, 0)))
    await until(_waiting(lanes, settling=1), 10.0, "the release waiting for the connection")
    assert not release.done()
    lanes.give()  # then each settling call ahead of it (health pings) hands it on
    assert (await release).charged_tokens == 4
    pool = await h.pool("p")
    assert (pool.in_flight, pool.queued) == (0, 0)  # the refused Acquire reserved nothing


async def test_a_caller_that_leaves_while_its_acquire_waits_for_a_connection_leaves_nothing(
    one_connection: Callable[..., Any],
) -> None:
    h = await one_connection("60s")  # the caller's deadline ends its wait first
    lanes = lanes_of(h)
    await lanes.take(admit=False)
    failure = await h.fail(h.acquire(timeout=0.5, input_tokens=10))
    assert failure.code is grpc.StatusCode.DEADLINE_EXCEEDED
    await until(_waiting(lanes, admitting=0), 10.0, "the abandoned Acquire out of the line")
    lanes.give()
    pool = await h.pool("p")
    assert (pool.in_flight, pool.queued) == (0, 0)


async def test_a_grant_made_for_a_caller_that_left_while_the_script_ran_goes_back(
    one_connection: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    h = await one_connection("1s")
    backend = h.engine.backend
    assert isinstance(backend, RedisBackend)
    spec = AcquireSpec(tenant="a", pool="p", input_tokens=10)
    (ticket,), _ = await h.engine.requests.tickets(spec, deadline=None)
    # The function library loaded (else the first call is answered "Function not found" and
    # runs nothing), and the Line's connection made: the caller leaves once its script is
    # written and its reply awaited, not before.
    await backend._client.function_load(backend._library, replace=True)
    await h.pool("p")
    connection = backend._line._connection
    assert connection is not None
    reading, read = asyncio.Event(), connection.read_response

    async def read_response(*args: Any, **kwargs: Any) -> Any:
        reading.set()
        return await read(*args, **kwargs)

    monkeypatch.setattr(connection, "read_response", read_response)
    call = asyncio.ensure_future(backend.acquire(ticket, wait=False))
    await asyncio.wait_for(reading.wait(), 10)  # the script is on its way
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call

    async def given_back() -> bool:
        today = day_number(time.time())  # Redis TIME, on this host
        rows = await backend.usage([today - 1, today, today + 1])
        return any(row.calls == 1 and row.input_tokens == 0 for row in rows)

    await until(given_back, 10.0, "the grant released, charged nothing")
    pool = await h.pool("p")
    assert (pool.in_flight, pool.queued) == (0, 0)


@pytest.fixture
async def line(redis_server: RedisServer) -> AsyncIterator[Line]:
    """A Line on a client of its own, closed after the test."""
    client = aioredis.Redis.from_url(redis_server.url)
    line = Line(client.connection_pool)
    yield line
    await line.close()
    await client.aclose()


async def test_a_call_cancelled_before_it_is_sent_runs_nothing_and_leaves_no_reply_to_read(
    line: Line, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller can be cancelled while the Line connects again (the server closed its
    connection): its command never went out, so no reply may be handed to anyone (there
    is none, and the one a reader took for it would be another call's)."""
    await line.call("SET", "k", "0")  # the line keeps this connection
    connection = line._connection
    assert connection is not None
    await connection.disconnect()  # as a server that hung up leaves it
    connecting, forever = asyncio.Event(), asyncio.Event()

    async def slow_connect() -> None:
        connecting.set()
        await forever.wait()

    monkeypatch.setattr(connection, "connect", slow_connect)
    handed: list[asyncio.Future[Any]] = []
    call = asyncio.ensure_future(line.call("INCR", "k", later=handed.append))
    await asyncio.wait_for(connecting.wait(), 10)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert handed == []  # nothing sent: no reply for anyone to read
    monkeypatch.undo()
    assert await line.call("GET", "k") == b"0"  # INCR never ran; the line still works


async def test_the_calls_of_one_turn_go_out_in_one_write_each_answered_with_its_own_reply(
    line: Line, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calls made together share one write and one connection; Redis runs them in order,
    and each caller gets its own reply, an error reply included, without failing others."""
    await line.call("SET", "s", "text")
    connection = line._connection
    assert connection is not None
    assert connection._writer is not None
    writes: list[bytes] = []
    write = connection._writer.write

    def counted(data: bytes) -> None:
        writes.append(data)
        write(data)

    monkeypatch.setattr(connection._writer, "write", counted)
    calls = [line.call("INCRBY", "n", str(i)) for i in range(1, 51)]
    calls.insert(25, line.call("INCR", "s"))  # not an integer: an error reply
    replies = await asyncio.gather(*calls, return_exceptions=True)
    assert len(writes) == 1
    error = replies.pop(25)
    assert isinstance(error, ResponseError)
    assert replies == list(itertools.accumulate(range(1, 51)))  # each its own running sum


async def test_a_broken_connection_fails_every_call_awaiting_a_reply_and_the_next_connects(
    line: Line, redis_server: RedisServer
) -> None:
    """Once a connection breaks, its replies can no longer be paired with their calls: all
    the calls waiting on it fail (the store unreachable, to the backend), none is answered
    with another's reply, and the next call is sent on a new connection."""
    admin = redis_server.client()
    await line.call("SET", "k", "1")
    blocked = asyncio.ensure_future(line.call("BLPOP", "nothing", "0"))
    behind = asyncio.ensure_future(line.call("GET", "k"))

    async def blocking() -> bool:
        return any(c.get("cmd") == "blpop" for c in admin.client_list())

    await until(blocking, 10.0, "the BLPOP blocked in Redis")
    assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
    for call in (blocked, behind):
        with pytest.raises(RedisConnectionError):
            await call
    assert await line.call("GET", "k") == b"1"


async def test_a_call_made_while_the_line_connects_waits_for_the_handshake_to_end(
    line: Line,
) -> None:
    """The connection is open before its handshake is over (admitd's asks the server who it
    is there: ``failover.PrimaryWatch``); a call made while the Line connects again must not
    be sent, nor its reply read, until the handshake has read its own replies."""
    halfway, proceed = asyncio.Event(), asyncio.Event()
    asked: list[Any] = []

    async def handshake(conn: Any) -> None:
        await conn.on_connect()
        await conn.send_command("ECHO", "who")
        halfway.set()  # its question asked, its answer not read yet
        await proceed.wait()
        asked.append(await conn.read_response())

    await line.call("PING")
    connection = line._connection
    assert connection is not None
    await connection.disconnect()  # as a server that hung up leaves it
    connection.redis_connect_func = handshake  # type: ignore[assignment]
    first = asyncio.ensure_future(line.call("ECHO", "first"))
    await asyncio.wait_for(halfway.wait(), 10)
    second = asyncio.ensure_future(line.call("ECHO", "second"))
    await asyncio.sleep(0)  # the second call's turn, while the handshake waits
    proceed.set()
    assert list(await asyncio.gather(first, second)) == [b"first", b"second"]
    assert asked == [b"who"]
