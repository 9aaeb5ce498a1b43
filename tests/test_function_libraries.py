"""Each admitd version loads a function library of its own into Redis; a replica deletes
the libraries of other admitd versions once nobody calls them (``libraries.py``), never its
own, never a library that is not admitd's, and a replica whose library went loads it again.
"""

from __future__ import annotations

import logging

import pytest
import redis.asyncio as aioredis

from admitd import ManualClock
from admitd._backends.errors import LeaseGone
from admitd._backends.redis import Lanes, RedisBackend
from admitd._backends.redis.libraries import EVERY, IDLE, Pruner, prune
from admitd._backends.redis.scripts import function_library
from admitd._usage import Unreported
from support.polling import until
from support.redis_server import RedisServer

OLD = "admitd_0123456789abcdef"
"""A version from before libraries could say when they last ran."""
OTHER = "admitd_ffffffffffffffff"
"""A version that can: this version's code under another name."""
OWN = function_library()


def _old(name: str) -> str:
    return f"#!lua name={name}\nredis.register_function('{name}_acquire', function() return 1 end)"


async def _names(client: aioredis.Redis) -> set[str]:
    return {entry[1].decode() for entry in await client.function_list()}


async def _run(client: aioredis.Redis, library: str, at: float) -> None:
    """An operation of ``library`` at ``at``: a Release of a lease nobody has."""
    args = ("{t}", repr(at), "10", "no-such-lease", "", "", "0", "0", "")
    await client.fcall(f"{library}_release", 1, *args)


async def test_other_versions_libraries_go_once_idle_and_nothing_else_does(
    redis_server: RedisServer,
) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    for code in (
        OWN.code,
        OWN.code.replace(OWN.name, OTHER),
        _old(OLD),
        _old("admitd_by_hand"),  # not a digest: not admitd's naming, kept
        _old("mylib"),
    ):
        await client.function_load(code)
    start = 1_767_225_600.0
    await _run(client, OTHER, start)

    assert await prune(client, OWN.name, repr(start + IDLE - 1)) == [OLD]
    assert await _names(client) == {OWN.name, OTHER, "admitd_by_hand", "mylib"}
    await _run(client, OTHER, start + 10)  # used again: idle counts from its last call
    assert await prune(client, OWN.name, repr(start + 10 + IDLE - 1)) == []
    assert await prune(client, OWN.name, repr(start + 10 + IDLE)) == [OTHER]
    assert await _names(client) == {OWN.name, "admitd_by_hand", "mylib"}
    await client.aclose()


async def test_a_replica_looks_at_its_first_heartbeat_and_reloads_its_own_library(
    redis_server: RedisServer,
) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    await client.function_load(_old(OLD))
    backend = RedisBackend(
        aioredis.Redis.from_url(redis_server.url), key_prefix="t", aging=10, clock=ManualClock()
    )
    await backend.beat(5.0)

    async def gone() -> bool:
        return OLD not in await _names(client)

    await until(gone, 5.0, "the old version's library deleted")
    # A replica whose library another version's replica deleted loads it again, and its
    # call runs (its answer: no such lease).
    for _ in range(2):
        with pytest.raises(LeaseGone):
            await backend.release("no-such-lease", Unreported.NOTHING, None)
        assert OWN.name in await _names(client)
        await client.function_delete(OWN.name)
    await backend.close()
    await client.aclose()


async def test_one_look_every_interval() -> None:
    pruner = Pruner(aioredis.Redis(), OWN.name, Lanes(1, 1.0))
    first = pruner.due(100.0, "")
    assert first is not None
    first.close()
    assert pruner.due(100.0 + EVERY - 1, "") is None
    later = pruner.due(100.0 + EVERY, "")
    assert later is not None
    later.close()


async def test_a_user_not_allowed_to_list_functions_is_told_once_and_admits_as_before(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    admin = aioredis.Redis.from_url(redis_server.url)
    await admin.function_load(_old(OLD))
    await admin.acl_setuser(
        "limited", enabled=True, passwords=["+secret"], keys=["*"], commands=["+@all", "-function"]
    )
    limited = aioredis.Redis.from_url(redis_server.url, username="limited", password="secret")
    pruner = Pruner(limited, OWN.name, Lanes(1, 1.0))
    look = pruner.due(0.0, "")
    assert look is not None
    with caplog.at_level(logging.WARNING, logger="admitd"):
        await look  # no error escapes
    assert "cannot delete the Redis function libraries" in caplog.text
    assert "no permissions to run the 'function|list' command" in caplog.text
    assert pruner.due(10 * EVERY, "") is None  # never asks again
    assert OLD in await _names(admin)
    await limited.aclose()
    await admin.aclose()
