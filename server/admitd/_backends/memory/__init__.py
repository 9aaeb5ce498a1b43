"""The in-memory backend: state in this process (one replica)."""

from .backend import MemoryBackend

__all__ = ["MemoryBackend"]
