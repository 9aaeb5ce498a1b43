"""The redis-py client the Redis backend talks through, and the short way its hot calls take
(:func:`call`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..._config import BackendConfig

UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
"""What a call raises when Redis cannot be reached or is too slow (``backend.timeout``)."""


def connect(config: BackendConfig) -> aioredis.Redis:
    """A client for the configured Redis (through Sentinel when sentinels are given), with
    short timeouts so that a dead or slow Redis fails calls fast instead of stalling them,
    and a pool that never runs out: ``Lanes`` lets ``pool_size`` calls at a time be in
    flight, the scripts' on the one connection the ``Line`` keeps, the others on one each;
    the listener holds one more for grant messages, and one is spare."""
    options: dict[str, Any] = {
        # redis-py's pool fails a call at once when every connection is busy ("Too many
        # connections"): Lanes keeps the calls in flight within it instead.
        "max_connections": config.pool_size + 3,
        "socket_timeout": config.timeout,
        "socket_connect_timeout": config.timeout,
        # A connection idle over a second is pinged (and reconnected) before use, so the
        # pooled connections a restarted Redis broke do not each fail one real call.
        "health_check_interval": 1,
    }
    if config.password is not None:
        options["password"] = config.password  # a password in the URL takes precedence
    if config.sentinels:
        hosts = [(h.rpartition(":")[0], int(h.rpartition(":")[2])) for h in config.sentinels]
        talk = {k: v for k, v in options.items() if k != "max_connections"}
        sentinel = Sentinel(hosts, sentinel_kwargs=talk, **options)
        client: aioredis.Redis = sentinel.master_for(config.sentinel_service)
        return client
    return aioredis.Redis.from_url(config.url, **options)


class Line:
    """The backend's script calls (every admission makes two), pipelined on one connection
    of ``pool`` kept here: the calls made in one turn of the event loop go out in one write,
    and Redis, which runs a connection's commands in order, answers them in one write too.

    Why: a call on a connection of its own cost a socket write, a wake-up of redis-server,
    a reply write and a wake-up of this process, each; under load (16-64 callers, measured
    with a one-line script) that was ~10 us of redis-server CPU and ~30 us of this
    process's per call, against ~2.5 and ~2 pipelined. And redis-py's pool takes its lock,
    records observability and polls the socket on every checkout. How many calls are in
    flight at once is still bounded by the backend's ``Lanes``; the connection stays
    counted as in use by the pool, which is sized for it (``connect``).

    A connection the server closed (a restart, a failover's proxy) is seen at the next call,
    which connects again first (with redis-py's ``redis_connect_func``); one that breaks or
    does not answer within ``socket_timeout`` while calls wait for their replies fails them
    all (the connection is then dropped: its replies can no longer be told apart).
    """

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._connection: AbstractConnection | None = None
        self._opening = asyncio.Lock()  # one connect at a time; the others wait for it
        self._unsent: list[bytes] = []  # packed commands of this turn, written by _flush
        self._sent: deque[_Call] = deque()  # calls awaiting their replies, in order
        self._reader: asyncio.Task[None] | None = None

    async def call(
        self, *command: str, later: Callable[[asyncio.Future[Any]], None] | None = None
    ) -> Any:
        """One command, its reply as Redis sent it (an error reply raised as redis-py's
        ``ResponseError``). A caller cancelled once the command is on its way hands its
        reply to ``later``: the command runs in Redis anyway, and what it did must still be
        known to someone. One cancelled before (while the connection was made) ran nothing.

        Why not ``Redis.execute_command``: per call it wraps the command in a retry (which
        would run an Acquire's script twice after a timeout), records observability, looks up
        a reply callback, and sends through ``asyncio.wait_for`` (on Python 3.11, a task and
        a loop iteration of its own for every command). Here the command is packed by hiredis
        and written straight to the socket: a few KB fit the transport's buffer, so there is
        no write to wait for, and a Redis that stops reading is caught by the replies'
        timeout. Connecting (with its ``redis_connect_func``) and reply parsing are
        redis-py's, as for every other call.
        """
        # hiredis's stub types the command as a tuple of one item; any number is packed.
        packed = hiredis.pack_command(command)  # type: ignore[arg-type]
        connection = self._connection
        # Not while it is being connected: it is open before its handshake is over.
        if connection is None or self._opening.locked() or not _open(connection):
            connection = await self._open()
        loop = asyncio.get_running_loop()
        if not self._unsent:
            loop.call_soon(self._flush, connection)
        self._unsent.append(packed)
        call = _Call(loop.create_future())
        self._sent.append(call)
        if self._reader is None:
            self._reader = asyncio.ensure_future(self._read(connection))
        try:
            return await call.reply
        except asyncio.CancelledError:
            if later is not None:
                later(call.hand_over(loop))
            raise

    async def _open(self) -> AbstractConnection:
        """The connection, connected: made now if it is not (or the server closed it)."""
        async with self._opening:
            connection = self._connection
            if connection is None:
                connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
                self._connection = connection
            if not _open(connection):
                reader = self._reader
                if reader is not None:  # the calls on it meet its end first
                    await asyncio.wait((reader,))
                connection._force_disconnect()  # private: what disconnect does, at once
                await connection.connect()
            return connection

    def _flush(self, connection: AbstractConnection) -> None:
        if not self._unsent:
            return  # the connection broke first: those calls were failed with it
        data = b"".join(self._unsent)
        self._unsent.clear()
        writer = connection._writer  # private: redis-py's public send awaits a drain
        # Closed since the calls were made (the server hung up within this turn): not
        # written; the reader meets the end of the connection and fails them.
        if writer is not None and not writer.transport.is_closing():
            writer.write(data)

    async def _read(self, connection: AbstractConnection) -> None:
        """Read replies while calls wait for them, each to the oldest call (FIFO: Redis runs
        one connection's commands in order). Each reply must come within the connection's
        ``socket_timeout``."""
        sent = self._sent
        try:
            while sent:
                try:
                    reply: Any = await connection.read_response(disconnect_on_error=False)
                except ResponseError as error:  # an error reply, read whole
                    reply = error
                sent.popleft().answer(reply)
        except Exception as error:  # broken, or no reply in time
            self._fail(connection, error)
        except asyncio.CancelledError:  # closing
            self._fail(connection, RedisConnectionError("closed with calls awaiting replies"))
            raise
        finally:
            if self._reader is asyncio.current_task():
                self._reader = None

    def _fail(self, connection: AbstractConnection, error: Exception) -> None:
        """The connection can no longer pair replies with calls: every call on it fails
        with ``error``, and the next call connects again."""
        self._unsent.clear()
        while self._sent:
            self._sent.popleft().answer(error)
        connection._force_disconnect()  # private: the public disconnect awaits the close

    async def close(self) -> None:
        """Stop reading (calls still awaiting replies fail)."""
        reader = self._reader
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


class _Call:
    """A call on its way: its caller awaits ``reply``; one that left hands it on."""

    __slots__ = ("reply", "rest")

    def __init__(self, reply: asyncio.Future[Any]) -> None:
        self.reply = reply
        self.rest: asyncio.Future[Any] | None = None

    def answer(self, reply: Any) -> None:
        """Redis's reply, or the error that stands for it (an exception instance)."""
        target = self.rest if self.reply.done() else self.reply
        if target is None or target.done():
            return  # its caller left and nobody wanted the reply
        if isinstance(reply, BaseException):
            target.set_exception(reply)
        else:
            target.set_result(reply)

    def hand_over(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Any]:
        """Its caller left: the future the reply goes to instead (already answered, when the
        reply came as the caller was cancelled)."""
        rest: asyncio.Future[Any] = loop.create_future()
        reply = self.reply
        if reply.done() and not reply.cancelled():
            error = reply.exception()
            if error is not None:
                rest.set_exception(error)
            else:
                rest.set_result(reply.result())
        else:
            self.rest = rest
        return rest


def _open(connection: AbstractConnection) -> bool:
    """Connected, and the server has not closed it since (seen by the event loop)."""
    reader, writer = connection._reader, connection._writer  # private: no public test
    return (
        reader is not None
        and writer is not None
        and not reader.at_eof()
        and not writer.transport.is_closing()
    )
