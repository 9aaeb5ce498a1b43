"""The test suite's own rules: helpers come from tests/support, and the ``redis`` and ``node``
markers select exactly the tests that need those parts (tests/support/parts.py).

The marker checks run small pytest sessions in this process (pytester) with the project's
marker list and plugin, and a PATH without redis-server; nothing is started.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

from support import ROOT

pytest_plugins = ["pytester"]

TESTS = ROOT / "tests"


def imported(path: Path) -> set[str]:
    """The top-level names of the modules ``path`` imports (relative imports as ``.``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." if node.level else (node.module or "").split(".")[0])
    return names


def test_no_test_module_imports_conftest_or_another_test_module() -> None:
    offenders = {}
    for path in sorted(TESTS.rglob("*.py")):
        bad = {n for n in imported(path) if n in ("conftest", ".") or n.startswith("test_")}
        if bad:
            offenders[str(path.relative_to(TESTS))] = sorted(bad)
    assert offenders == {}, "import helpers from tests/support instead"


def test_helpers_live_in_the_support_package() -> None:
    helpers = [
        str(path.relative_to(TESTS))
        for path in TESTS.rglob("*.py")
        if "support" not in path.parts and not path.name.startswith(("test_", "conftest"))
    ]
    assert helpers == []
    assert (TESTS / "support" / "__init__.py").is_file()


# -- the markers, in small sessions of their own ---------------------------------------------

STARTS_REDIS = """
import pytest
from support.redis_server import RedisServer

@pytest.fixture
def redis_server():
    server = RedisServer()
    yield server.start()
    server.stop()

def test_by_fixture(redis_server):
    assert redis_server.client().ping()

@pytest.mark.redis
def test_marked():
    server = RedisServer().start()
    server.stop()

def test_unmarked():
    RedisServer().start()

def test_no_redis():
    assert True
"""


@pytest.fixture
def session(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A pytester folder with this project's markers and plugin, on a PATH without
    redis-server or node, outside CI."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    markers = project["tool"]["pytest"]["ini_options"]["markers"]
    options = "--strict-markers -p no:asyncio -p support.plugin"
    pytester.makeini(f"[pytest]\naddopts = {options}\nmarkers =\n    " + "\n    ".join(markers))
    empty = pytester.mkdir("empty-bin")
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("CI", raising=False)
    pytester.makepyfile(test_parts=STARTS_REDIS)
    return pytester


def test_a_fixture_that_starts_redis_marks_its_tests(session: pytest.Pytester) -> None:
    result = session.runpytest("-m", "not redis", "-k", "not unmarked")
    result.assert_outcomes(passed=1, deselected=3)


def test_without_redis_server_a_redis_test_is_skipped_saying_how_to_install_it(
    session: pytest.Pytester,
) -> None:
    result = session.runpytest("-rs", "-k", "not unmarked")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["*redis-server is not on PATH: run `bash scripts/setup_sys*"])


def test_in_ci_a_missing_redis_server_fails(
    session: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    result = session.runpytest("-k", "not unmarked")
    result.assert_outcomes(passed=1, errors=2)  # failed in setup, before any fixture
    result.stdout.fnmatch_lines(["*redis-server is not on PATH*CI=true: CI never skips a test*"])


def test_a_test_starting_redis_unmarked_fails_saying_so(session: pytest.Pytester) -> None:
    result = session.runpytest("-k", "unmarked")
    result.assert_outcomes(failed=1, deselected=3)
    result.stdout.fnmatch_lines(["*test_unmarked starts redis but is not marked redis*"])
