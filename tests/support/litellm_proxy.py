"""The LiteLLM proxies of the gateway tests: ``bench.gateway``'s (real ``litellm`` processes
from ``.venv-litellm``), and what the README's LiteLLM config needs to run as written."""

from __future__ import annotations

from bench.gateway import LiteLLMProxy, start
from bench.litellm_teams import key_of
from support import ROOT

README = ROOT / "clients" / "README.md"

__all__ = ["LiteLLMProxy", "key_of", "readme_config", "readme_env", "start"]


def readme_config() -> str:
    """The LiteLLM config of ``clients/README.md`` (the first YAML block of its LiteLLM
    section), exactly as written there."""
    text = README.read_text()
    section = text[text.index("### LiteLLM") :]
    begin = section.index("```yaml\n") + len("```yaml\n")
    return section[begin : section.index("```", begin)]


def readme_env(provider_port: int, admitd_target: str) -> dict[str, str]:
    """What the README's config reads from the environment: admitd, and the two OpenAI
    projects' keys, with OpenAI's address pointing at the fake provider."""
    return {
        "ADMITD_TARGET": admitd_target,
        "OPENAI_API_BASE": f"http://127.0.0.1:{provider_port}/v1",
        "OPENAI_KEY_PROJECT_A": "sk-project-a",
        "OPENAI_KEY_PROJECT_B": "sk-project-b",
    }
