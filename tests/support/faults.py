"""What the fault tests with real processes share: requests, a channel to a replica, the code
an RPC ended with, a replica's JSON log lines, the keys left in Redis, and the one-slot
config of the client restart tests."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc

from admitd.v1 import admission_pb2 as pb
from admitd.v1 import admission_pb2_grpc as pb_grpc
from support.harness import seconds
from support.redis_server import RedisServer

Code = grpc.StatusCode


def one_slot(backend: dict[str, Any]) -> dict[str, Any]:
    """A replica's config with a pool of one slot, so a leaked slot shows; leases far longer
    than the test; quick to stop, logging JSON."""
    return {
        "backend": backend,
        "lease": {"ttl": "120s"},
        "pools": [{"name": "p", "max_concurrency": 1}],
        "tenants": [{"name": "a"}],
        "drain_delay": 0,
        "shutdown_grace": 0,
        "observability": {"metrics_listen": None, "log_format": "json"},
    }


def acquire_request(wait: float = 0.0, tenant: str = "a", tokens: int = 10) -> pb.AcquireRequest:
    """An Acquire on pool ``p``; ``wait`` > 0 may queue that long."""
    request = pb.AcquireRequest(tenant=tenant, pool="p", input_tokens=tokens)
    if wait:
        request.wait_timeout.CopyFrom(seconds(wait))
    return request


@contextlib.asynccontextmanager
async def connect(
    target: str,
) -> AsyncIterator[tuple[pb_grpc.AdmissionAsyncStub, grpc.aio.Channel]]:
    channel = grpc.aio.insecure_channel(target)
    try:
        yield pb_grpc.AdmissionStub(channel), channel
    finally:
        await channel.close()


async def code_of(call: Awaitable[Any]) -> Code:
    """The status code ``call`` ended with (OK when it returned)."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return Code.OK


def redis_keys(server: RedisServer, prefix: str, kind: str) -> list[str]:
    """The keys ``{prefix}:<kind>:*`` in Redis (e.g. ``lease``, ``w`` for waiters)."""
    return list(server.client().scan_iter(match=f"{{{prefix}}}:{kind}:*", count=1000))


def log_json(line: str) -> dict[str, Any]:
    """One line of a replica's JSON log; {} for any other line."""
    try:
        entry = json.loads(line)
    except ValueError:
        return {}
    return entry if isinstance(entry, dict) else {}
