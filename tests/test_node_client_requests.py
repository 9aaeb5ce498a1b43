"""The Node.js client's request handling, checked against the Python client: what it
reserves for a provider request (the same as ``admitd_client``), acquiring from one, strict
options (a typo is named, with the option meant), and the provider retry hints and outcomes
it reads from the SDKs' errors.

Node and the npm packages: see ``tests/test_node_client.py``.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
from typing import Any

import pytest

from admitd._config import Settings
from admitd.v1 import admission_pb2 as pb
from admitd_client._reserve import reserve
from support import ROOT
from support.client import WEATHER_TOOL, png_base64
from support.harness import start_harness
from support.node import NODE_CLIENT, PROCESS, cli, run_node


async def test_options_are_strict(node: str) -> None:
    out = await run_node(
        node,
        """
        const errors = [];
        const attempt = (fn) => {
          try { fn(); errors.push(null); } catch (e) { errors.push(`${e.name}: ${e.message}`); }
        };
        attempt(() => new admitd.AdmitdClient('127.0.0.1:1', { tenat: 'a' }));
        const options = { tenant: 'a', retry: { maxAttempts: 1 } };
        const client = new admitd.AdmitdClient('127.0.0.1:1', options);
        const bad = [
          { pool: 'p', maxTokens: 5 }, { pool: 'p', waitTimout: 5 }, { pool: 'p', tools: [] },
          { maxOutputTokens: 5 }, { pool: 'p', prompt: 'x', inputTokens: 3 },
        ];
        for (const args of bad) attempt(() => client._acquireRequest(args, 'acquire'));
        client.release('x', { outputTokns: 3 }).catch((e) => {
          errors.push(`${e.name}: ${e.message}`);
          client.close();
          console.log(JSON.stringify(errors));
        });
        """,
    )
    assert out == [
        "TypeError: AdmitdClient(): unknown option 'tenat'; did you mean 'tenant'?",
        "TypeError: acquire(): unknown option 'maxTokens'; admitd calls it 'maxOutputTokens' "
        "(or pass the provider request as request)",
        "TypeError: acquire(): unknown option 'waitTimout'; did you mean 'waitTimeoutSeconds'?",
        "TypeError: acquire(): unknown option 'tools'; pass the whole provider request as "
        "request to reserve for it",
        "TypeError: acquire(): needs pool (or request naming the model)",
        "TypeError: acquire(): one of request, prompt, inputTokens; got prompt, inputTokens",
        "TypeError: release(): unknown option 'outputTokns'; did you mean 'outputTokens'?",
    ]


def _png_url(width: int, height: int) -> str:
    return "data:image/png;base64," + png_base64(width, height)


# With a nested parameter too, which both clients count as its JSON.
TOOL: dict[str, Any] = copy.deepcopy(WEATHER_TOOL)
TOOL["function"]["parameters"]["properties"]["when"] = {
    "type": "object",
    "properties": {"day": {"type": "string"}},
}
REQUESTS: list[tuple[str | None, dict[str, Any]]] = [
    ("openai.chat", {"model": "gpt-4o", "max_tokens": 100, "n": 2, "messages": [
        {"role": "system", "content": "You are terse. Ünïcödé"},
        {"role": "user", "name": "bob", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": _png_url(1024, 1024)}},
            {"type": "image_url", "image_url": {"url": "https://x/a.png", "detail": "low"}},
        ]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{}"}}]},
    ], "tools": [TOOL], "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
    ("openai.chat", {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}),
    (None, {"model": "gpt-4o-mini", "instructions": "Be brief.", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "describe"},
                                     {"type": "input_image", "image_url": _png_url(300, 200)}]}],
        "tools": [{"type": "function", **TOOL["function"]}], "max_output_tokens": 50}),
    (None, {"model": "claude-sonnet-4-6", "max_tokens": 300, "system": [
        {"type": "text", "text": "Long rules.", "cache_control": {"type": "ephemeral"}}],
        "tools": [{"name": "lookup", "description": "Look up.",
                   "input_schema": {"type": "object"}}],
        "output_config": {"format": {"type": "json_schema", "schema": {
            "type": "object", "properties": {"word": {"type": "string"}}}}},
        "messages": [
            {"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": _png_url(1092, 1092).partition(",")[2]}},
                {"type": "text", "text": "hello world"}]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "t", "name": "lookup", "input": {"w": "x"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t", "content": "ok"}]},
        ]}),
]  # fmt: skip


@pytest.mark.parametrize(("api", "request_"), REQUESTS)
async def test_node_reserves_what_python_reserves(
    node: str, api: str | None, request_: dict[str, Any]
) -> None:
    process = await asyncio.create_subprocess_exec(
        node, str(NODE_CLIENT / "cli.js"), "reserve", "--request", json.dumps(request_),
        *(["--api", api] if api else []),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=PROCESS)
    assert process.returncode == 0, err.decode()
    expected = reserve(api, request_)  # type: ignore[arg-type]
    assert json.loads(out)["reservation"] == {
        "api": expected.api,
        "model": expected.model,
        "inputTokens": expected.input_tokens,
        "maxOutputTokens": expected.max_output_tokens,
    }


async def test_acquire_from_a_provider_request(node: str) -> None:
    h = await start_harness({"lease": {"ttl": "30s"}, "pools": [{"name": "openai/gpt-4o"}]})
    try:
        request_ = {"model": "gpt-4o", "max_tokens": 50,
                    "messages": [{"role": "user", "content": "hello world"}]}  # fmt: skip
        request_text = json.dumps(request_)
        status, out = await cli(node, h, "acquire", "--tenant", "a", "--request", request_text)
        assert status == 0, out
        # 3 + "user" + "hello world" + 3: the pool named after the model.
        lease = out["lease"]
        assert (lease["pool"], lease["input_tokens"], lease["reserved_tokens"]) == (
            "openai/gpt-4o",
            9,
            59,
        )
        await h.release(lease["lease_id"])
    finally:
        await h.close()


async def test_provider_retry_hints_and_outcomes(node: str) -> None:
    out = await run_node(
        node,
        """
        const { providerRetryAfterSeconds: hint, outcomeFor } = admitd;  // the SDKs' errors
        const now = Date.parse('2026-01-01T00:00:00Z');
        console.log(JSON.stringify([
          hint({ status: 429,
                 headers: new Headers({ 'retry-after-ms': '1500', 'retry-after': 9 }) }),
          hint({ status: 429, headers: { 'retry-after': '2' } }),
          hint({ status: 529, headers: { 'retry-after': 'Thu, 01 Jan 2026 00:00:30 GMT' } }, now),
          hint({ status: 500, headers: { 'retry-after': '2' } }),
          hint({ status: 429, headers: {} }),
          outcomeFor(null), outcomeFor({ status: 429 }), outcomeFor({ status: 529 }),
          outcomeFor({ status: 504 }), outcomeFor({ status: 500 }),
          outcomeFor(Object.assign(new Error('x'), { name: 'AbortError' })),
        ]));
        """,
    )
    assert out == [
        1.5, 2, 30, None, None,
        "OK", "PROVIDER_RATE_LIMITED", "PROVIDER_RATE_LIMITED", "TIMEOUT", "PROVIDER_ERROR",
        "CANCELLED",
    ]  # fmt: skip


async def test_the_readme_snippet_as_written_against_the_embedded_default(node: str) -> None:
    """README.md's Node.js snippet, run as an ES module from the repository's root against a
    server with the embedded default's pools and tenants (only ``localhost:50051`` changes)."""
    snippet = re.search(r"```js\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert snippet is not None
    embedded = Settings()
    h = await start_harness(
        {
            "pools": [pool.model_dump(mode="json") for pool in embedded.pools],
            "tenants": [tenant.model_dump(mode="json") for tenant in embedded.tenants],
        }
    )
    try:
        code = snippet.group(1).replace("localhost:50051", f"127.0.0.1:{h.server.port}")
        process = await asyncio.create_subprocess_exec(
            node, "--input-type=module", "-e", code, cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), timeout=PROCESS)
        assert (process.returncode, out, err) == (0, b"", b"")
        (row,) = (await h.stub.GetUsage(pb.GetUsageRequest(), timeout=10)).rows
        assert (row.tenant, row.pool, row.input_tokens, row.output_tokens) == (
            "default",
            "default",
            1187,
            231,
        )
        assert (await h.pool("default")).in_flight == 0
    finally:
        await h.close()
