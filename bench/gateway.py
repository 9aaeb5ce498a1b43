"""Real LiteLLM proxy processes (``litellm --config FILE --port N``), for the bench's LiteLLM
fleet and the gateway tests.

A proxy runs from its own virtualenv, ``.venv-litellm`` (``scripts/install``, locked in
``requirements/litellm.txt``), where ``admitd-client[litellm]`` is installed as an operator
installs it. It starts offline (no model cost map download) and without a master key (local
development only, as LiteLLM says). The repository root is on its path, so a config may name
``bench.litellm_teams.user_api_key_auth`` as its ``custom_auth``: keys with a team, and no
database.

Start-up takes LiteLLM about 20 s of CPU: start every proxy first, then wait for them all
(:meth:`LiteLLMProxy.ready`).
"""

from __future__ import annotations

import http.client
import random
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from bench import procs

VENV = procs.ROOT / ".venv-litellm"
BINARY = VENV / "bin" / "litellm"
# Real seconds a proxy may take to answer its health check: LiteLLM starts slowly, and much
# more slowly on a machine busy with other work.
START_TIMEOUT = 600.0


def free_port() -> int:
    """A free port below the kernel's ephemeral range (as tests/support/redis_server.py
    picks Redis's). LiteLLM binds its port only once it has started, up to minutes later: a
    port from the ephemeral range (what binding port 0 gives) would by then often be some
    other process's, a gRPC server's say, which binds with SO_REUSEPORT."""
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


class LiteLLMProxy:
    """One proxy serving ``config`` (a dict, or YAML text) on 127.0.0.1, its files in
    ``workdir``; ``env`` adds variables (e.g. what a config reads with ``os.environ/``)."""

    def __init__(
        self,
        config: dict[str, Any] | str,
        workdir: Path,
        name: str = "litellm",
        env: dict[str, str] | None = None,
    ) -> None:
        if not BINARY.is_file():
            raise RuntimeError(f"{BINARY} is missing: run scripts/install")
        self.name = name
        self.config_path = workdir / f"{name}.yaml"
        text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
        self.config_path.write_text(text)
        self.log_path = workdir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {
            **procs.env(),
            "PYTHONPATH": str(procs.ROOT),  # bench.litellm_teams; admitd_client is installed
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
            "NO_PROXY": "127.0.0.1,localhost",  # the provider and admitd are local
            **(env or {}),
        }
        argv = [str(BINARY), "--config", str(self.config_path), "--host", "127.0.0.1"]
        self.process = subprocess.Popen(
            [*argv, "--port", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=environment,
            cwd=workdir,
        )

    def ready(self, timeout: float = START_TIMEOUT) -> LiteLLMProxy:
        """Wait (bounded) until the proxy answers its liveness check."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.url}/health/liveliness", timeout=5):
                    return self
            except (http.client.HTTPException, OSError):  # URLError is an OSError
                time.sleep(0.5)
        self.stop()
        tail = self.log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"LiteLLM proxy {self.name} did not start: {tail}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()


def start(*proxies: LiteLLMProxy) -> None:
    """Wait until every proxy answers; stop them all if one does not."""
    try:
        for proxy in proxies:
            proxy.ready()
    except Exception:
        for proxy in proxies:
            proxy.stop()
        raise
