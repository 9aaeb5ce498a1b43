"""The configuration: the settings model (``model.py``, its field types in ``fields.py``),
checks between entries (``checks.py``), loading YAML (``load.py``) and what a running server
applies live (``live.py``)."""

from .envoy import EnvoyConfig, EnvoyDomain
from .fields import validate_listen
from .load import ConfigError, load_config, parse_config
from .model import (
    EMBEDDED_DEFAULT,
    AuthConfig,
    BackendConfig,
    ClientConfig,
    LeaseConfig,
    PoolConfig,
    QueueConfig,
    Settings,
    TenantConfig,
    TLSConfig,
)

__all__ = [
    "EMBEDDED_DEFAULT",
    "AuthConfig",
    "BackendConfig",
    "ClientConfig",
    "ConfigError",
    "EnvoyConfig",
    "EnvoyDomain",
    "LeaseConfig",
    "PoolConfig",
    "QueueConfig",
    "Settings",
    "TLSConfig",
    "TenantConfig",
    "load_config",
    "parse_config",
    "validate_listen",
]
