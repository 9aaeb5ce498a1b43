"""``AsyncAdmissionClient``: the asyncio client (grpc.aio). Logic lives in ``_core``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from datetime import date
from typing import TypeVar, Unpack

import grpc

from . import _sharing
from ._aio import AsyncDriver, AsyncSleep, OnQueueUpdate
from ._calls import ClientOptions
from ._core import Core
from ._effects import Done, Plan
from ._lease import Lease, LeaseArgs, Settlement, check_lease_args
from ._ledger import UsageRow
from ._outcome import Outcome
from ._proto import admission_pb2 as pb
from ._proto import admission_pb2_grpc as pb_grpc
from ._queue import QueueUpdate, Ticket
from ._singleflight import AsyncFlights

T = TypeVar("T")


class AsyncAdmissionClient(AsyncDriver):
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
            channel_options = self._core.channel_args()
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

    def lease(
        self, *, on_queue_update: OnQueueUpdate | None = None, **args: Unpack[LeaseArgs]
    ) -> contextlib.AbstractAsyncContextManager[Lease]:
        """Hold a lease for the duration of an ``async with`` block.

        Entering acquires (counting input tokens with tiktoken unless ``input_tokens`` is
        given); while the block runs the lease is renewed in the background; leaving it
        releases with the usage recorded by ``lease.record`` and the outcome: OK, or the
        one the block's exception maps to (a provider 429 -> PROVIDER_RATE_LIMITED, a
        timeout -> TIMEOUT, cancellation -> CANCELLED, anything else -> PROVIDER_ERROR),
        with the provider's retry-after when the exception carries one (it pauses the
        pool for everyone). A failed release is logged, never raised over the block's own
        result.

        With a ``dedup_key`` the block runs for a follower too: check ``lease.role`` and
        use ``lease.shared_result`` instead of calling the provider (``run`` does this for
        you); a leader gives its result with ``lease.share(data)``. A follower whose
        leader ended without a result asks again, once (it may lead this time).

        Args:
            on_queue_update: Called with a ``QueueUpdate`` whenever the wait in admitd's
                queue moves (the wait is then streamed: AcquireStream). It runs in the
                event loop: keep it quick. An exception it raises ends the wait.
            **args: See ``LeaseArgs``: pool, request / messages / prompt / input_tokens,
                max_output_tokens, wait_timeout, priority, labels, ...

        Raises:
            TypeError: At once, for an argument a lease does not take.
            Rejected: admitd refused the call (``reason``, ``retry_after``).
            Unavailable: admitd could not be reached (only under ``fail_closed``).
            AdmitdError: Any other failure, e.g. an unknown pool.
        """
        streamed = on_queue_update is not None
        plan = self._core.acquire(args, streamed=streamed, rejoin=True, where="lease")
        return self._lease(plan, on_queue_update)

    @contextlib.asynccontextmanager
    async def _lease(
        self, plan: Plan[Lease], on_queue_update: OnQueueUpdate | None
    ) -> AsyncIterator[Lease]:
        async with self.hold(await self._drive(plan, on_queue_update)) as lease:
            yield lease

    @contextlib.asynccontextmanager
    async def hold(self, lease: Lease) -> AsyncIterator[Lease]:
        """Renew and release a lease the caller already has, as a ``lease`` block does.

        For a lease from ``acquire``, ``acquire_stream`` or a granted ticket
        (``ticket.lease``): renewed in the background while the block runs, released on
        exit with the recorded usage and the outcome the block's exit implies.
        """
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
        share: Callable[[T], bytes] | None = None,
        unshare: Callable[[bytes], T] | None = None,
        on_queue_update: OnQueueUpdate | None = None,
        **args: Unpack[LeaseArgs],
    ) -> T:
        """Run ``call(lease)`` inside ``lease(**args)`` and return its result.

        With a ``dedup_key``, identical calls in flight anywhere (other processes too)
        make one provider call: the leader runs ``call`` and shares ``share(result)`` when
        it releases; the others (followers, which reserve nothing) wait for it, at most
        ``wait_timeout``, and return ``unshare(shared)`` without running ``call``. A
        follower whose leader ended without a result (it failed) asks again once, and may
        lead; a second failure raises ``Rejected`` (``DEDUP_LEADER_FAILED``), as does
        ``DEDUP_IN_FLIGHT`` when it may not wait.

        ```python
        answer = await admitd.run(ask, pool="openai/gpt-4o", messages=msgs,
                                  max_output_tokens=512, wait_timeout=60,
                                  dedup_key=sha256(model + json.dumps(msgs)),
                                  share=lambda a: json.dumps(a).encode(), unshare=json.loads)
        ```

        Args:
            call: The provider call; it may ``lease.record(...)`` its response.
            singleflight: Share the work with identical concurrent calls in this process:
                they get the same result (the same object: do not mutate it) from one lease
                and one provider call. True: identical means the same lease args; a string:
                the same string (include everything the provider call depends on, e.g.
                model parameters, that the lease args do not show).
            share: With a ``dedup_key``: the result as bytes for the followers (at most
                admitd's ``lease.max_shared_result``, 64 KiB by default).
            unshare: With a ``dedup_key``: the shared bytes back to a result.
            on_queue_update: As for ``lease`` (with singleflight: the first caller's).
            **args: See ``LeaseArgs``.

        Raises:
            TypeError: A ``dedup_key`` without ``share`` and ``unshare``.
        """
        _sharing.check(args, share, unshare)
        check_lease_args(args, "run")

        async def once() -> T:
            streamed = on_queue_update is not None
            plan = self._core.acquire(args, streamed=streamed, rejoin=True)
            lease = await self._drive(plan, on_queue_update)
            if _sharing.follows(lease):
                return _sharing.unshared(lease, unshare)
            async with self.hold(lease):
                result = await call(lease)
                _sharing.offer(lease, result, share)
                return result

        if not singleflight:
            return await once()
        return await self._flights.join(self._core.flight_key(args, singleflight), once)

    async def acquire(self, **args: Unpack[LeaseArgs]) -> Lease:
        """Acquire a lease without renewal or automatic release (prefer ``lease``)."""
        return await self._drive(self._core.acquire(args))

    async def acquire_stream(
        self, **args: Unpack[LeaseArgs]
    ) -> AsyncGenerator[QueueUpdate | Lease, None]:
        """Acquire, yielding a ``QueueUpdate`` whenever the wait moves, then the ``Lease``.

        ```python
        async for update in admitd.acquire_stream(pool="openai/gpt-4o", input_tokens=900,
                                                  max_output_tokens=100, wait_timeout=60):
            if isinstance(update, Lease):
                lease = update           # the last item; release it (or client.hold it)
            else:
                print(f"{update.position} ahead, about {update.estimated_wait:.0f}s")
        ```

        A call that fits now yields only the lease. Like ``acquire``: no renewal or
        automatic release; a rejection raises ``Rejected``. Leaving the loop early
        cancels the wait (use ``contextlib.aclosing`` to cancel at once rather than when
        the iterator is collected). UNAVAILABLE is retried only before the first update.
        """
        plan = self._core.acquire(args, streamed=True, where="acquire_stream")
        async with contextlib.aclosing(self._steps(plan)) as steps:
            async for step in steps:
                yield step.value if isinstance(step, Done) else step

    async def release(self, lease: Lease, outcome: Outcome | None = None) -> Settlement | None:
        """Release a lease from ``acquire`` (None when there is none to release: unadmitted,
        or a dedup follower).

        Reports the recorded usage, ``outcome`` (default: ``lease.outcome``, else what an
        error given to ``lease.record_error`` implies, else OK), the provider's retry-after
        (``lease.provider_retry_after``, else that error's) and a leader's shared result.

        Raises:
            LeaseEnded: The lease had expired (LEASE_EXPIRED): admitd recorded the usage all
                the same; ``lease.expired`` and ``lease.settlement`` say what it charged.
        """
        return await self._drive(self._core.release(lease, outcome))

    async def renew(self, lease: Lease) -> Lease:
        """Extend a lease by admitd's configured TTL.

        Raises:
            LeaseEnded: The lease had expired (LEASE_EXPIRED); release it to record its usage.
        """
        return await self._drive(self._core.renew(lease))

    async def enqueue(self, **args: Unpack[LeaseArgs]) -> Ticket:
        """Take a place in admitd's fair queue and return a ``Ticket`` at once.

        Deferred admission for batch work: the ticket waits in the queue with no call
        attached (``wait_timeout``: how long it may; default admitd's
        ``queue.ticket_max_wait``); it is already granted when the call fits now. Poll it
        with ``get_ticket`` or ``wait_ticket``; a granted ticket's ``lease`` is claimed by
        that poll and must be released (``release``, or a ``hold`` block) in time.
        Tickets never fail open: without admitd there is no queue to hold a place in.

        Args:
            **args: See ``LeaseArgs``, as for ``acquire``.

        Raises:
            Rejected: It can never fit (``retry_after`` None) or the queue is full.
        """
        return await self._drive(self._core.enqueue(args))

    async def get_ticket(self, ticket: Ticket | str, *, tenant: str | None = None) -> Ticket:
        """The ticket now (from its object or its id); a granted one's lease is claimed.

        Args:
            ticket: A ``Ticket``, or a ticket id (e.g. kept from another process).
            tenant: The ticket's tenant, for an id (default: the client's).

        Raises:
            Rejected: The ticket left the queue unserved (``QUEUE_TIMEOUT``, or the limit
                it can no longer fit in).
            AdmitdError: ``NOT_FOUND``: unknown, cancelled, or granted but not claimed in
                time (its reservation went back to the pool).
        """
        return await self._drive(self._core.get_ticket(ticket, tenant))

    async def wait_ticket(
        self,
        ticket: Ticket | str,
        wait_timeout: float | None = None,
        *,
        tenant: str | None = None,
    ) -> Ticket:
        """Wait for the ticket's grant and return it, as ``get_ticket`` would.

        Args:
            ticket: A ``Ticket``, or a ticket id.
            wait_timeout: Seconds to wait at most (admitd also cuts one wait at its
                ``queue.max_wait``); the ticket may come back still QUEUED. None: until it
                is granted, or ends (raising as ``get_ticket`` does).
            tenant: The ticket's tenant, for an id (default: the client's).
        """
        return await self._drive(self._core.wait_ticket(ticket, wait_timeout, tenant))

    async def cancel_ticket(self, ticket: Ticket | str, *, tenant: str | None = None) -> bool:
        """Leave the queue, or give back a grant not yet claimed.

        Returns:
            False when there was nothing left to cancel: the lease was claimed (release
            it instead) or the ticket had ended.
        """
        return await self._drive(self._core.cancel_ticket(ticket, tenant))

    async def usage(
        self,
        *,
        from_day: date | str | None = None,
        to_day: date | str | None = None,
        tenant: str | None = None,
        pool: str | None = None,
    ) -> list[UsageRow]:
        """admitd's cost ledger: tokens and USD charged per UTC day, tenant and pool.

        Args:
            from_day: First UTC day (a ``date``, or ``"YYYY-MM-DD"``); default today.
            to_day: Last UTC day; default ``from_day``. At most 366 days in all.
            tenant: Only this tenant; default every tenant the caller may see (an API key
                bound to a tenant sees only its own).
            pool: Only this pool; default all.

        Returns:
            The rows, by day, then tenant, then pool.
        """
        return await self._drive(self._core.usage(from_day, to_day, tenant, pool))

    async def status(self) -> pb.StatusResponse:
        """Pools, tenants, queues and budgets as admitd sees them now (a pool's
        ``limit_factor``, ``circuit`` and ``paused_for`` say what its gates do)."""
        return await self._drive(self._core.status())
