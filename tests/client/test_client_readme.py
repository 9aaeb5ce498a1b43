"""The drop-in snippets of clients/README.md and README.md, run as written against a real
admitd serving ``clients/example.yaml`` (as the guide says to) and the simulated provider.

The only change: ``localhost:50051`` becomes the test server's address. The SDK clients
find the provider as a user points them anywhere, by ``OPENAI_BASE_URL`` /
``ANTHROPIC_BASE_URL`` (and a key in ``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY``). Each
snippet's call is then checked in the ledger: tokens and USD at example.yaml's prices.
"""

from __future__ import annotations

import ast
import asyncio
import re
from typing import Any

import anthropic
import openai
import pytest
import yaml

from admitd_client import AsyncAdmissionClient
from support import ROOT
from support.client import FakeProvider, aio_channel, serve, target
from support.harness import Harness
from support.sdks import HELLO, REPLY_TOKENS

# With the embedded default's tenants, which example.yaml keeps (the harness has its own).
EXAMPLE = {
    **yaml.safe_load((ROOT / "clients" / "example.yaml").read_text()),
    "tenants": [{"name": "default"}],
}
# example.yaml's prices, nano-dollars a token: (input, output).
NANO = {"openai/gpt-4o": (2500, 10_000), "anthropic/claude-sonnet-4-6": (3000, 15_000)}
SDK_CLASSES = {
    "OpenAI": openai.OpenAI,
    "AsyncOpenAI": openai.AsyncOpenAI,
    "Anthropic": anthropic.Anthropic,
    "AsyncAnthropic": anthropic.AsyncAnthropic,
}


def snippets(path: str) -> list[str]:
    """The Python blocks of a README that wrap an SDK client."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / path).read_text(), re.S)
    return [block for block in blocks if "wrap(" in block]


def test_the_guide_shows_both_sdks_blocking_and_async_in_three_lines_each() -> None:
    found = snippets("clients/README.md")
    assert [len(block.splitlines()) for block in found] == [3, 3, 3, 3]
    made = [re.search(r"wrap\((\w+)\(\)", block) for block in found]
    assert [m.group(1) if m else None for m in made] == list(SDK_CLASSES)


@pytest.fixture
def provider_env(fake: FakeProvider, monkeypatch: pytest.MonkeyPatch) -> FakeProvider:
    monkeypatch.setenv("OPENAI_BASE_URL", fake.openai_url)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.anthropic_url)
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    return fake


async def run(h: Harness, snippet: str) -> dict[str, Any]:
    """Run ``snippet`` (awaiting it when it awaits; a blocking one in a thread, as the
    server runs on this loop); the names it left."""
    code = snippet.replace("localhost:50051", target(h))
    names: dict[str, Any] = {**SDK_CLASSES, "msgs": HELLO}
    if "await " in code:
        compiled = compile(code, "README", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        await eval(compiled, names)
    else:
        await asyncio.to_thread(exec, code, names)
    return names


@pytest.mark.parametrize(
    "snippet",
    [*snippets("clients/README.md"), *snippets("README.md")],
    ids=lambda s: re.search(r"wrap\((\w+)", s).group(1),  # type: ignore[union-attr]
)
async def test_a_snippet_as_written(provider_env: FakeProvider, snippet: str) -> None:
    async with serve(EXAMPLE) as h:
        names = await run(h, snippet)
        client = names["client"]
        pool = "anthropic/claude-sonnet-4-6" if "Anthropic" in snippet else "openai/gpt-4o"
        reply = names["reply"]
        if pool.startswith("anthropic"):
            assert (reply.usage.input_tokens, reply.usage.output_tokens) == (9, REPLY_TOKENS)
        else:
            assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (9, REPLY_TOKENS)
        result = client.close()
        if asyncio.iscoroutine(result):
            await result
        channel, _ = aio_channel(target(h))
        rows = await AsyncAdmissionClient(channel, tenant="search").usage()
        await channel.close()
        (row,) = rows
        input_price, output_price = NANO[pool]
        # "search" is not in example.yaml: it is charged as its default tenant.
        assert (row.tenant, row.pool, row.calls) == ("default", pool, 1)
        assert (row.input_tokens, row.output_tokens) == (9, REPLY_TOKENS)
        assert row.usd == (9 * input_price + REPLY_TOKENS * output_price) / 1e9
        assert (await h.pool(pool)).in_flight == 0
        assert len(provider_env.calls()) == 1
