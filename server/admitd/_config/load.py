"""Loading the configuration: YAML in, :class:`~admitd._config.Settings` out, and every problem
reported at once, each on one line that starts with its path in the file, e.g.
``pools[1].tokens_per_minute: Input should be greater than 0``. Problems found before there
are paths (bad YAML syntax, a key written twice, bytes that are not UTF-8) start with their
place instead: ``line 4, column 1: duplicate key 'listen' (first at line 1)``.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .access import AuthConfig, ClientConfig, TLSConfig
from .checks import cross_problems
from .envoy import EnvoyConfig, EnvoyDomain
from .fields import show
from .model import (
    AdaptiveConfig,
    BackendConfig,
    BreakerConfig,
    BudgetConfig,
    LeaseConfig,
    PoolConfig,
    Price,
    QueueConfig,
    Settings,
    TenantConfig,
    TierConfig,
    default_tenants,
)


class ConfigError(Exception):
    """A configuration that cannot be used; ``problems`` lists each, one line, path first."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(
            f"{source}: invalid configuration:\n" + "\n".join(f"  {p}" for p in problems)
        )


def parse_config(data: Any, source: str = "<config>") -> Settings:
    """Validate already-parsed YAML data (``None`` means an empty file).

    Raises:
        ConfigError: listing every problem found.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(source, [f"(top level): expected a mapping, got {show(data)}"])
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
    problems = [p for err in errors for p in _describe(err)]
    if not any(err["type"] == "value_error" and not err["loc"] for err in errors):
        # Field problems stop pydantic before the cross checks: run them on the raw data.
        defaults = {"tenants": [t.model_dump() for t in default_tenants()]}
        problems += cross_problems({**defaults, **data})
    raise ConfigError(source, problems)


ENVIRONMENT = {
    "ADMITD_REDIS_URL": ("backend", "url"),
    "ADMITD_REDIS_PASSWORD": ("backend", "password"),
}
"""Environment variables that override a field of the file: secrets stay out of it (and out
of a Kubernetes ConfigMap), e.g. set from a Secret."""


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate a YAML file, with the overrides of :data:`ENVIRONMENT` taken from
    ``environ`` (default ``os.environ``).

    Raises:
        ConfigError: listing every problem found, each with its path in the file.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, [f"(file): {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(source, [f"line {line}: not UTF-8 text"]) from None
    try:
        data = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError(source, [_describe_yaml(exc)]) from None
    return parse_config(_overridden(data, os.environ if environ is None else environ), source)


def _overridden(data: Any, environ: Mapping[str, str]) -> Any:
    if not isinstance(data, Mapping | None):
        return data  # parse_config says what is wrong with it
    data = dict(data or {})
    for variable, (section, field) in ENVIRONMENT.items():
        value = environ.get(variable)
        if value and isinstance(data.get(section, {}), Mapping):
            data[section] = {**data.get(section, {}), field: value}
    return data


class _Loader(yaml.SafeLoader):
    """A SafeLoader that rejects a key written twice (PyYAML silently keeps the last one,
    which would drop, say, a whole ``pools`` section without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            # Merge keys (<<) may legitimately be overridden; complex keys are not ours.
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = self.construct_object(key_node)
            if key in first_line:
                raise yaml.constructor.ConstructorError(
                    problem=f"duplicate key {key!r} (first at line {first_line[key]})",
                    problem_mark=key_node.start_mark,
                )
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def _describe_yaml(exc: yaml.YAMLError) -> str:
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None:
        return f"(yaml): {exc}"
    mark = exc.problem_mark
    text = f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
    if exc.context and exc.context_mark is not None:
        start = exc.context_mark
        text += f" ({exc.context} started at line {start.line + 1}, column {start.column + 1})"
    return text


# Sections whose entries are these models, to suggest field names for a misspelt key.
_SECTION_MODELS: dict[str, type[BaseModel]] = {
    "backend": BackendConfig,
    "lease": LeaseConfig,
    "queue": QueueConfig,
    "budget": BudgetConfig,
    "pools": PoolConfig,
    "tenants": TenantConfig,
    "tiers": TierConfig,
    "price": Price,
    "adaptive": AdaptiveConfig,
    "breaker": BreakerConfig,
    "tls": TLSConfig,
    "auth": AuthConfig,
    "clients": ClientConfig,
    "envoy": EnvoyConfig,
    "domains": EnvoyDomain,
}


def _describe(error: Any) -> list[str]:
    loc = tuple(error.get("loc", ()))
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    kind = str(error.get("type", ""))
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    value = error.get("input")
    if kind == "value_error" and not loc:
        # Cross checks name their own paths, one problem per line.
        return message.splitlines()
    if kind == "extra_forbidden":
        message = "unknown field" + _suggestion(loc)
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        message = f"expected a mapping, got {show(value)}"
    elif kind == "list_type":
        message = f"expected a list, got {show(value)}"
    elif kind == "too_short":
        message = message.replace(" after validation", "")
    elif kind.endswith(("_type", "_parsing")) or kind == "literal_error":
        message = f"{message}, got {show(value)}"
    return [f"{path or '(top level)'}: {message}"]


def _suggestion(loc: tuple[Any, ...]) -> str:
    sections = [part for part in loc[:-1] if isinstance(part, str)]
    model = _SECTION_MODELS.get(sections[-1]) if sections else Settings
    if model is None or not isinstance(loc[-1], str):
        return ""
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
