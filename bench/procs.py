"""Start and stop the processes a scenario needs: admitd, echo, provider, redis, load.

Every server and every load generator is its own OS process. Children import the server
and client packages of *this* checkout (``server/`` and ``clients/python/`` first on
``PYTHONPATH``), so a bench run measures the code next to it, whatever the virtualenv's
editable install points at.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
_TIKTOKEN = ROOT.parent / "shared" / "tiktoken-cache"
_PORT_LINE = re.compile(rb"port (\d+)")


def env() -> dict[str, str]:
    out = dict(os.environ)
    if "TIKTOKEN_CACHE_DIR" not in out and _TIKTOKEN.is_dir():
        out["TIKTOKEN_CACHE_DIR"] = str(_TIKTOKEN)
    paths = [str(ROOT / "server"), str(ROOT / "clients" / "python"), str(ROOT)]
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [*paths, out.get("PYTHONPATH", "")]))
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (all its threads) from /proc; None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (threads of the same name summed; the main thread is
    ``main``), from /proc."""
    out: dict[str, float] = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            name = "main" if task.name == str(pid) else (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return out


def _drain(stream: IO[bytes], log: IO[bytes]) -> None:
    """Copy a child's remaining stdout to its log, so a full pipe never blocks the child."""
    for line in iter(stream.readline, b""):
        log.write(line)
    stream.close()


class Proc:
    """A child process that prints ``... port N`` once it listens; stopped with SIGINT.

    Construction only starts it; :meth:`ready` waits for the port (so several can start
    side by side).
    """

    def __init__(self, name: str, argv: list[str], workdir: Path) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=self._log, env=env(), cwd=ROOT
        )
        self.port = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    def ready(self, timeout: float = 60.0) -> Proc:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while not self.port and time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            found = _PORT_LINE.search(line)
            if found:
                self.port = int(found.group(1))
        if not self.port:
            self.stop()
            raise RuntimeError(f"{self.name} did not start; see {self.log_path}")
        threading.Thread(target=_drain, args=(self.process.stdout, self._log), daemon=True).start()
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, timeout: float = 30.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()


def ready(*procs: Proc) -> None:
    """Wait until every process listens; stop them all if one fails."""
    try:
        for proc in procs:
            proc.ready()
    except Exception:
        for proc in procs:
            proc.stop()
        raise


class Redis:
    """A throwaway redis-server without persistence (as tests/redis_server.py does)."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="bench-redis-", dir=workdir))
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(self.dir)]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
            time.sleep(0.02)
        client.close()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


def admitd(
    config: dict[str, Any],
    workdir: Path,
    name: str = "admitd",
    profile: Path | None = None,
    wait: bool = True,
) -> Proc:
    """One admitd replica serving ``config``, with its metrics port off and no drain delay.

    ``profile``: run it under :mod:`bench.profiled` (SIGUSR1 starts the profiler, SIGUSR2
    stops it and writes the pyinstrument session there).
    """
    config = {
        "drain_delay": 0,
        "shutdown_grace": 1,
        "observability": {"metrics_listen": None, "log_format": "text"},
        **config,
    }
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = [sys.executable, "-m", "admitd"]
    if profile is not None:
        argv = [sys.executable, "-m", "bench.profiled", str(profile)]
    argv += ["serve", "--config", str(path), "--listen", "127.0.0.1:0"]
    proc = Proc(name, argv, workdir)
    return proc.ready() if wait else proc


def echo(workdir: Path, wait: bool = True, name: str = "echo", *, park: bool = False) -> Proc:
    """The no-op echo server (:mod:`bench.echo`); ``park``: it holds every Acquire open."""
    argv = [sys.executable, "-m", "bench.echo"] + (["--park"] if park else [])
    proc = Proc(name, argv, workdir)
    return proc.ready() if wait else proc


def callgrind(out: Path) -> tuple[str, ...]:
    """valgrind's callgrind, as a command to run another under: it counts the CPU
    instructions of every thread, only while :func:`collect` has it on, into ``out``
    (:func:`instructions`). Counts do not move with the machine's load, as times do."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise RuntimeError("counting instructions needs valgrind (apt-get install valgrind)")
    return (valgrind, "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}")


def collect(pid: int, on: bool) -> None:
    """Switch counting on or off in the process ``pid`` runs under :func:`callgrind`."""
    toggle = "on" if on else "off"
    command = ["callgrind_control", "-i", toggle, str(pid)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def instructions(out: Path) -> int:
    """The instructions counted into ``out``, once its process has ended."""
    for line in out.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {out}")


def provider(workdir: Path) -> Proc:
    return Proc("provider", [sys.executable, "-m", "bench.provider"], workdir).ready()


def start_load(spec: dict[str, Any], workdir: Path, name: str) -> subprocess.Popen[bytes]:
    """A load-generator process running ``spec``; collect it with :func:`finish_load`."""
    spec_path = workdir / f"{name}.json"
    spec_path.write_text(json.dumps(spec))
    with (workdir / f"{name}.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "bench.load", str(spec_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env=env(),
            cwd=ROOT,
        )


def wait_ready(process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Block until a load process says ``ready`` (it then waits for :func:`go`)."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.strip() == b"ready":
            return
        if not line:
            break
    process.kill()
    process.wait(10)
    raise RuntimeError("load generator did not get ready; see its log")


def go(process: subprocess.Popen[bytes], epoch: float) -> None:
    """Start a ready load process; ``epoch`` (wall clock) is the run's zero time."""
    assert process.stdin is not None
    process.stdin.write(f"{epoch!r}\n".encode())
    process.stdin.flush()


def finish_load(process: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate(timeout=10)
        raise RuntimeError("load generator overran its time box") from None
    if process.returncode != 0:
        raise RuntimeError(f"load generator failed ({process.returncode}); see its log")
    result: dict[str, Any] = json.loads(out)
    return result
