"""The redis-py client the Redis backend talks through, and the short way its hot calls take
(:func:`call`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from ..._config import BackendConfig


def connect(config: BackendConfig) -> aioredis.Redis:
    """A client for the configured Redis (through Sentinel when sentinels are given), with
    short timeouts so that a dead or slow Redis fails calls fast instead of stalling them,
    and a pool that never runs out: ``Lanes`` lets ``pool_size`` calls at a time use it, the
    listener holds one more connection for grant messages, and heartbeats one more; the
    backend keeps the connections its scripts used (``Line``), at most ``pool_size`` and the
    heartbeat's, so the pool may hold that many more (it opens them only when needed)."""
    options: dict[str, Any] = {
        # redis-py's pool fails a call at once when every connection is busy ("Too many
        # connections"): Lanes keeps the calls in flight within it instead.
        "max_connections": 2 * config.pool_size + 3,
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
    """The connections of ``pool`` the backend's script calls use (every admission makes
    two), kept here between calls instead of taken from the pool and given back on each.

    Why: redis-py's pool takes its lock, records observability it has no listener for and
    polls the socket for stray data on every checkout, and takes its lock again on every
    release, about as much as the rest of the call. A connection here is one the ``Lanes``
    let a call use (or the heartbeat's, which goes outside them), so at most ``pool_size`` + 1
    exist; they stay counted as in use by the pool, which is sized for them and for
    ``pool_size`` calls of other kinds (``connect``).
    """

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._idle: list[AbstractConnection] = []

    async def call(
        self, *command: str, later: Callable[[asyncio.Task[Any]], None] | None = None
    ) -> Any:
        """One command, its reply as Redis sent it. A caller cancelled once the command is
        sent hands the reply's reading to a task and ``later`` (without it, the connection
        is dropped, as redis-py does): the command runs in Redis anyway, and what it did
        must still be known to someone.

        Why not ``Redis.execute_command``: per call it wraps the command in a retry (which
        would run an Acquire's script twice after a timeout), records observability, looks up
        a reply callback, and sends through ``asyncio.wait_for`` (on Python 3.11, a task and
        a loop iteration of its own for every command). Here the command is packed by
        hiredis and written straight to the socket: a few hundred bytes fit the transport's
        buffer, so there is no write to wait for, and a Redis that stops reading is caught
        by the reply's timeout (``socket_timeout``). Reconnecting (with its
        ``redis_connect_func``), the idle connection's health check and reply parsing are
        redis-py's, as for every other call.
        """
        # hiredis's stub types the command as a tuple of one item; any number is packed.
        packed = hiredis.pack_command(command)  # type: ignore[arg-type]
        if self._idle:
            connection = self._idle.pop()
        else:
            connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        kept = True  # whether the connection goes back to _idle here (else: _rest's)
        sent = False
        try:
            # Connected, and not closed by the server meanwhile (a failover's proxy, a
            # restart), as the pool makes sure on a checkout: else it connects again.
            await self._pool.ensure_connection(connection)
            await connection.check_health()  # type: ignore[no-untyped-call]
            writer = connection._writer  # private: its public send is the wait_for above
            if writer is None or writer.transport.is_closing():
                await connection.disconnect(nowait=True)
                raise RedisConnectionError("Connection closed by the server before write")
            writer.write(packed)
            sent = True
            # Not dropped on cancellation (disconnect_on_error): hiredis keeps what it has
            # read of a reply, so a task can read the rest.
            return await connection.read_response(disconnect_on_error=False)
        except asyncio.CancelledError:
            # Only a command sent has a reply to read; one cancelled before (while the
            # connection was made or health-checked) never ran, and the reply on the wire,
            # if any, is the health check's.
            if later is not None and sent and connection.is_connected:
                kept = False
                later(asyncio.ensure_future(self._rest(connection)))
            else:
                await connection.disconnect(nowait=True)
            raise
        except ResponseError:
            raise  # Redis's answer, read whole: the connection is fine
        except BaseException:
            await connection.disconnect(nowait=True)  # a reply half read or not at all
            raise
        finally:
            if kept:
                self._idle.append(connection)

    async def _rest(self, connection: AbstractConnection) -> Any:
        try:
            return await connection.read_response()
        finally:
            self._idle.append(connection)
