"""admitd: a gRPC admission-control service for LLM calls.

The pieces a program embedding or testing admitd needs are re-exported here; everything
else is private (``_module.py``) and may change.
"""

from ._api.server import AdmitdServer, serve
from ._backends import Backend
from ._backends.memory import MemoryBackend
from ._clock import Clock, ManualClock, SystemClock
from ._config import EMBEDDED_DEFAULT, ConfigError, Settings, load_config, parse_config
from ._engine import Engine
from ._errors import (
    AdmitdError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Reason,
    Rejected,
    Unavailable,
)
from ._requests import AcquireSpec
from ._usage import Usage

__version__ = "0.1.0"

__all__ = [
    "EMBEDDED_DEFAULT",
    "AcquireSpec",
    "AdmitdError",
    "AdmitdServer",
    "Backend",
    "Clock",
    "ConfigError",
    "Engine",
    "InvalidArgument",
    "ManualClock",
    "MemoryBackend",
    "NotFound",
    "PermissionDenied",
    "Reason",
    "Rejected",
    "Settings",
    "SystemClock",
    "Unavailable",
    "Usage",
    "__version__",
    "load_config",
    "parse_config",
    "serve",
]
