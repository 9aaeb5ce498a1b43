"""From what LiteLLM knows about a call to what admitd is asked: pool, tenant, priority, the
provider request to reserve for, and how long the call may wait.

Pure functions over LiteLLM's dicts (no ``litellm`` import), so they are tested without it.
Where LiteLLM keeps each piece:

- the deployment the router picked: ``kwargs["model_info"]["id"]``, ``kwargs["model"]``
  (its ``litellm_params.model``), ``metadata["model_group"]`` (its ``model_name``); in a
  router deployment dict, ``model_info.id``, ``litellm_params.model`` and ``model_name``;
- who is calling: ``metadata["user_api_key_team_id"]``, ``["user_api_key_team_alias"]``,
  ``["user_api_key_alias"]`` (the proxy fills them in from the virtual key);
- the caller's own request metadata (``metadata`` in the request body) is merged into
  ``metadata``, or ``litellm_metadata`` on the Responses and Anthropic routes.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from .._models import Api
from .._outcome import Priority
from ._settings import Settings

# LiteLLM call types admitted, and the provider API their arguments follow. Other calls
# (embeddings, images, files, ...) go through unadmitted.
APIS: dict[str, Api] = {
    "acompletion": "openai.chat",
    "completion": "openai.chat",
    "aresponses": "openai.responses",
    "responses": "openai.responses",
    "anthropic_messages": "anthropic.messages",
    "aanthropic_messages": "anthropic.messages",
}
# The arguments the reservation is derived from (``admitd_client._reserve``).
_RESERVED = (
    "messages", "tools", "functions", "response_format", "n", "max_tokens",
    "max_completion_tokens", "input", "instructions", "text", "max_output_tokens", "system",
)  # fmt: skip
_PRIORITIES = {p.name: p for p in Priority}


def metadata(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The call's metadata: LiteLLM's and the caller's, from wherever the route keeps it."""
    merged: dict[str, Any] = {}
    for name in ("litellm_metadata", "metadata"):
        found = kwargs.get(name)
        if isinstance(found, Mapping):
            merged.update({k: v for k, v in found.items() if v is not None})
    return merged


def model_group(kwargs: Mapping[str, Any]) -> str | None:
    group = metadata(kwargs).get("model_group")
    return group if isinstance(group, str) else None


def pool_of_call(kwargs: Mapping[str, Any], settings: Settings) -> str:
    """The pool of the deployment a call was routed to."""
    info = kwargs.get("model_info")
    deployment_id = info.get("id") if isinstance(info, Mapping) else None
    return _pool(settings, deployment_id, str(kwargs.get("model", "")), model_group(kwargs))


def pool_of_deployment(deployment: Mapping[str, Any], settings: Settings) -> str:
    """The pool of one of the router's deployments (``model_list`` entries)."""
    info = deployment.get("model_info") or {}
    params = deployment.get("litellm_params") or {}
    model = str(params.get("model", ""))
    return _pool(settings, info.get("id"), model, deployment.get("model_name"))


def _pool(settings: Settings, deployment_id: Any, model: str, group: Any) -> str:
    for key in (deployment_id, model, group):
        if isinstance(key, str) and key in settings.pools:
            return settings.pools[key]
    return model


def tenant(kwargs: Mapping[str, Any], settings: Settings) -> str:
    """The caller's tenant: its team (alias, else id), else its key's alias, else the
    default; ``settings.tenants`` renames any of these."""
    found = metadata(kwargs)
    for key in ("user_api_key_team_alias", "user_api_key_team_id", "user_api_key_alias"):
        name = found.get(key)
        if isinstance(name, str) and name:
            return settings.tenants.get(name, name)
    return settings.default_tenant


def priority(kwargs: Mapping[str, Any]) -> Priority:
    """The request's ``metadata.priority``: critical, high, normal or low (or 1 to 4);
    anything else is NORMAL."""
    given = metadata(kwargs).get("priority")
    if isinstance(given, str):
        return _PRIORITIES.get(given.strip().upper(), Priority.NORMAL)
    if isinstance(given, int) and not isinstance(given, bool) and given in set(Priority):
        return Priority(given)
    return Priority.NORMAL


def provider_request(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments the reservation is derived from, with the model as the provider names
    it (``model_info.base_model``, else ``litellm_params.model`` less its provider prefix)."""
    info = kwargs.get("model_info")
    base = info.get("base_model") if isinstance(info, Mapping) else None
    model = base if isinstance(base, str) and base else str(kwargs.get("model", ""))
    request = {name: kwargs[name] for name in _RESERVED if kwargs.get(name) is not None}
    request["model"] = model.partition("/")[2] or model
    return request


def wait_timeout(kwargs: Mapping[str, Any], settings: Settings, now: float) -> float:
    """Seconds the call may wait in admitd's queue: ``settings.max_wait``, cut to what is
    left of the request's own timeout (``now``: the wall clock, as LiteLLM stamps times)."""
    wait = settings.max_wait
    timeout = kwargs.get("timeout")
    if isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > 0:
        started = getattr(kwargs.get("litellm_logging_obj"), "start_time", None)
        elapsed = now - started.timestamp() if isinstance(started, datetime.datetime) else 0.0
        wait = min(wait, float(timeout) - max(0.0, elapsed))
    return max(0.0, wait)


def labels(kwargs: Mapping[str, Any]) -> dict[str, str]:
    """What the lease carries for admitd's logs: LiteLLM's call id, deployment, model group."""
    out = {"litellm_call_id": str(kwargs.get("litellm_call_id", ""))}
    info = kwargs.get("model_info")
    if isinstance(info, Mapping) and isinstance(info.get("id"), str):
        out["litellm_deployment"] = info["id"]
    group = model_group(kwargs)
    if group:
        out["litellm_model_group"] = group
    return out
