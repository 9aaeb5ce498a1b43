"""The Redis backend: state shared by every replica using one Redis and key prefix."""

from .backend import RedisBackend, connect
from .lanes import Lanes

__all__ = ["Lanes", "RedisBackend", "connect"]
