"""The configuration: the settings model (``model.py``, its field types in ``fields.py``, its
``tls:`` and ``auth:`` sections in ``access.py``, ``envoy:`` in ``envoy.py``), checks between
entries (``checks.py``), loading YAML (``load.py``) and what a running server applies live
(``live.py``)."""

from .access import AuthConfig, ClientConfig, TLSConfig
from .envoy import EnvoyConfig, EnvoyDomain
from .fields import validate_listen
from .load import ConfigError, load_config, parse_config
from .model import (
    EMBEDDED_DEFAULT,
    BackendConfig,
    LeaseConfig,
    PoolConfig,
    QueueConfig,
    Settings,
    TenantConfig,
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
