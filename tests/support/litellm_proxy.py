"""Real LiteLLM proxy processes (``litellm --config FILE --port N``) for the gateway tests.

The proxy runs from its own virtualenv, ``.venv-litellm`` (``scripts/install``; locked in
``requirements/litellm.txt``), where ``admitd-client[litellm]`` is installed as an operator
installs it. It starts offline: no model cost map download, and no master key (local
development only, as LiteLLM says). ``bench.litellm_teams`` is on its path, so a config may
name it as ``custom_auth`` to give keys a team without a database.

Start-up takes LiteLLM about 20 s of CPU: start every proxy a module needs first, then wait
for them (``ready``), and share them across the module's tests.
"""

from __future__ import annotations

import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from support import ROOT
from support.processes import child_env

VENV = ROOT / ".venv-litellm"
BINARY = VENV / "bin" / "litellm"
# Real seconds a proxy may take to answer its health check: LiteLLM's start-up is long, and
# much longer on a machine busy with other work.
START_TIMEOUT = 600.0
README = ROOT / "clients" / "README.md"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiteLLMProxy:
    """One proxy serving ``config`` (a dict written as its YAML file) on 127.0.0.1.

    ``env`` adds environment variables (e.g. those a config reads with ``os.environ/``).
    """

    def __init__(self, config: dict[str, Any] | str, env: dict[str, str] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="litellm-"))
        self.config_path = self.dir / "config.yaml"
        text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
        self.config_path.write_text(text)
        self.log_path = self.dir / "proxy.log"
        self._log = self.log_path.open("wb")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {
            **child_env(),
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
            "PYTHONPATH": str(ROOT),  # bench.litellm_teams
            "NO_PROXY": "127.0.0.1,localhost",  # the fake provider and admitd are local
            **(env or {}),
        }
        argv = [str(BINARY), "--config", str(self.config_path), "--host", "127.0.0.1"]
        self.process = subprocess.Popen(
            [*argv, "--port", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=environment,
            cwd=self.dir,
        )

    def ready(self, timeout: float = START_TIMEOUT) -> LiteLLMProxy:
        """Wait (bounded) until the proxy answers its liveness check."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.url}/health/liveliness", timeout=5):
                    return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the LiteLLM proxy did not start: {self.log()[-3000:]}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()


def team_key(team: str) -> str:
    """An API key of ``team`` for a proxy whose ``custom_auth`` is ``bench.litellm_teams``
    (which the proxy imports; the tests do not import the bench)."""
    return f"sk-team-{team}"


def readme_config() -> str:
    """The LiteLLM config of ``clients/README.md`` (the first YAML block of its LiteLLM
    section), exactly as written there."""
    text = README.read_text()
    section = text[text.index("### LiteLLM") :]
    start = section.index("```yaml\n") + len("```yaml\n")
    return section[start : section.index("```", start)]


def readme_env(provider_port: int, admitd_target: str) -> dict[str, str]:
    """What the README's config reads from the environment: admitd, and the two OpenAI
    projects' keys, with OpenAI's address pointing at the fake provider."""
    return {
        "ADMITD_TARGET": admitd_target,
        "OPENAI_API_BASE": f"http://127.0.0.1:{provider_port}/v1",
        "OPENAI_KEY_PROJECT_A": "sk-project-a",
        "OPENAI_KEY_PROJECT_B": "sk-project-b",
    }
