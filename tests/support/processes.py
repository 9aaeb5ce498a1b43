"""admitd replicas as real child processes (``python -m admitd serve``), which tests and the
soak script may SIGKILL, and what the OS says about them (RSS)."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from support import ROOT

_PORT_LINE = re.compile(rb"\(port (\d+)\)")


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    cache = ROOT.parent / "shared" / "tiktoken-cache"
    if "TIKTOKEN_CACHE_DIR" not in env and cache.is_dir():
        env["TIKTOKEN_CACHE_DIR"] = str(cache)  # offline machines: pre-seeded encodings
    return env


class AdmitdProcess:
    """One replica serving ``config`` on 127.0.0.1:<free port>; its log (stderr) goes to a
    file, read back with :meth:`log_lines`."""

    def __init__(self, config: dict[str, Any], name: str = "admitd", start_timeout: float = 60):
        self.dir = Path(tempfile.mkdtemp(prefix=f"{name}-"))
        full = {
            "drain_delay": 0,
            "shutdown_grace": 1,
            "observability": {"metrics_listen": None, "log_format": "json"},
            "overload": {"max_queue_delay": None},  # as support.harness: tests turn it on
            **config,
        }
        self.config_path = self.dir / "admitd.yaml"
        self.config_path.write_text(yaml.safe_dump(full, sort_keys=False))
        self.log_path = self.dir / "admitd.log"
        self._log = self.log_path.open("wb")
        argv = [sys.executable, "-m", "admitd", "serve", "--config", str(self.config_path)]
        self.process = subprocess.Popen(
            [*argv, "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=child_env(),
            cwd=ROOT,
        )
        self.port = self._read_port(start_timeout)

    def _read_port(self, timeout: float) -> int:
        """The port from the ``admitd listening on ... (port N)`` line (bounded wait)."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        buffer = b""
        fd = self.process.stdout.fileno()
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                buffer += chunk
                found = _PORT_LINE.search(buffer)
                if found:
                    return int(found.group(1))
            elif self.process.poll() is not None:
                break
        self.kill()
        raise RuntimeError(f"admitd did not start: {self.log_path.read_text()[-2000:]}")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_lines(self) -> list[str]:
        self._log.flush()
        return self.log_path.read_text(errors="replace").splitlines()

    def kill(self) -> None:
        """SIGKILL: no drain, no cleanup, as when a node dies."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait for the drain; SIGKILL if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()
        return self.process.returncode


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class Replica:
    """``python -m admitd serve`` on a given port, so that a restart can take the same one
    (``AdmitdProcess`` lets the OS choose). Start it, then ``wait_listening``."""

    def __init__(self, config: dict[str, Any], port: int) -> None:
        folder = Path(tempfile.mkdtemp(prefix="admitd-restart-"))
        path = folder / "admitd.yaml"
        path.write_text(yaml.safe_dump(config))
        self.log = (folder / "admitd.log").open("wb")
        argv = [sys.executable, "-m", "admitd", "serve", "--config", str(path)]
        self.process = subprocess.Popen(
            [*argv, "--listen", f"127.0.0.1:{port}"],
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=child_env(),
            cwd=ROOT,
        )
        self.started = time.monotonic()

    def wait_listening(self, timeout: float = 60) -> float:
        """Block until the replica says it listens; how long that took from its start."""
        assert self.process.stdout is not None
        deadline, seen = time.monotonic() + timeout, b""
        while time.monotonic() < deadline and not _PORT_LINE.search(seen):
            ready, _, _ = select.select([self.process.stdout], [], [], 0.1)
            if ready:
                chunk = os.read(self.process.stdout.fileno(), 4096)
                if not chunk:
                    raise RuntimeError("admitd exited before listening")
                seen += chunk
        if not _PORT_LINE.search(seen):
            raise RuntimeError("admitd did not start listening in time")
        return time.monotonic() - self.started

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.log.close()
