"""Shared fixtures: a real admitd server on a socket (port 0) with a manual clock.

``BACKENDS`` (``support.parts``) lists every backend; the conformance scenarios run against
each of them, each test with a clean store. Helpers live in ``tests/support``; a test module
imports them from there, never from this file (pytest provides the fixtures by name).

Markers (``pyproject.toml``): ``redis`` and ``node`` say which outside part a test needs;
``support.plugin`` applies them from the fixtures a test uses (``shared_redis``,
``redis_server``, ``node``) and skips, or in CI fails, a test whose part is missing.
``slow`` marks the tests of many seconds, so ``pytest -m "not slow"`` is a quick loop.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from support import ROOT

_SHARED_CACHE = ROOT.parent / "shared" / "tiktoken-cache"
if "TIKTOKEN_CACHE_DIR" not in os.environ and _SHARED_CACHE.is_dir():
    # Offline machines: genuine encoding files, under the names tiktoken's cache uses.
    os.environ["TIKTOKEN_CACHE_DIR"] = str(_SHARED_CACHE)

from support import parts  # noqa: E402
from support.fuzz_server import Served  # noqa: E402
from support.harness import Harness, MakeHarness, Replicas, start_harness  # noqa: E402
from support.redis_server import RedisServer  # noqa: E402

pytest_plugins = ["support.plugin"]  # the redis and node markers


@pytest.fixture(params=parts.BACKENDS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def shared_redis() -> Iterator[RedisServer]:
    """One redis-server for the conformance suite; each test gets its own key prefix."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def backend_config(backend_kind: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """The ``backend:`` section giving this test a clean store."""
    if backend_kind == "memory":
        return {"kind": "memory"}
    server: RedisServer = request.getfixturevalue("shared_redis")
    return {"kind": "redis", "url": server.url, "key_prefix": f"t{next(_PREFIXES)}"}


_PREFIXES = itertools.count()


@pytest.fixture
def fuzz_server(backend_config: dict[str, Any]) -> Iterator[Served]:
    """The property tests' server (``support.fuzz_server``), one per backend, driven from sync
    hypothesis tests through its own event loop."""
    server = Served.fuzzing(backend_config)
    yield server
    server.close()


@pytest.fixture
async def make_harness(backend_config: dict[str, Any]) -> AsyncIterator[MakeHarness]:
    """``await make_harness(config_dict)`` starts a server with that config (YAML-shaped)."""
    started: list[Harness] = []

    async def make(config: dict[str, Any] | None = None) -> Harness:
        harness = await start_harness({"backend": backend_config, **(config or {})})
        started.append(harness)
        return harness

    yield make
    for harness in started:
        await harness.close()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A Redis of this test's own, which it may kill and restart."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
async def replicas(redis_server: RedisServer) -> AsyncIterator[Replicas]:
    """``await replicas(n, config)``: n admitd servers sharing one Redis and key prefix, on
    real time (Redis TIME), each with its own port and client."""
    started: list[Harness] = []
    prefix = f"r{next(_PREFIXES)}"

    async def start(count: int, config: dict[str, Any] | None = None) -> list[Harness]:
        backend = {"kind": "redis", "url": redis_server.url, "key_prefix": prefix}
        for _ in range(count):
            started.append(
                await start_harness({"backend": backend, **(config or {})}, manual_clock=False)
            )
        return started[-count:]

    yield start
    for harness in started:
        await harness.close()


@pytest.fixture
def node() -> str:
    """The ``node`` binary (Node.js 18+), with ``clients/node``'s npm packages installed."""
    path = shutil.which("node")
    assert path is not None, "check_available skips (in CI: fails) a node test without node"
    return path
