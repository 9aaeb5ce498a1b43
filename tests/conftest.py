"""Shared fixtures: a real admitd server on a socket (port 0) with a manual clock.

``BACKENDS`` lists every backend; the conformance scenarios run against each of them, each
test with a clean store.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
_SHARED_CACHE = ROOT.parent / "shared" / "tiktoken-cache"
if "TIKTOKEN_CACHE_DIR" not in os.environ and _SHARED_CACHE.is_dir():
    # Offline machines: genuine encoding files, under the names tiktoken's cache uses.
    os.environ["TIKTOKEN_CACHE_DIR"] = str(_SHARED_CACHE)

from harness import Harness, start_harness  # noqa: E402

BACKENDS = ["memory"]

MakeHarness = Callable[..., Awaitable[Harness]]


@pytest.fixture(params=BACKENDS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_harness(backend_kind: str) -> AsyncIterator[MakeHarness]:
    """``await make_harness(config_dict)`` starts a server with that config (YAML-shaped)."""
    started: list[Harness] = []

    async def make(config: dict[str, Any] | None = None) -> Harness:
        harness = await start_harness(config or {}, backend_kind)
        started.append(harness)
        return harness

    yield make
    for harness in started:
        await harness.close()
