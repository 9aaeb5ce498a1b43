"""The Node.js example client (clients/node) against a real admitd on a socket.

`node clients/node/cli.js` runs as a subprocess: it acquires a lease, is rejected on a pool
with max_concurrency 1 and decodes the rich details from the grpc-status-details-bin
trailer (ErrorInfo reason + RetryInfo delay), and releases with the tokens used. It also
waits in the queue with a streamed wait (AcquireStream), takes a ticket round trip
(Enqueue, GetTicket, WaitTicket, CancelTicket), falls back on a second pool, joins a dedup
leader and gets its result, pauses a pool with a provider's retry-after, reads the cost
ledger (GetUsage), finishes a release across a replica restart, and releases a lease that
expired (LEASE_EXPIRED: the usage is recorded all the same). How the CLI is run:
``support.node``; what the client reserves for a provider request, its strict options and
its retry hints: ``test_node_client_requests.py``.

Node and the npm packages come from scripts/setup_node.sh (scripts/test runs it). The
``node`` fixture marks these tests ``node``; when either is missing they are skipped saying
how to install them, and in CI (``CI=true``) they fail instead (tests/support/parts.py).
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from support.harness import start_harness
from support.node import PROCESS, cli, expiry, finished, start_cli
from support.processes import Replica
from support.redis_server import RedisServer, free_port

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


async def test_a_release_after_expiry_says_lease_expired_and_records_the_usage(node: str) -> None:
    h = await start_harness(CONFIG)
    try:
        status, out = await cli(
            node, h, "acquire", "--tenant", "a", "--pool", "p",
            "--input-tokens", "100", "--max-output-tokens", "50",
        )  # fmt: skip
        assert status == 0, out
        await h.advance(30)  # the lease expires: its 150 tokens are charged
        status, out = await cli(
            node, h, "release", "--tenant", "a", "--lease-id", out["lease"]["lease_id"],
            "--used-input-tokens", "90", "--used-output-tokens", "20",
        )  # fmt: skip
        assert status == 1, out
        error = out["error"]
        assert (error["name"], error["codeName"], error["reason"]) == (
            "LeaseEnded",
            "NOT_FOUND",
            "LEASE_EXPIRED",
        )
        metadata = error["metadata"]
        assert (metadata["reserved_tokens"], metadata["charged_tokens"]) == ("150", "110")
        assert (metadata["settled"], metadata["already_released"]) == ("true", "false")
        assert await h.usage() == [("2026-01-01", "a", "p", 1, 90, 20, 0.000425)]
    finally:
        await h.close()


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
        process = await start_cli(
            node, port, "lease", "--tenant", "a", "--pool", "p",
            "--input-tokens", "10", "--max-output-tokens", "5",
            "--used-input-tokens", "10", "--used-output-tokens", "2",
            stdin=True,
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
        acquire = await start_cli(
            node, port, "acquire", "--tenant", "a", "--pool", "p", "--input-tokens", "1"
        )
        status, out = await finished(acquire)
        assert status == 0, out  # the one slot is free at once, not at the lease's TTL
    finally:
        for replica in replicas:
            replica.close()
