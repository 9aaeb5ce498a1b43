"""How the asyncio client performs the effects of a plan (``_effects``), with grpc.aio."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar, cast

import grpc

from ._core import Core
from ._effects import Call, Done, Effect, Emit, Invoke, Open, Plan, Read, Sleep
from ._lease import Lease
from ._proto import admission_pb2_grpc as pb_grpc
from ._queue import QueueUpdate

T = TypeVar("T")
AsyncSleep = Callable[[float], Awaitable[None]]
OnQueueUpdate = Callable[[QueueUpdate], object]


class AsyncDriver:
    """Runs plans with asyncio: RPCs on ``stub``, sleeps with ``_sleep``, blocking work in
    a worker thread, provider calls while a lease is renewed."""

    _core: Core
    stub: pb_grpc.AdmissionStub
    _sleep: AsyncSleep

    def _keep_alive(self, lease: Lease) -> asyncio.Task[None] | None:
        if not lease.lease_id:  # unadmitted, or a dedup follower: nothing to renew
            return None
        return asyncio.ensure_future(self._drive(self._core.keep_alive(lease)))

    @staticmethod
    async def _stop(keeper: asyncio.Task[None] | None) -> None:
        if keeper is None:
            return
        keeper.cancel()
        await asyncio.wait([keeper])  # unlike awaiting it, never re-raises its cancellation

    async def _drive(self, plan: Plan[T], emit: OnQueueUpdate | None = None) -> T:
        """Run a plan to its result; what it emits goes to ``emit``."""
        async with contextlib.aclosing(self._steps(plan)) as steps:
            async for step in steps:
                if isinstance(step, Done):
                    return cast(T, step.value)
                if emit is not None:
                    emit(step)
        raise AssertionError("a plan ended without a result")

    async def _steps(self, plan: Plan[Any]) -> AsyncGenerator[Any, None]:
        """Run a plan, performing its effects with asyncio: yields what it emits, then
        ``Done(result)``."""
        reply: Any = None
        failure: BaseException | None = None
        try:
            while True:
                try:
                    effect = plan.send(reply) if failure is None else plan.throw(failure)
                except StopIteration as done:
                    yield Done(done.value)
                    return
                if isinstance(effect, Emit):
                    reply, failure = None, None
                    yield effect.value  # an exception the caller raises is not the plan's
                    continue
                try:
                    reply, failure = await self._perform(effect), None
                except Exception as error:  # handed to the plan, which decides
                    reply, failure = None, error
        finally:
            plan.close()

    async def _perform(self, effect: Effect) -> Any:
        if isinstance(effect, Call):
            method = getattr(self.stub, effect.method)
            return await method(effect.request, timeout=effect.timeout, metadata=effect.metadata)
        if isinstance(effect, Open):
            method = getattr(self.stub, effect.method)
            return method(effect.request, timeout=effect.timeout, metadata=effect.metadata)
        if isinstance(effect, Read):
            message = await cast(grpc.aio.UnaryStreamCall[Any, Any], effect.stream).read()
            return None if message is grpc.aio.EOF else message
        if isinstance(effect, Sleep):
            return await self._sleep(effect.seconds)
        if isinstance(effect, Invoke):
            return await self._invoke(effect)
        assert not isinstance(effect, Emit)
        return await asyncio.to_thread(effect.fn)

    async def _invoke(self, effect: Invoke) -> Any:
        keeper = self._keep_alive(effect.lease)
        try:
            return await effect.fn()
        except asyncio.CancelledError as cancelled:
            await asyncio.shield(self._drive(self._core.settle(effect.lease, cancelled)))
            raise
        finally:
            await self._stop(keeper)
