"""Live configuration: the config file is re-read when its content changes.

Polling the content (not inotify on the path) also sees Kubernetes' ConfigMap updates, which
swap a ``..data`` symlink instead of writing the file. A valid change is applied without a
restart (see :meth:`Engine.apply`); an invalid one is refused with a log line and a metric,
and the last good configuration stays in force.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ._config import Settings
from ._config_load import ConfigError, load_config

if TYPE_CHECKING:
    from ._engine import Engine  # the engine applies changes with live()

log = logging.getLogger("admitd")

Outcome = Literal["unchanged", "applied", "invalid"]

RESTART_ONLY = ("backend", "listen", "health_listen", "tls", "observability", "queue.aging")
"""Settings a running server keeps until it restarts: they bind ports, open connections or
shape state already in the store. Everything else applies live (see :func:`live`)."""


def live(old: Settings, new: Settings) -> tuple[Settings, list[str]]:
    """``new`` as a running server can apply it: the restart-only settings keep their old
    values. Also returns the names of those that changed (to be logged)."""
    changed = [name for name in RESTART_ONLY if _get(new, name) != _get(old, name)]
    update = {name: getattr(old, name) for name in RESTART_ONLY if "." not in name}
    update["queue"] = new.queue.model_copy(update={"aging": old.queue.aging})
    return new.model_copy(update=update), changed


def _get(settings: Settings, dotted: str) -> object:
    value: object = settings
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


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
