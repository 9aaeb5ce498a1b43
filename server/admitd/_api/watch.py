"""Live configuration: the config file is re-read when its content changes.

Polling the content (not inotify on the path) also sees Kubernetes' ConfigMap updates, which
swap a ``..data`` symlink instead of writing the file. A valid change is applied without a
restart (see :meth:`~admitd.Engine.apply`; ``_config/live.py`` says what waits for a
restart); an invalid one is refused with a log line and a metric, and the last good
configuration stays in force.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Literal

from .._config import ConfigError, load_config
from .._engine import Engine

log = logging.getLogger("admitd")

Outcome = Literal["unchanged", "applied", "invalid"]


class ConfigWatcher:
    def __init__(self, path: str | Path, engine: Engine) -> None:
        self.path = Path(path)
        self.engine = engine
        self._digest = self._read_digest()

    def _read_digest(self) -> bytes | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).digest()
        except OSError:
            return None  # mid-swap or removed: judged on the next look

    async def check(self) -> Outcome:
        """Apply the file if it changed since the last look.

        Raises:
            Unavailable: the store did not answer; the change is tried again next look.
        """
        digest = self._read_digest()
        if digest is None or digest == self._digest:
            return "unchanged"
        try:
            settings = load_config(self.path)
        except ConfigError as error:
            self._digest = digest  # an invalid file is reported once, not on every look
            log.error(
                "config change refused; the last good config stays in force",
                extra={"path": str(self.path), "problems": error.problems},
            )
            self.engine.telemetry.config_reload("invalid")
            return "invalid"
        needs_restart = await self.engine.apply(settings)
        self._digest = digest
        self.engine.telemetry.config_reload("applied")
        log.info("config applied", extra={"path": str(self.path)})
        if needs_restart:
            log.warning(
                "config changes that apply only after a restart", extra={"settings": needs_restart}
            )
        return "applied"
