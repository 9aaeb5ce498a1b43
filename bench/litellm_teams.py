"""Keys that name their team, for LiteLLM proxies without a database (the bench and the
gateway tests): a LiteLLM ``custom_auth`` that reads ``sk-team-<name>`` as a key of team
``<name>`` (key alias ``key-<name>``); any other key has no team.

A real proxy knows its teams from its database (virtual keys); this stands in for it so the
proxies need none. Loaded by the proxy (``general_settings: custom_auth:
bench.litellm_teams.user_api_key_auth``), so it runs in the LiteLLM virtualenv.
"""

from __future__ import annotations

from typing import Any

PREFIX = "sk-team-"


def key_of(team: str) -> str:
    """The API key of a team's callers."""
    return PREFIX + team


async def user_api_key_auth(request: Any, api_key: str) -> Any:
    from litellm.proxy._types import UserAPIKeyAuth

    key = api_key.removeprefix("Bearer ").strip()
    if not key.startswith(PREFIX):
        return UserAPIKeyAuth(api_key=key)
    team = key[len(PREFIX) :]
    return UserAPIKeyAuth(api_key=key, team_id=team, key_alias=f"key-{team}")
