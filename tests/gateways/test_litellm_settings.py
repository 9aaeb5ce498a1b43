"""The LiteLLM callback's settings and its reading of LiteLLM's call data, without LiteLLM:
each bad setting with the exact message that stops the proxy, and how a call's deployment,
team, key and metadata become admitd's pool, tenant and priority."""

from __future__ import annotations

import datetime
import re
from types import SimpleNamespace
from typing import Any

import pytest

from admitd_client import Priority
from admitd_client.litellm import Settings, load
from admitd_client.litellm import _request as request

BAD = [
    ({"taget": "x:1"}, "unknown key 'taget' (known: target, api_key, "),
    ({"target": ""}, "callback_settings.admitd.target: a non-empty string, not ''"),
    ({"pools": ["a"]}, "callback_settings.admitd.pools: a mapping of names to names"),
    ({"tenants": {"team": 3}}, "callback_settings.admitd.tenants: a mapping of names to names"),
    ({"max_wait": "30s"}, "callback_settings.admitd.max_wait: seconds as a number, not '30s'"),
    ({"max_wait": -1}, "callback_settings.admitd.max_wait: 0 or more, not -1"),
    ({"timeout": 0}, "callback_settings.admitd.timeout: positive, not 0"),
    ({"on_unavailable": "open"}, "on_unavailable: fail_closed or fail_open, not 'open'"),
    ({"model_groups": "gpt-4o"}, "callback_settings.admitd.model_groups: a list of model names"),
    ({"api_key": "os.environ/NOPE"}, "callback_settings.admitd.api_key: NOPE is not set"),
]


@pytest.mark.parametrize(("given", "message"), BAD, ids=[str(g) for g, _ in BAD])
def test_a_bad_setting_is_refused_with_its_name(given: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        load(given, environ={})


def test_defaults_and_the_environment() -> None:
    assert load(None, environ={}) == Settings()
    env = {"ADMITD_TARGET": "admitd:50051", "ADMITD_API_KEY": "k1", "OTHER": "k2"}
    assert load({}, env) == Settings(target="admitd:50051", api_key="k1")
    given = {"target": "a:1", "api_key": "os.environ/OTHER", "model_groups": ["gpt-4o"]}
    settings = load(given, env)
    assert (settings.target, settings.api_key) == ("a:1", "k2")
    assert settings.admits("gpt-4o")
    assert not settings.admits("embeddings")


SETTINGS = Settings(
    pools={"dep-east": "east", "openai/gpt-4o-mini": "mini", "claude": "anthropic"},
    tenants={"team-search-prod": "search"},
)


def call(model: str, deployment: str, group: str, **meta: Any) -> dict[str, Any]:
    metadata = {"model_group": group, **meta}
    return {"model": model, "model_info": {"id": deployment}, "metadata": metadata}


@pytest.mark.parametrize(
    ("kwargs", "pool"),
    [
        (call("openai/gpt-4o", "dep-east", "gpt-4o"), "east"),  # by model_info.id first
        (call("openai/gpt-4o-mini", "dep-x", "mini-group"), "mini"),  # then litellm model
        (call("anthropic/claude-x", "dep-y", "claude"), "anthropic"),  # then model_name
        (call("openai/gpt-4o", "dep-z", "gpt-4o"), "openai/gpt-4o"),  # else the model
    ],
)
def test_the_pool_is_the_deployments(kwargs: dict[str, Any], pool: str) -> None:
    assert request.pool_of_call(kwargs, SETTINGS) == pool
    deployment = {
        "model_name": kwargs["metadata"]["model_group"],
        "litellm_params": {"model": kwargs["model"]},
        "model_info": kwargs["model_info"],
    }
    assert request.pool_of_deployment(deployment, SETTINGS) == pool


@pytest.mark.parametrize(
    ("meta", "tenant"),
    [
        ({"user_api_key_team_id": "team-search-prod"}, "search"),
        ({"user_api_key_team_id": "t-1", "user_api_key_team_alias": "ads"}, "ads"),
        ({"user_api_key_alias": "batch-key"}, "batch-key"),
        ({}, "default"),
    ],
)
def test_the_tenant_is_the_team_or_the_key(meta: dict[str, Any], tenant: str) -> None:
    assert request.tenant(call("openai/gpt-4o", "d", "g", **meta), SETTINGS) == tenant


@pytest.mark.parametrize(
    ("given", "priority"),
    [("high", Priority.HIGH), (" Critical ", Priority.CRITICAL), (4, Priority.LOW),
     ("urgent", Priority.NORMAL), (None, Priority.NORMAL), (True, Priority.NORMAL)],
)  # fmt: skip
def test_priority_from_request_metadata(given: Any, priority: Priority) -> None:
    kwargs = {"litellm_metadata": {"priority": given}}  # the Responses/Anthropic routes' key
    assert request.priority(kwargs) == priority


def test_the_reservation_is_for_the_provider_request() -> None:
    kwargs = {
        "model": "openai/gpt-4o",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 9,
        "api_key": "sk-secret",
        "model_info": {"id": "d", "base_model": "azure/gpt-4o-mini"},
    }
    assert request.provider_request(kwargs) == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 9,
    }


def test_the_wait_is_cut_to_what_is_left_of_the_request_timeout() -> None:
    started = datetime.datetime.fromtimestamp(1000.0)
    kwargs = {"timeout": 12, "litellm_logging_obj": SimpleNamespace(start_time=started)}
    assert request.wait_timeout(kwargs, Settings(max_wait=30), now=1004.0) == 8.0
    assert request.wait_timeout(kwargs, Settings(max_wait=5), now=1004.0) == 5.0
    assert request.wait_timeout(kwargs, Settings(max_wait=30), now=1020.0) == 0.0
    assert request.wait_timeout({}, Settings(max_wait=30), now=0.0) == 30.0
