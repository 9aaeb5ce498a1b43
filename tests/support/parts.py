"""The parts outside Python that some tests need, and the markers that select them.

- ``redis``: the test starts redis-server (``bash scripts/setup_system.sh`` installs it).
- ``node``: the test runs Node.js and the npm packages of ``clients/node``
  (``bash scripts/setup_node.sh`` installs them).
- ``litellm``: the test starts LiteLLM proxies from ``.venv-litellm`` (``scripts/install``
  makes it).

A test gets these markers without asking: the ``redis`` case of :data:`BACKENDS` carries
one, and so does every test using a fixture named in :data:`FIXTURE_PARTS`
(:func:`mark_by_fixtures`). A test that starts a redis-server by itself must say
``@pytest.mark.redis``: :func:`require` fails it otherwise, so ``-m "not redis"`` can never
select a test that needs Redis.

A missing part skips the tests that need it, saying how to install it; in CI (``CI=true``)
it fails them instead, because CI must never skip (:func:`check_available`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from support import ROOT

# The conformance suite's backends; the Redis case is marked so that -m "not redis" keeps
# the memory case of every conformance test.
BACKENDS: list[Any] = ["memory", pytest.param("redis", marks=pytest.mark.redis)]

# Fixtures that start redis-server or hand out node: a test using one (directly or through
# another fixture) gets the part's marker.
FIXTURE_PARTS = {
    "shared_redis": "redis",
    "redis_server": "redis",
    "node": "node",
    "litellm_proxies": "litellm",
}

NODE_MODULES = ROOT / "clients" / "node" / "node_modules"
LITELLM = ROOT / ".venv-litellm" / "bin" / "litellm"

_running: list[pytest.Item] = []


def in_ci() -> bool:
    """Whether this is a CI run (most CI systems set ``CI=true``)."""
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def missing(part: str) -> str | None:
    """What is missing for ``part`` and how to install it, or None when it is all there."""
    if part == "redis":
        if shutil.which("redis-server") is None:
            return (
                "redis-server is not on PATH: run `bash scripts/setup_system.sh` (as root it"
                " installs Debian's redis-server with apt-get), or leave these tests out with"
                " -m 'not redis'"
            )
        return None
    if part == "node":
        absent = [] if shutil.which("node") else ["node (Node.js 18+) is not on PATH"]
        if not (NODE_MODULES / "@grpc" / "grpc-js").is_dir():
            absent.append("clients/node/node_modules is missing")
        if absent:
            return (
                f"{' and '.join(absent)}: run `bash scripts/setup_node.sh` (as root it installs"
                " Debian's nodejs and npm with apt-get; then it runs `npm ci --prefix"
                " clients/node`), or leave these tests out with -m 'not node'"
            )
        return None
    if part == "litellm":
        if not LITELLM.is_file():
            return (
                ".venv-litellm (the LiteLLM proxy, requirements/litellm.txt) is missing: run"
                " `bash scripts/install`, or leave these tests out with -m 'not litellm'"
            )
        return None
    raise ValueError(f"unknown part {part!r}")


def mark_by_fixtures(items: list[pytest.Item]) -> None:
    """Give every test the markers of the parts its fixtures start."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        for part in sorted({FIXTURE_PARTS[name] for name in names if name in FIXTURE_PARTS}):
            if item.get_closest_marker(part) is None:
                item.add_marker(part)


def check_available(item: pytest.Item) -> None:
    """Before a test's fixtures start: skip it (fail it in CI) when a part it needs is
    missing."""
    for part in ("redis", "node", "litellm"):
        if item.get_closest_marker(part) is None:
            continue
        problem = missing(part)
        if problem is None:
            continue
        if in_ci():
            pytest.fail(f"{problem} (CI=true: CI never skips a test)", pytrace=False)
        pytest.skip(problem)


@contextlib.contextmanager
def running(item: pytest.Item) -> Iterator[None]:
    """Remember the test being run (its setup, call and teardown), for :func:`require`."""
    _running.append(item)
    try:
        yield
    finally:
        _running.remove(item)


def require(part: str) -> None:
    """Called where ``part`` is started: the test running now must carry its marker.

    Outside pytest (``scripts/soak.py`` starts redis-server too) there is nothing to check.
    """
    if _running and _running[-1].get_closest_marker(part) is None:
        pytest.fail(
            f"{_running[-1].nodeid} starts {part} but is not marked {part}: add"
            f" @pytest.mark.{part} (or use a fixture that starts it) so that -m 'not {part}'"
            " leaves it out",
            pytrace=False,
        )
