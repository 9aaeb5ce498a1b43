"""Two ways to reach the server, with the same answers: the engine and a backend in this
process (``EngineDriver``), and a real gRPC server on a socket (``GrpcDriver``). Both run a
ManualClock, moved timer by timer, and wait (in real time, bounded) until every RPC a step
affected has its answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from admitd import (
    AcquireSpec,
    Engine,
    ManualClock,
    MemoryBackend,
    NotFound,
    Rejected,
    Usage,
    parse_config,
)
from admitd._backends.redis.backend import RedisBackend, connect
from admitd._clock import settle
from admitd._model import Outcome
from admitd.v1 import admission_pb2 as pb
from support.decoding import decode, has_field
from support.harness import Harness, seconds, start_harness
from support.state_machine.config import CONFIG

UsageDraw = tuple[int, int, int, int] | None  # input, output, cached and cache-write input
SETTLE_TIMEOUT = 10.0  # real seconds for the server to settle after a step (never reached)


@dataclass
class Answer:
    """An RPC's outcome, the same from the engine and through gRPC."""

    kind: str  # lease | rejected | not_found | expired | settled | renewed | other
    lease_id: str = ""
    queued_for: float = 0.0
    reason: str = ""
    charged: int = 0
    refunded: int = 0
    already: bool = False
    detail: str = ""
    retry: float | None = None  # a rejection's retry delay


def not_found(reason: str, metadata: dict[str, str], message: str) -> Answer:
    """NOT_FOUND; with reason LEASE_EXPIRED, what the lease stands charged and whether an
    earlier Release settled it."""
    if reason != "LEASE_EXPIRED":
        return Answer("not_found", reason=reason, detail=message)
    charged, already = int(metadata["charged_tokens"]), metadata["already_released"] == "true"
    return Answer("expired", charged=charged, already=already, detail=message)


@dataclass
class ServerState:
    levels: dict[str, float]  # by limit key; USD in nano-USD
    in_flight_pool: dict[str, int]
    in_flight_tenant: dict[str, int]
    queued_pool: dict[str, list[int]]
    queued_tenant: dict[str, int]

    @property
    def queued(self) -> int:
        return sum(sum(v) for v in self.queued_pool.values())


class Driver:
    """Common to both ways of reaching the server: a ManualClock moved timer by timer, and
    waiting (in real time, bounded) until every RPC a step affected has its answer."""

    clock: ManualClock
    redis: bool

    def time(self) -> float:
        """Now, in the time base of the backend (Redis scripts see Unix seconds)."""
        return self.clock.wall() if self.redis else self.clock.now()

    async def state(self) -> ServerState:
        raise NotImplementedError

    async def quiesce(
        self, tasks: list[asyncio.Task[Answer]], overdue: Callable[[], list[Any]] = list
    ) -> ServerState:
        """Until every RPC still running is a waiter the server counts as queued, and every
        waiter whose wait has run out has its answer (a timed-out waiter leaves the queue
        before its RPC ends, so the counts alone can match too early)."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            await settle()
            snapshot = await self.state()
            running = sum(1 for task in tasks if not task.done())
            if running == snapshot.queued and all(task.done() for task in overdue()):
                return snapshot
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"server never settled: {running} RPCs running, {snapshot.queued} queued"
                    " (an Acquire that neither answers nor waits in the queue?)"
                )
            await asyncio.sleep(0.002)

    async def advance(
        self, dt: float, tasks: list[asyncio.Task[Answer]], deadlines: dict[Any, float]
    ) -> None:
        """Move the clock to each due timer in turn and let its effects finish before the
        next one fires, so that what a timer starts (Redis I/O too) happens at its time.
        ``deadlines``: when each waiting task's wait runs out (backend time base)."""

        def overdue() -> list[Any]:
            return [task for task, at in deadlines.items() if at <= self.time() + 1e-9]

        target = self.clock.now() + dt
        for _ in range(10_000):
            due = [w for w, _, timer in self.clock._timers if not timer.cancelled]
            nxt = min(due, default=None)
            if nxt is None or nxt > target:
                break
            await self.clock.advance(max(0.0, nxt - self.clock.now()))
            await self.quiesce(tasks, overdue)
        await self.clock.advance(target - self.clock.now())
        await self.quiesce(tasks, overdue)


class EngineDriver(Driver):
    """The engine and a backend in this process, no gRPC."""

    def __init__(self, backend: dict[str, Any]) -> None:
        self.settings = parse_config({**CONFIG, "backend": backend}, "<test>")
        self.clock = ManualClock()
        self.redis = backend["kind"] == "redis"
        if self.redis:
            store: Any = RedisBackend(
                connect(self.settings.backend),
                key_prefix=backend["key_prefix"],
                aging=self.settings.queue.aging,
                clock=self.clock,
            )
        else:
            store = MemoryBackend(self.clock, aging=self.settings.queue.aging)
        self.engine = Engine(self.settings, store, self.clock)

    async def start(self) -> None:
        await self.engine.start()

    async def close(self) -> None:
        await self.engine.close()

    def acquire(self, tenant: str, inp: int, out: int, priority: int, wait: float) -> Any:
        spec = AcquireSpec(
            tenant=tenant,
            pool="p",
            input_tokens=inp,
            max_output_tokens=out,
            priority=priority,
            wait_timeout=wait,
        )
        return self.engine.acquire(spec)

    async def call(self, coro: Any) -> Answer:
        try:
            result = await coro
        except Rejected as rejected:
            return Answer(
                "rejected",
                reason=rejected.reason.value,
                detail=rejected.message,
                retry=rejected.retry_after,
            )
        except NotFound as error:
            reason = error.reason.value if error.reason else ""
            return not_found(reason, error.metadata, error.message)
        except Exception as error:  # any other error is an answer the model never predicts
            return Answer("other", detail=repr(error))
        if hasattr(result, "charged_tokens"):
            return Answer(
                "settled",
                charged=result.charged_tokens,
                refunded=result.refunded_tokens,
                already=result.already_released,
            )
        return Answer("lease", lease_id=result.lease_id, queued_for=result.queued_for)

    async def release(self, lease_id: str, usage: UsageDraw, outcome: str) -> Answer:
        used = Usage(*usage) if usage is not None else None
        return await self.call(self.engine.release(lease_id, used, outcome=Outcome[outcome]))

    async def renew(self, lease_id: str, extend_by: float) -> Answer:
        answer = await self.call(self.engine.renew(lease_id, extend_by))
        return Answer("renewed") if answer.kind == "lease" else answer

    async def state(self) -> ServerState:
        snap = await self.engine.snapshot()
        return ServerState(
            dict(snap.levels),
            dict(snap.in_flight_by_pool),
            dict(snap.in_flight_by_tenant),
            {k: list(v) for k, v in snap.queued_by_pool.items() if sum(v)},
            dict(snap.queued_by_tenant),
        )


class GrpcDriver(Driver):
    """The same through a real gRPC server on a socket."""

    def __init__(self, backend: dict[str, Any]) -> None:
        self.backend = backend
        self.redis = backend["kind"] == "redis"
        self.h: Harness | None = None

    async def start(self) -> None:
        self.h = await start_harness({**CONFIG, "backend": self.backend})
        assert self.h.clock is not None
        self.clock = self.h.clock

    async def close(self) -> None:
        if self.h is not None:
            await self.h.close()

    @property
    def harness(self) -> Harness:
        assert self.h is not None
        return self.h

    def acquire(self, tenant: str, inp: int, out: int, priority: int, wait: float) -> Any:
        request = pb.AcquireRequest(
            tenant=tenant,
            pool="p",
            input_tokens=inp,
            max_output_tokens=out,
            priority=priority,  # type: ignore[arg-type]
        )
        request.wait_timeout.CopyFrom(seconds(wait))
        return self.harness.stub.Acquire(request, timeout=120)

    async def call(self, coro: Any) -> Answer:
        try:
            result = await coro
        except grpc.aio.AioRpcError as error:
            failure = decode(error)
            if failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                return Answer(
                    "rejected",
                    reason=failure.reason,
                    detail=failure.message,
                    retry=failure.retry_after,
                )
            if failure.code == grpc.StatusCode.NOT_FOUND:
                return not_found(failure.reason, failure.metadata, failure.message)
            return Answer("other", detail=f"{failure.code.name} {failure.message}")
        if isinstance(result, pb.ReleaseResponse):
            return Answer(
                "settled",
                charged=result.charged_tokens,
                refunded=result.refunded_tokens,
                already=result.already_released,
            )
        queued_for = result.queued_for.seconds + result.queued_for.nanos / 1e9
        return Answer("lease", lease_id=result.lease_id, queued_for=queued_for)

    async def release(self, lease_id: str, usage: UsageDraw, outcome: str) -> Answer:
        wire = pb.Outcome.Value(f"OUTCOME_{outcome}")
        request = pb.ReleaseRequest(lease_id=lease_id, outcome=wire)
        if usage is not None:
            u = request.usage
            u.input_tokens, u.output_tokens, u.cached_input_tokens, u.cache_write_input_tokens = (
                usage
            )
        return await self.call(self.harness.stub.Release(request, timeout=10))

    async def renew(self, lease_id: str, extend_by: float) -> Answer:
        request = pb.RenewRequest(lease_id=lease_id)
        if extend_by:
            request.extend_by.CopyFrom(seconds(extend_by))
        answer = await self.call(self.harness.stub.Renew(request, timeout=10))
        return Answer("renewed") if answer.kind == "lease" else answer

    async def state(self) -> ServerState:
        status = await self.harness.status()
        levels: dict[str, float] = {}
        names = {"concurrency": "max_concurrency"}
        fields = ("concurrency", "tokens_per_minute", "requests_per_minute", "tokens_per_day")
        for scope, items in (("pool", status.pools), ("tenant", status.tenants)):
            for item in items:
                for name in (*fields, "usd_per_day"):
                    if has_field(item, name):
                        value = getattr(item, name).value
                        if name == "usd_per_day":
                            value = float(round(value * 1e9))
                        levels[f"{scope}:{item.name}:{names.get(name, name)}"] = value
        for name in ("tokens_per_day", "usd_per_day"):
            if has_field(status.budget, name):
                value = getattr(status.budget, name).value
                levels[f"global:{name}"] = (
                    float(round(value * 1e9)) if name == "usd_per_day" else value
                )
        return ServerState(
            levels,
            {p.name: p.in_flight for p in status.pools if p.in_flight},
            {t.name: t.in_flight for t in status.tenants if t.in_flight},
            {p.name: list(p.queued_by_priority) for p in status.pools if p.queued},
            {t.name: t.queued for t in status.tenants if t.queued},
        )
