"""The redis-py client the Redis backend talks through, and the short way its hot calls take
(:func:`call`)."""

from __future__ import annotations

from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import ConnectionPool
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import ConnectionError as RedisConnectionError

from ..._config import BackendConfig


def connect(config: BackendConfig) -> aioredis.Redis:
    """A client for the configured Redis (through Sentinel when sentinels are given), with
    short timeouts so that a dead or slow Redis fails calls fast instead of stalling them,
    and a pool that never runs out: ``Lanes`` lets ``pool_size`` calls at a time use it, the
    listener holds one more connection for grant messages, and heartbeats one more."""
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


async def call(pool: ConnectionPool, *command: str) -> Any:
    """One command on a connection of ``pool``, its reply as Redis sent it.

    Why not ``Redis.execute_command``: per call it wraps the command in a retry (which would
    run an Acquire's script twice after a timeout), records observability it has no
    listener for, looks up a reply callback, and sends through ``asyncio.wait_for`` (on
    Python 3.11, a task and a loop iteration of its own for every command). Here the command
    is packed once by hiredis and written straight to the socket: a few hundred bytes fit
    the transport's buffer, so there is no write to wait for, and a Redis that stops reading
    is caught by the reply's timeout (``socket_timeout``). The connection's own health check
    (``health_check_interval``), reconnection (with ``redis_connect_func``) and reply
    parsing are redis-py's, as for every other call.
    """
    # hiredis's stub types the command as a tuple of one item; any number is packed.
    packed = hiredis.pack_command(command)  # type: ignore[arg-type]
    connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        await connection.check_health()
        writer = connection._writer  # private: its public send is the wait_for above
        if writer is None or writer.transport.is_closing():
            await connection.disconnect(nowait=True)
            raise RedisConnectionError("Connection closed by the server before write")
        writer.write(packed)
        return await connection.read_response()
    finally:
        await pool.release(connection)
