"""``AdmissionClient``: the blocking client (grpc sync stubs). Logic lives in ``_core``."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator
from datetime import date
from typing import Any, TypeVar, Unpack, cast

import grpc

from . import _sharing
from ._calls import ClientOptions
from ._core import Core
from ._effects import Call, Done, Effect, Emit, Invoke, Open, Plan, Read, Sleep
from ._lease import Lease, LeaseArgs, Settlement, check_lease_args
from ._ledger import UsageRow
from ._outcome import Outcome
from ._proto import admission_pb2 as pb
from ._proto import admission_pb2_grpc as pb_grpc
from ._queue import QueueUpdate, Ticket
from ._singleflight import SyncFlights

T = TypeVar("T")
SyncSleep = Callable[[float], None]
OnQueueUpdate = Callable[[QueueUpdate], object]
log = logging.getLogger("admitd_client")


class _Stopped(BaseException):
    """Raised out of a renewal thread's sleep when its lease block has ended."""


class _Keeper:
    """A background thread renewing one lease until ``stop``."""

    def __init__(self, client: AdmissionClient, lease: Lease, sleep: SyncSleep | None) -> None:
        self._stopped = threading.Event()
        self._sleep_fn = sleep
        self._thread = threading.Thread(
            target=self._run,
            args=(client, lease),
            name=f"admitd-renew-{lease.lease_id[:8]}",
            daemon=True,  # never keeps a process alive; the lease then expires at its TTL
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()  # at most one Renew in flight, bounded by its deadline

    def _run(self, client: AdmissionClient, lease: Lease) -> None:
        try:
            client._drive(client._core.keep_alive(lease), sleep=self._sleep)
        except _Stopped:
            pass
        except Exception:
            log.exception("renewing lease %s stopped", lease.lease_id)

    def _sleep(self, seconds: float) -> None:
        if self._stopped.is_set():
            raise _Stopped
        if self._sleep_fn is None:
            stopped = self._stopped.wait(seconds)  # ends at once when the block ends
        else:
            self._sleep_fn(seconds)
            stopped = self._stopped.is_set()
        if stopped:
            raise _Stopped


class AdmissionClient:
    """Asks admitd for leases before LLM calls, from blocking code (threads welcome).

    ```python
    with AdmissionClient("localhost:50051", tenant="search") as admitd:
        with admitd.lease(
            pool="openai/gpt-4o", messages=msgs, max_output_tokens=512
        ) as lease:
            lease.record(openai.chat.completions.create(...))
    ```

    The same surface as ``AsyncAdmissionClient``, minus ``await``; background renewal runs
    in a daemon thread per ``lease`` block.

    Args:
        target: ``host:port`` of admitd, or a ``grpc.Channel`` the caller owns (it is not
            closed by ``close``).
        sleep: How to wait between retries and renewals (default ``time.sleep``, and an
            interruptible wait for renewals; tests pass one that needs no real time).
        **options: See ``ClientOptions``: tenant, metadata, timeout, retry,
            on_unavailable, encoding, pool_encodings, renew_every, credentials, ...
    """

    def __init__(
        self,
        target: str | grpc.Channel,
        *,
        sleep: SyncSleep | None = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        self._core = Core(**options)
        self._owns_channel = isinstance(target, str)
        if isinstance(target, str):
            channel_options = self._core.channel_args()
            if self._core.credentials is None:
                target = grpc.insecure_channel(target, options=channel_options)
            else:
                target = grpc.secure_channel(target, self._core.credentials, channel_options)
        self.channel: grpc.Channel = target
        self.stub = pb_grpc.AdmissionStub(target)
        """The raw generated stub, for anything the wrapper does not cover."""
        self._injected_sleep = sleep
        self._sleep: SyncSleep = sleep or time.sleep
        self._flights = SyncFlights()

    def __enter__(self) -> AdmissionClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel, if the client opened it."""
        if self._owns_channel:
            self.channel.close()

    def lease(
        self, *, on_queue_update: OnQueueUpdate | None = None, **args: Unpack[LeaseArgs]
    ) -> contextlib.AbstractContextManager[Lease]:
        """Hold a lease for the duration of a ``with`` block.

        Entering acquires (counting input tokens with tiktoken unless ``input_tokens`` is
        given); while the block runs the lease is renewed in a background thread; leaving
        it releases with the usage recorded by ``lease.record`` and the outcome: OK, or the
        one the block's exception maps to (a provider 429 -> PROVIDER_RATE_LIMITED, a
        timeout -> TIMEOUT, KeyboardInterrupt -> CANCELLED, anything else ->
        PROVIDER_ERROR), with the provider's retry-after when the exception carries one
        (it pauses the pool for everyone). A failed release is logged, never raised over
        the block's result.

        With a ``dedup_key`` the block runs for a follower too: check ``lease.role`` and
        use ``lease.shared_result`` instead of calling the provider (``run`` does this for
        you); a leader gives its result with ``lease.share(data)``. A follower whose
        leader ended without a result asks again, once (it may lead this time).

        Args:
            on_queue_update: Called with a ``QueueUpdate`` whenever the wait in admitd's
                queue moves (the wait is then streamed: AcquireStream), in the calling
                thread. An exception it raises ends the wait.
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

    @contextlib.contextmanager
    def _lease(self, plan: Plan[Lease], on_queue_update: OnQueueUpdate | None) -> Iterator[Lease]:
        with self.hold(self._drive(plan, emit=on_queue_update)) as lease:
            yield lease

    @contextlib.contextmanager
    def hold(self, lease: Lease) -> Iterator[Lease]:
        """Renew and release a lease the caller already has, as a ``lease`` block does.

        For a lease from ``acquire``, ``acquire_stream`` or a granted ticket
        (``ticket.lease``): renewed in a background thread while the block runs, released
        on exit with the recorded usage and the outcome the block's exit implies.
        """
        # Unadmitted, or a dedup follower (no lease id): nothing to renew.
        keeper = _Keeper(self, lease, self._injected_sleep) if lease.lease_id else None
        failure: BaseException | None = None
        try:
            yield lease
        except BaseException as error:
            failure = error
            raise
        finally:
            try:
                if keeper is not None:
                    keeper.stop()
            finally:
                self._drive(self._core.settle(lease, failure))

    def run(
        self,
        call: Callable[[Lease], T],
        *,
        singleflight: bool | str = False,
        share: Callable[[T], bytes] | None = None,
        unshare: Callable[[bytes], T] | None = None,
        on_queue_update: OnQueueUpdate | None = None,
        **args: Unpack[LeaseArgs],
    ) -> T:
        """Run ``call(lease)`` inside ``lease(**args)`` and return its result.

        With a ``dedup_key``, identical calls in flight anywhere make one provider call:
        the leader runs ``call`` and shares ``share(result)``; followers return
        ``unshare(shared)`` without running it. See ``AsyncAdmissionClient.run``.

        Args:
            call: The provider call; it may ``lease.record(...)`` its response.
            singleflight: Share the work with identical concurrent calls (other threads)
                in this process: they get the same result (the same object: do not mutate
                it) from one lease and one provider call. True: identical means the same
                lease args; a string: the same string (include everything the provider
                call depends on that the lease args do not show).
            share: With a ``dedup_key``: the result as bytes for the followers.
            unshare: With a ``dedup_key``: the shared bytes back to a result.
            on_queue_update: As for ``lease`` (with singleflight: the first caller's).
            **args: See ``LeaseArgs``.

        Raises:
            TypeError: A ``dedup_key`` without ``share`` and ``unshare``.
        """
        _sharing.check(args, share, unshare)
        check_lease_args(args, "run")

        def once() -> T:
            streamed = on_queue_update is not None
            plan = self._core.acquire(args, streamed=streamed, rejoin=True)
            lease = self._drive(plan, emit=on_queue_update)
            if _sharing.follows(lease):
                return _sharing.unshared(lease, unshare)
            with self.hold(lease):
                result = call(lease)
                _sharing.offer(lease, result, share)
                return result

        if not singleflight:
            return once()
        return self._flights.join(self._core.flight_key(args, singleflight), once)

    def acquire(self, **args: Unpack[LeaseArgs]) -> Lease:
        """Acquire a lease without renewal or automatic release (prefer ``lease``)."""
        return self._drive(self._core.acquire(args))

    def acquire_stream(
        self, **args: Unpack[LeaseArgs]
    ) -> Generator[QueueUpdate | Lease, None, None]:
        """Acquire, yielding a ``QueueUpdate`` whenever the wait moves, then the ``Lease``.

        ```python
        for update in admitd.acquire_stream(pool="openai/gpt-4o", input_tokens=900,
                                            max_output_tokens=100, wait_timeout=60):
            if isinstance(update, Lease):
                lease = update           # the last item; release it (or client.hold it)
            else:
                print(f"{update.position} ahead, about {update.estimated_wait:.0f}s")
        ```

        The call starts with the first ``next``. A call that fits now yields only the
        lease. Like ``acquire``: no renewal or automatic release; a rejection raises
        ``Rejected``. Leaving the loop early cancels the wait (``close()`` the iterator
        to cancel at once). UNAVAILABLE is retried only before the first update.
        """
        plan = self._core.acquire(args, streamed=True, where="acquire_stream")
        with contextlib.closing(self._steps(plan, self._sleep)) as steps:
            for step in steps:
                yield step.value if isinstance(step, Done) else step

    def release(self, lease: Lease, outcome: Outcome | None = None) -> Settlement | None:
        """Release a lease from ``acquire`` (None when there is none to release: unadmitted,
        or a dedup follower). See ``AsyncAdmissionClient.release``."""
        return self._drive(self._core.release(lease, outcome))

    def renew(self, lease: Lease) -> Lease:
        """Extend a lease by admitd's configured TTL (``LeaseEnded`` once it expired)."""
        return self._drive(self._core.renew(lease))

    def enqueue(self, **args: Unpack[LeaseArgs]) -> Ticket:
        """Take a place in admitd's fair queue and return a ``Ticket`` at once.

        See ``AsyncAdmissionClient.enqueue``.
        """
        return self._drive(self._core.enqueue(args))

    def get_ticket(self, ticket: Ticket | str, *, tenant: str | None = None) -> Ticket:
        """The ticket now; a granted one's lease is claimed.

        See ``AsyncAdmissionClient.get_ticket``.
        """
        return self._drive(self._core.get_ticket(ticket, tenant))

    def wait_ticket(
        self,
        ticket: Ticket | str,
        wait_timeout: float | None = None,
        *,
        tenant: str | None = None,
    ) -> Ticket:
        """Wait for the ticket's grant (at most ``wait_timeout`` s; None: until granted).

        See ``AsyncAdmissionClient.wait_ticket``.
        """
        return self._drive(self._core.wait_ticket(ticket, wait_timeout, tenant))

    def cancel_ticket(self, ticket: Ticket | str, *, tenant: str | None = None) -> bool:
        """Leave the queue; False when there was nothing left to cancel.

        See ``AsyncAdmissionClient.cancel_ticket``.
        """
        return self._drive(self._core.cancel_ticket(ticket, tenant))

    def usage(
        self,
        *,
        from_day: date | str | None = None,
        to_day: date | str | None = None,
        tenant: str | None = None,
        pool: str | None = None,
    ) -> list[UsageRow]:
        """admitd's cost ledger: tokens and USD charged per UTC day, tenant and pool.

        See ``AsyncAdmissionClient.usage``.
        """
        return self._drive(self._core.usage(from_day, to_day, tenant, pool))

    def status(self) -> pb.StatusResponse:
        """Pools, tenants, queues and budgets as admitd sees them now."""
        return self._drive(self._core.status())

    def _drive(
        self, plan: Plan[T], sleep: SyncSleep | None = None, emit: OnQueueUpdate | None = None
    ) -> T:
        """Run a plan to its result; what it emits goes to ``emit``."""
        with contextlib.closing(self._steps(plan, sleep or self._sleep)) as steps:
            for step in steps:
                if isinstance(step, Done):
                    return cast(T, step.value)
                if emit is not None:
                    emit(step)
        raise AssertionError("a plan ended without a result")

    def _steps(self, plan: Plan[Any], sleep: SyncSleep) -> Generator[Any, None, None]:
        """Run a plan, performing its effects by blocking: yields what it emits, then
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
                    reply, failure = self._perform(effect, sleep), None
                except Exception as error:  # handed to the plan, which decides
                    reply, failure = None, error
        finally:
            plan.close()

    def _perform(self, effect: Effect, sleep: SyncSleep) -> Any:
        if isinstance(effect, Call | Open):  # Open: a stream's call object, not yet read
            method = getattr(self.stub, effect.method)
            return method(effect.request, timeout=effect.timeout, metadata=effect.metadata)
        if isinstance(effect, Read):
            return next(cast(Iterator[Any], effect.stream), None)
        if isinstance(effect, Sleep):
            return sleep(effect.seconds)
        if isinstance(effect, Invoke):
            return self._invoke(effect)
        assert not isinstance(effect, Emit)
        return effect.fn()

    def _invoke(self, effect: Invoke) -> Any:
        lease = effect.lease
        keeper = _Keeper(self, lease, self._injected_sleep) if lease.lease_id else None
        try:
            return effect.fn()
        except KeyboardInterrupt as interrupted:
            self._drive(self._core.settle(lease, interrupted))
            raise
        finally:
            if keeper is not None:
                keeper.stop()
