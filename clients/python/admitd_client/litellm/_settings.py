"""The integration's settings: ``callback_settings: admitd:`` in the proxy's config, and env.

Read once, when the callback first runs (LiteLLM sets ``litellm.callback_settings`` from the
config file before it loads callbacks). Every key is optional; a key this version does not
know, or a value of the wrong type, is refused at start-up with its name, as LiteLLM itself
refuses a bad config: a typo must not silently leave a limit unenforced.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

TARGET_ENV = "ADMITD_TARGET"
API_KEY_ENV = "ADMITD_API_KEY"
DEFAULT_TARGET = "localhost:50051"
# LiteLLM's own convention for a secret in its config: "os.environ/NAME".
_ENV_PREFIX = "os.environ/"
_ON_UNAVAILABLE = ("fail_closed", "fail_open")


@dataclass(frozen=True)
class Settings:
    """How LiteLLM's calls map onto admitd.

    Attributes:
        target: admitd's ``host:port`` (env ``ADMITD_TARGET``; default localhost:50051).
        api_key: Sent as ``authorization: Bearer <key>`` when admitd has API keys (env
            ``ADMITD_API_KEY``; ``os.environ/NAME`` reads another variable).
        pools: The admitd pool of a deployment, by its ``model_info.id``, its
            ``litellm_params.model`` or its ``model_name`` (looked up in that order).
            Unlisted: the deployment's ``litellm_params.model``, e.g. ``openai/gpt-4o``.
        tenants: The admitd tenant of a LiteLLM team (by alias or id) or key (by alias).
            Unlisted: that name itself.
        default_tenant: The tenant of a call with neither team nor key alias.
        max_wait: Seconds a call may wait in admitd's queue, at most (the request's own
            timeout also bounds it). 0: refuse at once when the call does not fit now.
        timeout: Deadline in seconds of each admitd RPC (the wait comes on top).
        on_unavailable: ``fail_closed`` refuses calls (503) while admitd cannot be
            reached; ``fail_open`` lets them through unadmitted (and logs a warning).
        model_groups: Admit only these model groups (``model_name``); None: every one.
    """

    target: str = DEFAULT_TARGET
    api_key: str | None = None
    pools: Mapping[str, str] = field(default_factory=dict)
    tenants: Mapping[str, str] = field(default_factory=dict)
    default_tenant: str = "default"
    max_wait: float = 30.0
    timeout: float = 10.0
    on_unavailable: str = "fail_closed"
    model_groups: frozenset[str] | None = None

    def admits(self, model_group: object) -> bool:
        """Whether calls to this model group go through admitd."""
        return self.model_groups is None or model_group in self.model_groups


_STRINGS = ("target", "api_key", "default_tenant", "on_unavailable")
_MAPS = ("pools", "tenants")
_SECONDS = ("max_wait", "timeout")
KEYS = (*_STRINGS, *_MAPS, *_SECONDS, "model_groups")


def load(given: Mapping[str, Any] | None, environ: Mapping[str, str] = os.environ) -> Settings:
    """Settings from the ``admitd`` entry of ``callback_settings`` and the environment.

    Raises:
        ValueError: An unknown key, or a value of the wrong type; the message names it.
    """
    given = dict(given or {})
    unknown = sorted(set(given) - set(KEYS))
    if unknown:
        raise ValueError(
            f"callback_settings.admitd: unknown key {unknown[0]!r} (known: {', '.join(KEYS)})"
        )
    values: dict[str, Any] = {}
    for name in _STRINGS:
        if given.get(name) is not None:
            values[name] = _secret(name, _text(name, given[name]), environ)
    for name in _MAPS:
        if given.get(name) is not None:
            values[name] = _mapping(name, given[name])
    for name in _SECONDS:
        if given.get(name) is not None:
            values[name] = _seconds(name, given[name], positive=name == "timeout")
    if given.get("model_groups") is not None:
        groups = given["model_groups"]
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise ValueError("callback_settings.admitd.model_groups: a list of model names")
        values["model_groups"] = frozenset(groups)
    values.setdefault("target", environ.get(TARGET_ENV) or DEFAULT_TARGET)
    if "api_key" not in values and environ.get(API_KEY_ENV):
        values["api_key"] = environ[API_KEY_ENV]
    if values.get("on_unavailable", _ON_UNAVAILABLE[0]) not in _ON_UNAVAILABLE:
        raise ValueError(
            "callback_settings.admitd.on_unavailable: fail_closed or fail_open, not "
            f"{values['on_unavailable']!r}"
        )
    return Settings(**values)


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"callback_settings.admitd.{name}: a non-empty string, not {value!r}")
    return value


def _secret(name: str, value: str, environ: Mapping[str, str]) -> str:
    if not value.startswith(_ENV_PREFIX):
        return value
    variable = value[len(_ENV_PREFIX) :]
    if not environ.get(variable):
        raise ValueError(f"callback_settings.admitd.{name}: {variable} is not set")
    return environ[variable]


def _mapping(name: str, value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in value.items()
    ):
        raise ValueError(f"callback_settings.admitd.{name}: a mapping of names to names")
    return dict(value)


def _seconds(name: str, value: Any, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"callback_settings.admitd.{name}: seconds as a number, not {value!r}")
    if value < 0 or (positive and value == 0):
        bound = "positive" if positive else "0 or more"
        raise ValueError(f"callback_settings.admitd.{name}: {bound}, not {value!r}")
    return float(value)
