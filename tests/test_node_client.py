"""The Node.js example client (clients/node) against a real admitd on a socket.

`node clients/node/cli.js` runs as a subprocess: it acquires a lease, is rejected on a pool
with max_concurrency 1 and decodes the rich details from the grpc-status-details-bin
trailer (ErrorInfo reason + RetryInfo delay), and releases with the tokens used. It also
waits in the queue with a streamed wait (AcquireStream), takes a ticket round trip
(Enqueue, GetTicket, WaitTicket, CancelTicket), falls back on a second pool, joins a dedup
leader and gets its result, pauses a pool with a provider's retry-after, and reads the
cost ledger (GetUsage).

Node and the npm packages come from scripts/setup_node.sh (scripts/test runs it). The
``node`` fixture marks these tests ``node``; when either is missing they are skipped saying
how to install them, and in CI (``CI=true``) they fail instead (tests/support/parts.py).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from admitd_client._reserve import reserve
from support import ROOT
from support.client import WEATHER_TOOL, png_base64
from support.harness import Harness, start_harness
from support.processes import Replica
from support.redis_server import RedisServer, free_port

NODE_CLIENT = ROOT / "clients" / "node"
PROCESS = 60  # seconds a Node CLI run may take, its start-up included, on a loaded machine
CONFIG: dict[str, Any] = {
    "lease": {"ttl": "30s"},
    "pools": [
        {
            "name": "p",
            "max_concurrency": 1,
            "price": {"input_per_million": 2.5, "output_per_million": 10},
        }
    ],
}
POOL_METADATA = {
    "scope": "pool",
    "pool": "p",
    "limit": "max_concurrency",
    "limit_value": "1",
    "requested": "1",
}


async def start_cli(node: str, h: Harness, command: str, *args: str) -> asyncio.subprocess.Process:
    """Start ``node clients/node/cli.js COMMAND --target <h> ARGS``."""
    return await asyncio.create_subprocess_exec(
        node,
        str(NODE_CLIENT / "cli.js"),
        command,
        "--target",
        f"127.0.0.1:{h.server.port}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finished(process: asyncio.subprocess.Process) -> tuple[int, dict[str, Any]]:
    """Wait (bounded) for a CLI run to end: (exit status, the JSON it printed last)."""
    out, err = await asyncio.wait_for(process.communicate(), timeout=PROCESS)
    assert process.returncode is not None
    assert err == b"", err.decode()
    return process.returncode, json.loads(out.splitlines()[-1])


async def cli(node: str, h: Harness, command: str, *args: str) -> tuple[int, dict[str, Any]]:
    """Run ``node clients/node/cli.js COMMAND --target <h> ARGS``: (exit status, its JSON)."""
    process = await start_cli(node, h, command, *args)
    out, err = await asyncio.wait_for(process.communicate(), timeout=PROCESS)
    assert process.returncode is not None
    assert err == b"", err.decode()
    return process.returncode, json.loads(out)


def expiry(h: Harness, ttl: float) -> str:
    assert h.clock is not None
    moment = datetime.fromtimestamp(h.clock.wall() + ttl, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def test_acquire_rejection_details_and_release(node: str) -> None:
    h = await start_harness(CONFIG)
    try:
        status, out = await cli(
            node, h, "acquire", "--tenant", "a", "--pool", "p",
            "--input-tokens", "100", "--max-output-tokens", "50",
        )  # fmt: skip
        assert status == 0, out
        lease = out["lease"]
        assert len(lease["lease_id"]) == 32
        assert {k: v for k, v in lease.items() if k != "lease_id"} == {
            "tenant": "a",
            "pool": "p",
            "input_tokens": 100,
            "reserved_tokens": 150,
            "reserved_usd": pytest.approx(100 * 2.5e-6 + 50 * 10e-6),
            "expires_at": expiry(h, 30),
            "queued_for_seconds": 0,
            "dedup_role": None,
            "dedup_leader_id": "",
            "shared_result": None,
        }
        assert (await h.pool("p")).in_flight == 1  # the lease outlives the process

        status, out = await cli(
            node, h, "acquire", "--tenant", "a", "--pool", "p", "--input-tokens", "1"
        )
        # The same rejection, decoded by the Python harness with googleapis' messages.
        expected = await h.fail(h.acquire(tenant="a", pool="p", input_tokens=1))
        assert status == 2, out
        assert out["ok"] is False
        error = out["error"]
        assert (error["codeName"], error["code"]) == ("RESOURCE_EXHAUSTED", 8)
        assert (error["reason"], error["domain"]) == ("CONCURRENCY_LIMIT", "admitd")
        assert error["retryAfterSeconds"] == expected.retry_after == 30.0
        assert error["metadata"] == expected.metadata == POOL_METADATA
        assert "max_concurrency" in error["message"]

        status, out = await cli(
            node, h, "release", "--tenant", "a", "--lease-id", lease["lease_id"],
            "--used-input-tokens", "90", "--used-output-tokens", "20", "--outcome", "OK",
        )  # fmt: skip
        assert status == 0, out
        assert out["release"] == {
            "charged_tokens": 110,
            "refunded_tokens": 40,
            "already_released": False,
            "charged_usd": pytest.approx(90 * 2.5e-6 + 20 * 10e-6),
        }
        assert (await h.pool("p")).in_flight == 0

        status, out = await cli(node, h, "release", "--lease-id", lease["lease_id"])
        assert status == 0, out
        assert out["release"]["already_released"] is True
    finally:
        await h.close()


async def test_demo_in_one_process_and_errors_that_are_not_rejections(node: str) -> None:
    h = await start_harness(CONFIG)
    try:
        status, out = await cli(
            node, h, "demo", "--tenant", "b", "--pool", "p", "--prompt", "hello world",
            "--max-output-tokens", "8", "--used-input-tokens", "2", "--used-output-tokens", "3",
        )  # fmt: skip
        assert status == 0, out
        # The server counted the prompt: "hello world" is 2 tokens in o200k_base.
        assert (out["lease"]["input_tokens"], out["lease"]["reserved_tokens"]) == (2, 10)
        assert out["rejection"]["reason"] == "CONCURRENCY_LIMIT"
        assert out["rejection"]["retryAfterSeconds"] == 30.0
        assert out["release"]["charged_tokens"] == 5
        assert out["release"]["refunded_tokens"] == 5
        assert (await h.pool("p")).in_flight == 0

        status, out = await cli(
            node, h, "acquire", "--tenant", "a", "--pool", "p", "--max-output-tokens=-1"
        )
        assert status == 1, out
        assert out["error"]["codeName"] == "INVALID_ARGUMENT"
        assert out["error"]["reason"] is None
        assert [v["field"] for v in out["error"]["fieldViolations"]] == ["max_output_tokens"]

        status, out = await cli(node, h, "acquire", "--tenant", "a", "--pool", "nope")
        assert status == 1, out
        assert out["error"]["codeName"] == "NOT_FOUND"
    finally:
        await h.close()


async def test_a_streamed_wait_reports_its_place_then_the_lease(node: str) -> None:
    h = await start_harness(CONFIG)
    try:
        holder = await h.acquire(tenant="a", pool="p", input_tokens=1)
        process = await start_cli(
            node, h, "stream", "--tenant", "a", "--pool", "p", "--input-tokens", "3",
            "--max-output-tokens", "2", "--wait-timeout", "60",
        )  # fmt: skip
        assert process.stdout is not None
        # The first update, printed as it arrives (bounded wait): queued, next in line.
        line = await asyncio.wait_for(process.stdout.readline(), timeout=PROCESS)
        first = json.loads(line)["queued"]
        assert (first["position"], first["depth"]) == (0, 1)
        assert first["estimated_wait_seconds"] >= 0
        await h.release(holder.lease_id)
        status, out = await finished(process)
        assert status == 0, out
        assert out["updates"] == [first]
        lease = out["lease"]
        assert (lease["tenant"], lease["reserved_tokens"]) == ("a", 5)
        assert (await h.pool("p")).in_flight == 1

        # Rejected at once (no wait allowed): exit 2 with the same details as Acquire's.
        status, out = await cli(
            node, h, "stream", "--tenant", "a", "--pool", "p", "--input-tokens", "1"
        )
        expected = await h.fail(h.acquire(tenant="a", pool="p", input_tokens=1))
        assert status == 2, out
        assert (out["error"]["codeName"], out["error"]["reason"]) == (
            "RESOURCE_EXHAUSTED",
            expected.reason,
        )
        assert expected.reason == "CONCURRENCY_LIMIT"
        # From the pool's average hold time: the released holder was held 0 s (ManualClock).
        assert out["error"]["retryAfterSeconds"] == expected.retry_after
        assert out["error"]["metadata"] == expected.metadata == POOL_METADATA
        assert (await h.release(lease["lease_id"])).charged_tokens == 5
    finally:
        await h.close()


@pytest.mark.slow  # ten runs of the Node CLI, each a process start
async def test_a_ticket_round_trip(node: str) -> None:
    h = await start_harness(CONFIG)
    try:
        holder = await h.acquire(tenant="a", pool="p", input_tokens=1)
        status, out = await cli(
            node, h, "enqueue", "--tenant", "a", "--pool", "p", "--input-tokens", "3",
            "--max-output-tokens", "2", "--wait-timeout", "600",
        )  # fmt: skip
        assert status == 0, out
        ticket = out["ticket"]
        assert (ticket["state"], ticket["lease"]) == ("QUEUED", None)
        assert (ticket["position"]["position"], ticket["position"]["depth"]) == (0, 1)
        assert ticket["wait_deadline"] == expiry(h, 600)
        ticket_id = ticket["ticket_id"]
        status, out = await cli(node, h, "get-ticket", "--tenant", "a", "--ticket-id", ticket_id)
        assert (status, out["ticket"]["state"]) == (0, "QUEUED"), out

        waiting = await start_cli(
            node, h, "wait-ticket", "--tenant", "a", "--ticket-id", ticket_id,
            "--wait-timeout", "30",
        )  # fmt: skip
        await h.until_waiting_here(ticket_id, within=PROCESS)
        await h.release(holder.lease_id)
        status, out = await finished(waiting)
        assert status == 0, out
        granted = out["ticket"]
        assert (granted["state"], granted["position"]) == ("GRANTED", None)
        assert granted["lease"]["lease_id"] == ticket_id
        assert granted["lease"]["reserved_tokens"] == 5

        # Another ticket queues behind the granted one's lease; it is cancelled once.
        status, out = await cli(
            node, h, "enqueue", "--tenant", "a", "--pool", "p", "--input-tokens", "1"
        )
        assert (status, out["ticket"]["state"]) == (0, "QUEUED"), out
        other = out["ticket"]["ticket_id"]
        status, out = await cli(node, h, "cancel-ticket", "--tenant", "a", "--ticket-id", other)
        assert (status, out) == (0, {"ok": True, "cancelled": True})
        status, out = await cli(node, h, "cancel-ticket", "--tenant", "a", "--ticket-id", other)
        assert (status, out) == (0, {"ok": True, "cancelled": False})
        status, out = await cli(node, h, "get-ticket", "--tenant", "a", "--ticket-id", other)
        assert status == 1, out
        assert out["error"]["codeName"] == "NOT_FOUND"

        # A ticket past its wait: rejected like Acquire, QUEUE_TIMEOUT.
        status, out = await cli(
            node, h, "enqueue", "--tenant", "a", "--pool", "p", "--input-tokens", "1",
            "--wait-timeout", "5",
        )  # fmt: skip
        expiring = out["ticket"]["ticket_id"]
        await h.advance(6)
        status, out = await cli(node, h, "get-ticket", "--tenant", "a", "--ticket-id", expiring)
        assert status == 2, out
        assert out["error"]["reason"] == "QUEUE_TIMEOUT"

        # The granted ticket's lease is released like any other.
        status, out = await cli(
            node, h, "release", "--tenant", "a", "--lease-id", ticket_id,
            "--used-input-tokens", "3", "--used-output-tokens", "1",
        )  # fmt: skip
        assert status == 0, out
        assert (out["release"]["charged_tokens"], out["release"]["refunded_tokens"]) == (4, 1)
        assert (await h.pool("p")).in_flight == 0
    finally:
        await h.close()


@pytest.mark.slow  # six runs of the Node CLI, each a process start
async def test_fallback_pools_dedup_retry_after_and_usage(node: str) -> None:
    pools = [CONFIG["pools"][0], {"name": "q"}]
    h = await start_harness({**CONFIG, "pools": pools})
    try:
        holder = await h.acquire(tenant="a", pool="p", input_tokens=1)  # p's one slot
        status, out = await cli(
            node, h, "acquire", "--tenant", "a", "--pool", "p", "--fallback-pools", "q",
            "--input-tokens", "3",
        )  # fmt: skip
        assert (status, out["lease"]["pool"]) == (0, "q"), out  # the fallback granted
        await h.release(out["lease"]["lease_id"])

        status, out = await cli(
            node, h, "acquire", "--tenant", "a", "--pool", "q", "--dedup-key", "k",
            "--input-tokens", "3",
        )  # fmt: skip
        leader = out["lease"]
        assert (status, leader["dedup_role"]) == (0, "LEADER"), out
        status, out = await cli(  # an identical call that may not wait: refused, ABORTED
            node, h, "acquire", "--tenant", "a", "--pool", "q", "--dedup-key", "k",
            "--input-tokens", "3",
        )  # fmt: skip
        assert status == 2, out
        assert (out["error"]["codeName"], out["error"]["reason"]) == ("ABORTED", "DEDUP_IN_FLIGHT")
        joining = await start_cli(
            node, h, "acquire", "--tenant", "a", "--pool", "q", "--dedup-key", "k",
            "--input-tokens", "3", "--wait-timeout", "30",
        )  # fmt: skip
        await h.until_following(leader["lease_id"], within=PROCESS)
        status, out = await cli(
            node, h, "release", "--tenant", "a", "--lease-id", leader["lease_id"],
            "--result", "the answer", "--provider-retry-after", "5",
        )  # fmt: skip
        assert status == 0, out
        status, out = await finished(joining)
        follower = out["lease"]
        assert status == 0, out
        assert (follower["dedup_role"], follower["lease_id"]) == ("FOLLOWER", "")
        assert base64.b64decode(follower["shared_result"]) == b"the answer"
        assert follower["dedup_leader_id"] == leader["lease_id"]
        # The leader's provider said retry after 5 s: q is paused for every caller.
        assert (await h.pool("q")).paused_for.ToTimedelta().total_seconds() == 5.0

        await h.release(holder.lease_id, (1, 0))
        status, out = await cli(node, h, "usage", "--tenant", "a")
        assert status == 0, out
        assert [(r["pool"], r["calls"], r["input_tokens"]) for r in out["rows"]] == [
            ("p", 1, 1),
            ("q", 2, 6),
        ]
        assert out["rows"][0]["day"] == "2026-01-01"
    finally:
        await h.close()


async def run_node(node: str, script: str) -> Any:
    """Run a script using the module (``admitd`` is bound); the JSON it prints last."""
    prelude = f"const admitd = require({json.dumps(str(NODE_CLIENT / 'admitd.js'))});\n"
    process = await asyncio.create_subprocess_exec(
        node, "-e", prelude + script, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=PROCESS)
    assert process.returncode == 0, err.decode()
    return json.loads(out.splitlines()[-1])


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
    h = await start_harness({**CONFIG, "pools": [{"name": "openai/gpt-4o"}]})
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


@pytest.mark.slow  # two admitd processes and one of the Node CLI
async def test_release_outlasts_a_replica_restart(node: str, redis_server: RedisServer) -> None:
    port = free_port()
    conf = {
        "backend": {"kind": "redis", "url": redis_server.url, "key_prefix": "node-restart"},
        "pools": [{"name": "p", "max_concurrency": 1}],
        "tenants": [{"name": "a"}],
        "drain_delay": 0,
        "shutdown_grace": 0,
        "observability": {"metrics_listen": None, "log_format": "json"},
    }
    replicas = [Replica(conf, port)]
    try:
        replicas[0].wait_listening()
        process = await asyncio.create_subprocess_exec(
            node, str(NODE_CLIENT / "cli.js"), "lease", "--target", f"127.0.0.1:{port}",
            "--tenant", "a", "--pool", "p", "--input-tokens", "10", "--max-output-tokens", "5",
            "--used-input-tokens", "10", "--used-output-tokens", "2",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert process.stdout is not None
        assert process.stdin is not None
        granted = json.loads(await asyncio.wait_for(process.stdout.readline(), timeout=PROCESS))
        assert granted["lease"]["reserved_tokens"] == 15
        replicas[0].kill()  # the replica dies while the lease is held...
        process.stdin.write(b"release\n")  # ...the release starts while none listens
        await process.stdin.drain()
        replicas.append(Replica(conf, port))  # ...and one comes back on the same port
        status, out = await finished(process)
        assert status == 0, out
        assert out["release"] == {
            "charged_tokens": 12,
            "refunded_tokens": 3,
            "already_released": False,
            "charged_usd": 0,
        }
        replicas[1].wait_listening()
        status, out = await cli_at(
            node, port, "acquire", "--tenant", "a", "--pool", "p", "--input-tokens", "1"
        )
        assert status == 0, out  # the one slot is free at once, not at the lease's TTL
    finally:
        for replica in replicas:
            replica.close()


async def cli_at(node: str, port: int, command: str, *args: str) -> tuple[int, dict[str, Any]]:
    process = await asyncio.create_subprocess_exec(
        node, str(NODE_CLIENT / "cli.js"), command, "--target", f"127.0.0.1:{port}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    return await finished(process)
