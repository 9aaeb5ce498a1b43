"""The redis-py client the Redis backend talks through."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel

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
