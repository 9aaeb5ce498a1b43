"""Real redis-server processes on free loopback ports, which tests may kill and restart, and
Sentinels watching them."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

import redis

from support import parts


def free_port() -> int:
    """A free port below the kernel's ephemeral range. A port from that range (what binding
    port 0 gives) can be taken while its server is down by a client's own connection attempt
    to it (TCP self-connect: the client's source port happens to equal the target), and then
    the restarted redis-server cannot bind it: a test that kills and restarts Redis failed so."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(10_000, max(10_001, low))
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError(
            "redis-server is not installed (Debian: apt-get install redis-server);"
            " the Redis tests need a real server"
        )
    return found


class RedisServer:
    """One ``redis-server`` with no persistence, on its own port and folder."""

    def __init__(self, port: int | None = None, *extra: str) -> None:
        self.port = port or free_port()
        self.extra = list(extra)
        self.dir = Path(tempfile.mkdtemp(prefix="admitd-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            redis_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            *self.extra,
        ]

    def start(self) -> Self:
        parts.require("redis")
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the server answers PING (a process start-up, not a wait for time)."""
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"redis-server on {self.port} exited") from None
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.02)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True)

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class Sentinel(RedisServer):
    """A redis-server in Sentinel mode watching the primary on ``primary_port`` as
    ``mymaster``, with a quick failover (down after 400 ms)."""

    def __init__(self, primary_port: int, quorum: int = 1) -> None:
        super().__init__()
        self.primary_port = primary_port
        self.quorum = quorum

    def command(self) -> list[str]:
        conf = self.dir / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"sentinel monitor mymaster 127.0.0.1 {self.primary_port} {self.quorum}\n"
            "sentinel down-after-milliseconds mymaster 400\n"
            "sentinel failover-timeout mymaster 3000\n"
        )
        return [redis_binary(), str(conf), "--sentinel"]

    def primary(self) -> int:
        """The port of the primary this Sentinel names now."""
        asked = ("SENTINEL", "get-master-addr-by-name", "mymaster")
        _host, port = self.client().execute_command(*asked)  # type: ignore[no-untyped-call]
        return int(port)

    def sees(self, *, replicas: int, sentinels: int) -> bool:
        """Whether this Sentinel knows that many replicas of the primary and other Sentinels
        (it must, to fail over with a quorum)."""
        client = self.client()
        found = [
            client.execute_command("SENTINEL", kind, "mymaster")  # type: ignore[no-untyped-call]
            for kind in ("REPLICAS", "SENTINELS")
        ]
        return [len(f) for f in found] == [replicas, sentinels]
