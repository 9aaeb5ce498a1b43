"""A real admitd server on 127.0.0.1:0 with a ManualClock, and a client to poke it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import duration_pb2

from admitd import AdmitdServer, ManualClock, parse_config
from admitd._clock import settle
from admitd.v1 import admission_pb2 as pb
from admitd.v1 import admission_pb2_grpc as pb_grpc
from support.decoding import Failure, decode
from support.polling import until

# How long (real seconds) an RPC sent from this process may take to reach the server and
# show there; a caller in another process (a Node CLI) passes its start-up time too.
REACH = 10.0


def seconds(value: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(value * 1e9))
    return duration


def duration(seconds: int = 0, nanos: int = 0) -> duration_pb2.Duration:
    """A Duration as a client may send it, including ones the server must refuse."""
    return duration_pb2.Duration(seconds=seconds, nanos=nanos)


class Harness:
    def __init__(
        self, server: AdmitdServer, clock: ManualClock | None, channel: grpc.aio.Channel
    ) -> None:
        self.server = server
        self.clock = clock
        self.channel = channel
        self.stub = pb_grpc.AdmissionStub(channel)
        self._tasks: list[asyncio.Task[pb.Lease]] = []
        self._calls: list[grpc.aio.Call] = []

    @property
    def engine(self) -> Any:
        return self.server.engine

    async def acquire(self, timeout: float = 10.0, **fields: Any) -> pb.Lease:
        return await self.stub.Acquire(_acquire_request(fields), timeout=timeout)

    def acquire_later(self, timeout: float = 120.0, **fields: Any) -> asyncio.Task[pb.Lease]:
        """Start an Acquire that may wait in the queue; await the task for its result."""
        task = asyncio.ensure_future(self.acquire(timeout=timeout, **fields))
        self._tasks.append(task)
        return task

    async def fail(self, call: Any) -> Failure:
        """Await an RPC (coroutine or task) that must fail, and decode its status."""
        try:
            result = await call
        except grpc.aio.AioRpcError as error:
            return decode(error)
        raise AssertionError(f"expected the RPC to fail, got {result}")

    async def release(
        self, lease_id: str, usage: tuple[int, int] | None = None, **fields: Any
    ) -> pb.ReleaseResponse:
        request = pb.ReleaseRequest(lease_id=lease_id, **fields)
        if usage is not None:
            request.usage.input_tokens, request.usage.output_tokens = usage
        return await self.stub.Release(request, timeout=10)

    async def renew(self, lease_id: str, extend_by: float = 0.0, **fields: Any) -> pb.Lease:
        request = pb.RenewRequest(lease_id=lease_id, **fields)
        if extend_by:
            request.extend_by.CopyFrom(seconds(extend_by))
        return await self.stub.Renew(request, timeout=10)

    async def status(self) -> pb.StatusResponse:
        return await self.stub.GetStatus(pb.GetStatusRequest(), timeout=10)

    async def pool(self, name: str) -> pb.PoolStatus:
        return next(p for p in (await self.status()).pools if p.name == name)

    async def tenant(self, name: str) -> pb.TenantStatus:
        return next(t for t in (await self.status()).tenants if t.name == name)

    async def usage(self, **fields: Any) -> list[tuple[Any, ...]]:
        """GetUsage's rows as (day, tenant, pool, calls, input, output, USD to 9 places)."""
        reply = await self.stub.GetUsage(pb.GetUsageRequest(**fields), timeout=10)
        return [
            (r.day, r.tenant, r.pool, r.calls, r.input_tokens, r.output_tokens, round(r.usd, 9))
            for r in reply.rows
        ]

    async def advance(self, seconds: float) -> None:
        assert self.clock is not None, "this server runs on real time"
        await self.clock.advance(seconds)
        await settle()

    async def until_queued(self, pool: str, count: int, within: float = REACH) -> None:
        """Let pending Acquires reach the queue and start their waits' timers (no time
        passes; only the loop turns): a clock moved before an RPC set its timer would leave
        it waiting from the new time."""

        async def queued() -> bool:
            if self.engine.waiting.joining():
                return False
            return (await self.pool(pool)).queued >= count

        await until(queued, within, f"{count} waiters queued on {pool}", every=0.005)

    def track(self, call: Any) -> Any:
        """Remember a call (e.g. a stream) to cancel when the test ends, passed or not."""
        self._calls.append(call)
        return call

    async def until_waiting_here(self, lease_id: str, within: float = REACH) -> None:
        """Let an RPC that waits for ``lease_id`` (e.g. WaitTicket) reach the server."""

        async def waiting() -> bool:
            return bool(self.engine.waiting.waits_for(lease_id))

        await until(waiting, within, f"an RPC waiting for {lease_id}", every=0.005)

    async def until_following(self, leader: str, count: int = 1, within: float = REACH) -> None:
        """Let ``count`` dedup followers of ``leader`` reach this server."""

        async def following() -> bool:
            return bool(self.engine.waiting.followers_of(leader) >= count)

        await until(following, within, f"{count} followers of {leader}", every=0.005)

    async def close(self) -> None:
        for call in self._calls:
            call.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.channel.close()
        await self.server.stop(grace=0)


def _acquire_request(fields: dict[str, Any]) -> pb.AcquireRequest:
    fields = dict(fields)
    wait = fields.pop("wait_timeout", None)
    fields.setdefault("tenant", "a")
    fields.setdefault("pool", "p")
    request = pb.AcquireRequest(**fields)
    if wait is not None:
        request.wait_timeout.CopyFrom(seconds(wait))
    return request


# The fixtures of tests/conftest.py: ``await make_harness(config)`` starts a server on this
# test's clean store; ``await replicas(n, config)`` starts n servers sharing one Redis.
MakeHarness = Callable[..., Awaitable[Harness]]
Replicas = Callable[..., Awaitable[list[Harness]]]

DEFAULT_CONFIG: dict[str, Any] = {
    "observability": {"metrics_listen": None},
    # A test machine busy with other work must not make ordinary tests see
    # SERVER_OVERLOADED; the overload tests turn the gate on.
    "overload": {"max_queue_delay": None},
    "pools": [{"name": "p"}],
    "tenants": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
}


async def start_harness(config: dict[str, Any], *, manual_clock: bool = True) -> Harness:
    """A server on a free port. ``manual_clock=False``: real time (Redis TIME with Redis), for
    several replicas sharing one store."""
    merged = {**DEFAULT_CONFIG, **config}
    settings = parse_config(merged, "<test>")
    clock = ManualClock() if manual_clock else None
    server = AdmitdServer(settings, clock=clock)
    port = await server.start("127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return Harness(server, clock, channel)
