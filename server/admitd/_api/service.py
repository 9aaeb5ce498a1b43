"""The Admission gRPC servicer: wire messages <-> engine calls, errors translated once."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import wraps
from typing import TypeVar, cast

import grpc
from google.protobuf import timestamp_pb2

from .. import _requests as requests
from .._engine import Engine
from .._errors import AdmitdError
from .._model import LeaseRecord, day_number
from .._overload import Gate
from .._policy import QueueEstimate
from .._refusals import internal
from .._requests import AcquireSpec
from .._tickets import Tickets, TicketView
from .._usage import NANO_PER_USD, Usage
from ..v1 import admission_pb2 as pb
from ..v1 import admission_pb2_grpc as pb_grpc
from . import messages
from .auth import Authenticator, Principal
from .registry import Undecodable
from .status import to_status

log = logging.getLogger("admitd")

Svc = TypeVar("Svc")  # the servicer: Admission's, or Envoy's rate limit service (envoy.py)
Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Svc, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]]


_PROBED = pb.Lease()


def _ignore(_: object) -> None:
    pass


StreamHandler = Callable[[Svc, Req, grpc.aio.ServicerContext[Req, Resp]], AsyncIterator[Resp]]


def _answer(context: grpc.aio.ServicerContext[Req, Resp], error: Exception) -> None:
    """Turn an error into its gRPC status; the one place that does. Domain errors carry
    their own status (with details); anything else is a bug: INTERNAL, logged in full, with
    nothing of its internals in the answer.

    The status is set on the call, and gRPC sends it as the handler returns, in the one
    batch that ends any call. ``context.abort`` would send it in a batch of its own and then
    unwind the handler with an exception: that doubled what a refusal costs, and past
    capacity refusing must cost little more than answering."""
    if not isinstance(error, AdmitdError):
        incident = secrets.token_hex(4)
        log.error("internal error %s", incident, exc_info=error)
        error = internal(incident)
    status = to_status(error)
    context.set_code(status.code)
    context.set_details(status.details)
    context.set_trailing_metadata(status.trailing_metadata)


def _translated(handler: Handler[Svc, Req, Resp]) -> Handler[Svc, Req, Resp]:
    @wraps(handler)
    async def wrapper(
        self: Svc, request: Req, context: grpc.aio.ServicerContext[Req, Resp]
    ) -> Resp:
        try:
            if isinstance(request, Undecodable):
                raise request.error
            return await handler(self, request, context)
        except Exception as error:  # every error is answered, once, here
            _answer(context, error)
            # A unary handler that set a status other than OK returns no message (gRPC
            # sends none).
            return cast(Resp, None)

    return wrapper


def _translated_stream(
    handler: StreamHandler[Svc, Req, Resp],
) -> StreamHandler[Svc, Req, Resp]:
    @wraps(handler)
    async def wrapper(
        self: Svc, request: Req, context: grpc.aio.ServicerContext[Req, Resp]
    ) -> AsyncIterator[Resp]:
        try:
            if isinstance(request, Undecodable):
                raise request.error
            async for response in handler(self, request, context):
                yield response
        except Exception as error:
            _answer(context, error)

    return wrapper


class AdmissionService(pb_grpc.AdmissionServicer):
    def __init__(self, engine: Engine, gate: Gate | None = None) -> None:
        self.engine = engine
        self.gate = gate or Gate(lambda: engine.settings, _ignore, _ignore)
        """Refuses new work past capacity (SERVER_OVERLOADED); none by default."""
        self.tickets = Tickets(engine)
        self._auth = Authenticator(engine.settings.auth)

    def _caller(self, context: grpc.aio.ServicerContext[Req, Resp]) -> Principal:
        auth = self.engine.settings.auth
        if auth is not self._auth.config:  # the config was reloaded: keys may have rotated
            self._auth = Authenticator(auth)
        return self._auth.identify(context.invocation_metadata(), context.auth_context)

    @_translated
    async def Acquire(  # noqa: N802 (gRPC method name)
        self,
        request: pb.AcquireRequest,
        context: grpc.aio.ServicerContext[pb.AcquireRequest, pb.Lease],
    ) -> pb.Lease:
        if request.pool == self.gate.probe_pool:
            return _PROBED  # the overload probe: timed, nothing else
        remaining = context.time_remaining()
        self.gate.check(time.monotonic(), remaining)
        spec = self._spec(request, context)
        lease = await self.engine.acquire(spec, deadline=remaining)
        if remaining is not None and context.time_remaining() == 0 and not spec.idempotency_key:
            await self.engine.store.give_back(lease)  # nobody is left to hear of it
        return self._lease(lease)

    @_translated_stream
    async def AcquireStream(  # noqa: N802
        self,
        request: pb.AcquireStreamRequest,
        context: grpc.aio.ServicerContext[pb.AcquireStreamRequest, pb.AcquireStreamResponse],
    ) -> AsyncIterator[pb.AcquireStreamResponse]:
        self.gate.check(time.monotonic(), context.time_remaining())
        spec = self._spec(request.acquire, context)
        updates: asyncio.Queue[QueueEstimate] = asyncio.Queue()
        acquire = asyncio.ensure_future(
            self.engine.acquire(
                spec, deadline=context.time_remaining(), on_queued=updates.put_nowait
            )
        )
        try:
            while not acquire.done():
                update = asyncio.ensure_future(updates.get())
                await asyncio.wait((acquire, update), return_when=asyncio.FIRST_COMPLETED)
                if not update.cancel():
                    yield pb.AcquireStreamResponse(queued=messages.position(update.result()))
            yield pb.AcquireStreamResponse(lease=self._lease(acquire.result()))
        finally:
            acquire.cancel()  # the caller went away: leave the queue, keep nothing

    @_translated
    async def Enqueue(  # noqa: N802
        self,
        request: pb.EnqueueRequest,
        context: grpc.aio.ServicerContext[pb.EnqueueRequest, pb.Ticket],
    ) -> pb.Ticket:
        self.gate.check(time.monotonic(), context.time_remaining())
        return self._ticket(await self.tickets.enqueue(self._spec(request.acquire, context)))

    @_translated
    async def GetTicket(  # noqa: N802
        self,
        request: pb.GetTicketRequest,
        context: grpc.aio.ServicerContext[pb.GetTicketRequest, pb.Ticket],
    ) -> pb.Ticket:
        tenant = self._caller(context).tenant_for(request.tenant)
        return self._ticket(await self.tickets.get(request.ticket_id, tenant))

    @_translated
    async def WaitTicket(  # noqa: N802
        self,
        request: pb.WaitTicketRequest,
        context: grpc.aio.ServicerContext[pb.WaitTicketRequest, pb.Ticket],
    ) -> pb.Ticket:
        tenant = self._caller(context).tenant_for(request.tenant)
        wait_timeout = messages.seconds(request.wait_timeout, "wait_timeout")
        wait = self.engine.requests.ticket_wait(wait_timeout, context.time_remaining())
        return self._ticket(await self.tickets.wait(request.ticket_id, wait, tenant))

    @_translated
    async def CancelTicket(  # noqa: N802
        self,
        request: pb.CancelTicketRequest,
        context: grpc.aio.ServicerContext[pb.CancelTicketRequest, pb.CancelTicketResponse],
    ) -> pb.CancelTicketResponse:
        tenant = self._caller(context).tenant_for(request.tenant)
        cancelled = await self.tickets.cancel(request.ticket_id, tenant)
        return pb.CancelTicketResponse(cancelled=cancelled)

    @_translated
    async def GetUsage(  # noqa: N802
        self,
        request: pb.GetUsageRequest,
        context: grpc.aio.ServicerContext[pb.GetUsageRequest, pb.GetUsageResponse],
    ) -> pb.GetUsageResponse:
        tenant = self._caller(context).tenant_for(request.tenant) or None
        today = day_number(self.engine.clock.wall())
        first = requests.day(request.from_day, "from_day") if request.from_day else today
        last = requests.day(request.to_day, "to_day") if request.to_day else first
        rows = await self.engine.usage(first, last, tenant, request.pool or None)
        return pb.GetUsageResponse(
            rows=[
                pb.UsageRow(
                    day=messages.date(row.day),
                    tenant=row.tenant,
                    pool=row.pool,
                    calls=row.calls,
                    input_tokens=row.input_tokens,
                    output_tokens=row.output_tokens,
                    usd=row.nano_usd / NANO_PER_USD,
                    cached_input_tokens=row.cached_input_tokens,
                    cache_write_input_tokens=row.cache_write_input_tokens,
                )
                for row in rows
            ]
        )

    def _spec(
        self, request: pb.AcquireRequest, context: grpc.aio.ServicerContext[Req, Resp]
    ) -> AcquireSpec:
        return AcquireSpec(
            tenant=self._caller(context).tenant_for(request.tenant),
            pool=request.pool,
            input_tokens=request.input_tokens,
            max_output_tokens=request.max_output_tokens,
            priority=int(request.priority),
            wait_timeout=messages.seconds(request.wait_timeout, "wait_timeout"),
            idempotency_key=request.idempotency_key,
            prompt=request.prompt,
            # dict() of a protobuf map goes through collections.abc (3 Python calls), and
            # most calls have no labels.
            labels=dict(request.labels) if request.labels else {},
            fallback_pools=tuple(request.fallback_pools),
            dedup_key=request.dedup_key,
        )

    @_translated
    async def Release(  # noqa: N802
        self,
        request: pb.ReleaseRequest,
        context: grpc.aio.ServicerContext[pb.ReleaseRequest, pb.ReleaseResponse],
    ) -> pb.ReleaseResponse:
        tenant = self._caller(context).tenant_for(request.tenant)
        usage = None
        if request.HasField("usage"):
            u = request.usage
            usage = Usage(
                u.input_tokens, u.output_tokens, u.cached_input_tokens, u.cache_write_input_tokens
            )
        outcome = requests.outcome(int(request.outcome))
        retry_after = messages.seconds(request.provider_retry_after, "provider_retry_after")
        shared = request.result or None  # proto bytes have no presence: empty means none
        settled = await self.engine.release(
            request.lease_id, usage, tenant, outcome, retry_after, shared
        )
        return pb.ReleaseResponse(
            charged_tokens=settled.charged_tokens,
            refunded_tokens=settled.refunded_tokens,
            already_released=settled.already_released,
            charged_usd=settled.charged_nano_usd / NANO_PER_USD,
        )

    @_translated
    async def Renew(  # noqa: N802
        self, request: pb.RenewRequest, context: grpc.aio.ServicerContext[pb.RenewRequest, pb.Lease]
    ) -> pb.Lease:
        tenant = self._caller(context).tenant_for(request.tenant)
        extend_by = messages.seconds(request.extend_by, "extend_by")
        lease = await self.engine.renew(request.lease_id, extend_by, tenant)
        return self._lease(lease)

    @_translated
    async def GetStatus(  # noqa: N802
        self,
        request: pb.GetStatusRequest,
        context: grpc.aio.ServicerContext[pb.GetStatusRequest, pb.StatusResponse],
    ) -> pb.StatusResponse:
        shown = self._caller(context).sees_tenant
        return messages.status_response(self.engine, await self.engine.snapshot(), shown)

    def _ticket(self, view: TicketView) -> pb.Ticket:
        if view.lease is not None:
            granted = pb.TicketState.TICKET_STATE_GRANTED
            return pb.Ticket(ticket_id=view.ticket_id, state=granted, lease=self._lease(view.lease))
        assert view.estimate is not None
        ticket = pb.Ticket(
            ticket_id=view.ticket_id,
            state=pb.TicketState.TICKET_STATE_QUEUED,
            position=messages.position(view.estimate),
        )
        self._at(ticket.wait_deadline, view.wait_left)
        return ticket

    def _at(self, timestamp: timestamp_pb2.Timestamp, seconds_from_now: float) -> None:
        """Set a message's timestamp field in place to ``seconds_from_now`` from now: what
        ``FromNanoseconds`` sets, without its range check and its two Python calls (a time
        near the clock's is in range)."""
        nanos = round((self.engine.clock.wall() + seconds_from_now) * 1e9)
        timestamp.seconds, timestamp.nanos = divmod(nanos, 1_000_000_000)

    def _lease(self, lease: LeaseRecord) -> pb.Lease:
        message = pb.Lease(
            lease_id=lease.lease_id,
            tenant=lease.tenant,
            pool=lease.pool,
            reserved_tokens=lease.reserved_tokens,
            input_tokens=lease.input_tokens,
            reserved_usd=lease.nano_usd / NANO_PER_USD,
        )
        # Filled in place, and the fields left empty unset (the same bytes): messages built
        # apart and copied in made a Lease cost twice as much (~6 us instead of ~3).
        self._at(message.expires_at, lease.expires_in)
        message.queued_for.FromNanoseconds(round(lease.queued_for * 1e9))  # as status rounds it
        if lease.shadowed:
            message.shadow_reason = self._shadow_reason(lease)
        if lease.dedup_leader:
            message.dedup_role = messages.dedup_role(lease)
            message.dedup_leader_id = lease.dedup_leader
        if lease.shared_result:
            message.shared_result = lease.shared_result
        return message

    def _shadow_reason(self, lease: LeaseRecord) -> str:
        reason = self.engine.policy.shadow_reason(lease.shadowed) if lease.shadowed else None
        return reason.value if reason is not None else ""
