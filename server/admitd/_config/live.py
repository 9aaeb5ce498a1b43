"""Which settings a running server applies at once, and which wait for a restart."""

from __future__ import annotations

from .model import Settings

RESTART_ONLY = (
    "backend",
    "listen",
    "health_listen",
    "tls",
    "observability",
    "event_loop",
    "queue.aging",
)
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
