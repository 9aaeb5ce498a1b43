"""Fixtures of the client tests: the simulated provider the official SDKs talk to (one
process per module, its script and record reset for each test)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.client import FakeProvider


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeProvider]:
    fake = FakeProvider()
    yield fake
    fake.close()


@pytest.fixture
def fake(provider: FakeProvider) -> FakeProvider:
    provider.reset()
    return provider
