"""The pytest hooks that apply and enforce the ``redis`` and ``node`` markers
(:mod:`support.parts`); ``tests/conftest.py`` loads this plugin."""

from __future__ import annotations

from collections.abc import Generator

import pytest

from support import parts


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    parts.mark_by_fixtures(items)


@pytest.hookimpl(tryfirst=True)  # before the fixtures start what is missing
def pytest_runtest_setup(item: pytest.Item) -> None:
    parts.check_available(item)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    with parts.running(item):
        return (yield)
