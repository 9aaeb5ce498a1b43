"""The function libraries of other admitd versions, deleted once nobody calls them.

Each admitd version loads a library of its own into Redis (named by a digest of its code:
``scripts.function_library``), so every upgrade left the one before in Redis for good, with
what its functions keep between calls (decoded tickets and limits: up to a few MB). A
replica looks every :data:`EVERY` seconds for ``admitd_<digest>`` libraries other than its
own and deletes those whose functions have not run for :data:`IDLE` seconds, or which
cannot say (a version from before this check, or none of its functions has run since
Redis loaded it).

Deleting is always safe: a replica still running that version loads its library again at
its next call (``RedisBackend._call``, on "Function not found"), and what the library kept
was a cache. The idle wait only keeps two versions in use on one Redis (two deployments,
two key prefixes) from deleting each other's library at every look.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Coroutine
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from .client import UNREACHABLE
from .lanes import Lanes
from .scripts import IDLE_FUNCTION

log = logging.getLogger("admitd")

EVERY = 3600.0  # seconds between two looks by one replica
IDLE = 3600.0  # seconds without a call after which another version's library goes
_NAME = re.compile(r"admitd_[0-9a-f]{16}")  # as function_library names them


class Pruner:
    """When this replica looks (every :data:`EVERY` seconds of its clock, from its first
    heartbeat), on a connection of its ``lanes``; a failure never reaches an admission.

    Args:
        client: the backend's Redis client.
        own: this version's library, never deleted.
        lanes: who may use a connection when.
    """

    def __init__(self, client: aioredis.Redis, own: str, lanes: Lanes) -> None:
        self._client = client
        self._own = own
        self._lanes = lanes
        self._next = 0.0  # when to look next (the clock's wall time)

    def due(self, wall: float, now: str) -> Coroutine[Any, Any, None] | None:
        """The look to run in the background when one is due at ``wall`` (``now``: the
        time the scripts are given, "" for Redis TIME), else None."""
        if wall < self._next:
            return None
        self._next = wall + EVERY
        return self._look(now)

    async def _look(self, now: str) -> None:
        await self._lanes.take(admit=False)
        try:
            deleted = await prune(self._client, self._own, now)
        except ResponseError as error:  # NOPERM: a user without FUNCTION LIST or DELETE
            self._next = math.inf
            log.warning(
                "cannot delete the Redis function libraries of other admitd versions (%s);"
                " they stay in Redis until deleted by hand (FUNCTION DELETE)",
                error,
            )
            return
        except UNREACHABLE as error:
            log.info("could not look for unused admitd function libraries: %s", error)
            return
        finally:
            self._lanes.give()
        if deleted:
            log.info(
                "deleted the function libraries of other admitd versions unused for %.0f s: %s",
                IDLE,
                ", ".join(deleted),
            )


async def prune(client: aioredis.Redis, own: str, now: str) -> list[str]:
    """Delete the admitd libraries other than ``own`` idle for :data:`IDLE` seconds at
    ``now`` (Unix seconds as text; "" for Redis TIME); the names of those deleted."""
    deleted = []
    for entry in await client.function_list(library="admitd_*"):
        library = _fields(entry)
        name = library[b"library_name"].decode()
        if name == own or not _NAME.fullmatch(name):
            continue
        functions = {_fields(f)[b"name"].decode() for f in library[b"functions"]}
        asked = f"{name}_{IDLE_FUNCTION}"
        if asked in functions:
            idle = await client.fcall_ro(asked, 0, now)
            if idle is not None and float(idle) < IDLE:
                continue
        try:
            await client.function_delete(name)
        except ResponseError as error:
            if "Library not found" not in str(error):
                raise
            continue  # another replica deleted it first
        deleted.append(name)
    return deleted


def _fields(reply: list[Any]) -> dict[bytes, Any]:
    """A FUNCTION LIST entry (name, value, name, value, ...) as a dict."""
    return dict(zip(reply[::2], reply[1::2], strict=True))
