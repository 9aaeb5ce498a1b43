"""The ``admitd`` command line: check-config, status, and serve in a real subprocess."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from admitd._cli import main, render_status
from admitd.v1 import admission_pb2 as pb

TESTS = Path(__file__).resolve().parent
GOOD = TESTS / "configs" / "good"
BAD = TESTS / "configs" / "bad"
EXAMPLE = TESTS.parent / "examples" / "admitd.yaml"
# Generous bounds on real processes; a healthy run takes well under a second each.
STARTUP_TIMEOUT = 30.0
EXIT_TIMEOUT = 15.0


def test_check_config_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(EXAMPLE)]) == 0
    assert capsys.readouterr().out == f"{EXAMPLE}: OK (2 pools, 3 tenants)\n"
    assert main(["check-config", str(GOOD / "empty.yaml")]) == 0
    assert capsys.readouterr().out == f"{GOOD / 'empty.yaml'}: OK (1 pool, 1 tenant)\n"


def test_check_config_prints_every_problem(capsys: pytest.CaptureFixture[str]) -> None:
    path = BAD / "several_problems.yaml"
    expected = path.with_suffix(".expected").read_text().splitlines()
    assert len(expected) > 1
    assert main(["check-config", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"{path}: invalid configuration:",
        *(f"  {problem}" for problem in expected),
    ]


def test_check_config_of_a_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["check-config", str(tmp_path / "nope.yaml")]) == 1
    assert "(file): No such file or directory" in capsys.readouterr().err


def test_serve_refuses_a_bad_config(capsys: pytest.CaptureFixture[str]) -> None:
    path = BAD / "duplicate_pool.yaml"
    assert main(["serve", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"{path}: invalid configuration:",
        "  pools[2].name: duplicate 'openai/gpt-4o' (also pools[0])",
    ]


def test_serve_rejects_a_listen_without_port(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--listen", "localhost"])
    assert exited.value.code == 2
    assert "argument --listen: expected host:port, got 'localhost'" in capsys.readouterr().err


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port with a listening socket on it, so nothing else can bind it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@contextlib.contextmanager
def root_logging_kept() -> Iterator[None]:
    """Put back the root logger's handlers after an in-process ``admitd serve``: it replaces
    them with one on this test's captured stderr, which later tests would log to, closed."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_serve_on_a_busy_port_fails_clearly(
    capsys: pytest.CaptureFixture[str], busy_port: int
) -> None:
    with root_logging_kept():
        assert main(["serve", "--listen", f"127.0.0.1:{busy_port}"]) == 1
    assert f"admitd serve: cannot listen on 127.0.0.1:{busy_port}:" in capsys.readouterr().err


def test_status_of_a_dead_address(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        target = f"127.0.0.1:{sock.getsockname()[1]}"
        assert main(["status", "--target", target, "--timeout", "10"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"admitd status: cannot get status from {target}: UNAVAILABLE: ")


def test_health_of_a_dead_address(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{sock.getsockname()[1]}"
        assert main(["health", "--target", target, "--timeout", "5"]) == 1
    assert capsys.readouterr().err == f"admitd health: {target}: UNAVAILABLE\n"


def _limit(limit: float, value: float) -> pb.LimitStatus:
    return pb.LimitStatus(limit=limit, value=value)


def test_render_status_aligns_columns_and_shows_limits() -> None:
    status = pb.StatusResponse(
        pools=[
            pb.PoolStatus(
                name="openai/gpt-4o",
                in_flight=3,
                queued=12,
                concurrency=_limit(64, 3),
                tokens_per_minute=_limit(800_000, 799_000),
                usd_per_day=_limit(400, 1.5),
                limit_factor=1.0,
                circuit="closed",
            ),
            pb.PoolStatus(name="local"),
            pb.PoolStatus(
                name="azure", circuit="half_open", limit_factor=0.25, paused_for=Duration(seconds=7)
            ),
        ],
        tenants=[pb.TenantStatus(name="search", weight=4, tokens_per_day=_limit(5e6, 1234))],
        budget=pb.BudgetStatus(usd_per_day=_limit(500, 1.5)),
    )
    text = render_status(status)
    pools, tenants, budget = (block.splitlines() for block in text.split("\n\n"))
    assert pools[0].split() == [
        "POOL", "STATE", "IN-FLIGHT", "QUEUED", "CONCURRENCY", "TPM", "LEFT", "RPM", "LEFT",
        "TOKENS", "TODAY", "USD", "TODAY",
    ]  # fmt: skip
    assert pools[1].split() == [
        "openai/gpt-4o", "ok", "3", "12", "3/64", "799,000/800,000", "-", "-", "$1.50/$400.00",
    ]  # fmt: skip
    assert pools[2].split() == ["local", "ok", "0", "0", "-", "-", "-", "-", "-"]
    assert pools[3].split()[:2] == ["azure", "paused:7s,half-open,limits:0.25x"]
    assert tenants[1].split() == ["search", "4", "0", "0", "-", "-", "-", "1,234/5,000,000", "-"]
    assert budget[1].split() == ["global", "-", "$1.50/$500.00"]
    for block in (pools, tenants, budget):
        # Numbers are right-aligned, so every row of a table ends in the same column.
        assert len({len(line) for line in block}) == 1, block
    assert "DRAINING" not in text
    status.draining = True
    assert render_status(status).startswith("DRAINING: admitting nothing\n\n")


def _read_line(stream: object, timeout: float) -> str:
    """One line from a subprocess pipe, waiting at most ``timeout`` for it to start."""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)  # type: ignore[arg-type]
        if not selector.select(timeout):
            return ""
    return stream.readline()  # type: ignore[attr-defined, no-any-return]


def test_serve_health_status_and_sigterm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "admitd.yaml"
    config.write_text(
        "drain_delay: 0s\n"
        "observability: {metrics_listen: null}\n"
        "shutdown_grace: 1s\n"
        "pools:\n"
        "  - {name: openai/gpt-4o, max_concurrency: 8, tokens_per_minute: 100000}\n"
        "tenants:\n"
        "  - {name: search, weight: 4, tokens_per_day: 5000000}\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "admitd", "serve", "--config", str(config),
         "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        line = _read_line(proc.stdout, STARTUP_TIMEOUT)
        match = re.fullmatch(r"admitd listening on 127\.0\.0\.1:0 \(port (\d+)\)\n", line)
        assert match, f"unexpected first line {line!r}"
        target = f"127.0.0.1:{match.group(1)}"

        with grpc.insecure_channel(target) as channel:
            # types-grpcio-health-checking declares the stub without its methods.
            health: Any = health_pb2_grpc.HealthStub(channel)
            for service in ("", "admitd.v1.Admission"):
                reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
            services = ProtoReflectionDescriptorDatabase(channel).get_services()
            assert "admitd.v1.Admission" in services

        assert main(["health", "--target", target]) == 0
        assert capsys.readouterr().out == f"{target}: SERVING\n"
        assert main(["status", "--target", target]) == 0
        rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()
                if line.strip()}  # fmt: skip
        assert rows["openai/gpt-4o"][1:5] == ["ok", "0", "0", "0/8"]
        assert rows["openai/gpt-4o"][5] == "100,000/100,000"
        assert rows["search"][1:4] == ["4", "0", "0"]
        assert rows["search"][-2] == "0/5,000,000"

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=EXIT_TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        _, stderr = proc.communicate(timeout=EXIT_TIMEOUT)
    assert "Traceback" not in stderr, stderr
