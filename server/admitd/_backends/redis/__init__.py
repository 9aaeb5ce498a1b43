"""The Redis backend: state shared by every replica using one Redis and key prefix."""

from .backend import RedisBackend, connect

__all__ = ["RedisBackend", "connect"]
