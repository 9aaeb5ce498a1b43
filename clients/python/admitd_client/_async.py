"""``AsyncAdmissionClient``: the asyncio client (grpc.aio). Logic lives in ``_core``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, Unpack, cast

import grpc

from ._core import Call, ClientOptions, Core, Effect, Plan, Sleep
from ._lease import Lease, LeaseArgs, Settlement
from ._outcome import Outcome
from ._proto import admission_pb2 as pb
from ._proto import admission_pb2_grpc as pb_grpc
from ._singleflight import AsyncFlights
from ._version import USER_AGENT

T = TypeVar("T")
AsyncSleep = Callable[[float], Awaitable[None]]


class AsyncAdmissionClient:
    """Asks admitd for leases before LLM calls, from asyncio code.

    ```python
    async with AsyncAdmissionClient("localhost:50051", tenant="search") as admitd:
        async with admitd.lease(
            pool="openai/gpt-4o", messages=msgs, max_output_tokens=512
        ) as lease:
            lease.record(await openai.chat.completions.create(...))
    ```

    Args:
        target: ``host:port`` of admitd, or a ``grpc.aio.Channel`` the caller owns (it is
            not closed by ``close``).
        sleep: How to wait between retries and renewals (default ``asyncio.sleep``; tests
            pass one that needs no real time to pass).
        **options: See ``ClientOptions``: tenant, metadata, timeout, retry,
            on_unavailable, encoding, pool_encodings, renew_every, credentials, ...
    """

    def __init__(
        self,
        target: str | grpc.aio.Channel,
        *,
        sleep: AsyncSleep | None = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        self._core = Core(**options)
        self._owns_channel = isinstance(target, str)
        if isinstance(target, str):
            channel_options = [("grpc.primary_user_agent", USER_AGENT), *self._core.channel_options]
            if self._core.credentials is None:
                target = grpc.aio.insecure_channel(target, options=channel_options)
            else:
                target = grpc.aio.secure_channel(target, self._core.credentials, channel_options)
        self.channel: grpc.aio.Channel = target
        self.stub = pb_grpc.AdmissionStub(target)
        """The raw generated stub, for anything the wrapper does not cover."""
        self._sleep: AsyncSleep = sleep or asyncio.sleep
        self._flights = AsyncFlights()

    async def __aenter__(self) -> AsyncAdmissionClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel, if the client opened it."""
        if self._owns_channel:
            await self.channel.close()

    @contextlib.asynccontextmanager
    async def lease(self, **args: Unpack[LeaseArgs]) -> AsyncIterator[Lease]:
        """Hold a lease for the duration of an ``async with`` block.

        Entering acquires (counting input tokens with tiktoken unless ``input_tokens`` is
        given); while the block runs the lease is renewed in the background; leaving it
        releases with the usage recorded by ``lease.record`` and the outcome: OK, or the
        one the block's exception maps to (a provider 429 -> PROVIDER_RATE_LIMITED, a
        timeout -> TIMEOUT, cancellation -> CANCELLED, anything else -> PROVIDER_ERROR).
        A failed release is logged, never raised over the block's own result.

        Args:
            **args: See ``LeaseArgs``: pool, messages / prompt / input_tokens,
                max_output_tokens, wait_timeout, priority, labels, ...

        Raises:
            Rejected: admitd refused the call (``reason``, ``retry_after``).
            Unavailable: admitd could not be reached (only under ``fail_closed``).
            AdmitdError: Any other failure, e.g. an unknown pool.
        """
        lease = await self._drive(self._core.acquire(args))
        keeper = self._keep_alive(lease)
        failure: BaseException | None = None
        try:
            yield lease
        except BaseException as error:
            failure = error
            raise
        finally:
            try:
                await self._stop(keeper)
            finally:
                # Shielded: a cancelled block still releases (with OUTCOME_CANCELLED).
                await asyncio.shield(self._drive(self._core.settle(lease, failure)))

    async def run(
        self,
        call: Callable[[Lease], Awaitable[T]],
        *,
        singleflight: bool | str = False,
        **args: Unpack[LeaseArgs],
    ) -> T:
        """Run ``call(lease)`` inside ``lease(**args)`` and return its result.

        Args:
            call: The provider call; it may ``lease.record(...)`` its response.
            singleflight: Share the work with identical concurrent calls in this process:
                they get the same result (the same object: do not mutate it) from one lease
                and one provider call. True: identical means the same lease args; a string:
                the same string (include everything the provider call depends on, e.g.
                model parameters, that the lease args do not show).
            **args: See ``LeaseArgs``.
        """

        async def once() -> T:
            async with self.lease(**args) as lease:
                return await call(lease)

        if not singleflight:
            return await once()
        return await self._flights.join(self._core.flight_key(args, singleflight), once)

    async def acquire(self, **args: Unpack[LeaseArgs]) -> Lease:
        """Acquire a lease without renewal or automatic release (prefer ``lease``)."""
        return await self._drive(self._core.acquire(args))

    async def release(self, lease: Lease, outcome: Outcome = Outcome.OK) -> Settlement | None:
        """Release a lease from ``acquire`` (None for an unadmitted lease)."""
        return await self._drive(self._core.release(lease, outcome))

    async def renew(self, lease: Lease) -> Lease:
        """Extend a lease by admitd's configured TTL."""
        return await self._drive(self._core.renew(lease))

    async def status(self) -> pb.StatusResponse:
        """Pools, tenants, queues and budgets as admitd sees them now."""
        return await self._drive(self._core.status())

    def _keep_alive(self, lease: Lease) -> asyncio.Task[None] | None:
        if not lease.admitted:
            return None
        return asyncio.ensure_future(self._drive(self._core.keep_alive(lease)))

    @staticmethod
    async def _stop(keeper: asyncio.Task[None] | None) -> None:
        if keeper is None:
            return
        keeper.cancel()
        await asyncio.wait([keeper])  # unlike awaiting it, never re-raises its cancellation

    async def _drive(self, plan: Plan[T]) -> T:
        """Run a plan, performing its effects with asyncio."""
        reply: Any = None
        failure: BaseException | None = None
        try:
            while True:
                try:
                    effect = plan.send(reply) if failure is None else plan.throw(failure)
                except StopIteration as done:
                    return cast(T, done.value)
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
        if isinstance(effect, Sleep):
            return await self._sleep(effect.seconds)
        return await asyncio.to_thread(effect.fn)
