"""Everything both clients do, written once as *plans* that yield effects (``_effects``).

A plan is a generator. It yields an effect — ``Call`` an RPC, ``Open`` a server stream and
``Read`` its next message, ``Sleep``, ``Offload`` a blocking computation, or ``Emit`` a
value to the caller — and gets back the effect's result, or has its exception thrown in.
``AsyncAdmissionClient`` and ``AdmissionClient`` differ only in how they perform effects
(their ``_steps``; an emitted value goes to a callback, or out of an iterator), so
deadlines, metadata, retries with jittered backoff, the fail-open policy, token counting,
streamed waits, tickets, renewal, settlement (outcome, the provider's retry-after, a dedup
leader's result) and the ledger exist once. ``Caller.rpc`` (``_calls``) is the one path
every unary RPC takes and ``Caller.open_stream`` its streaming twin.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import date
from functools import partial
from typing import Any, cast

import grpc

from ._calls import Caller
from ._effects import Emit, Offload, Plan, Sleep
from ._errors import AdmitdError, LeaseEnded, Reason, Rejected, Unavailable
from ._lease import Lease, LeaseArgs, Settlement, check_lease_args
from ._ledger import UsageRow, day_text
from ._models import pool_for, scale_for_model
from ._outcome import DedupRole, Outcome, Priority, outcome_for
from ._proto import admission_pb2 as pb
from ._queue import QueueUpdate, Ticket
from ._reserve import Reservation, reserve
from ._retry_after import retry_after_for
from ._tokens import count_tokens, encoding_name

log = logging.getLogger("admitd_client")

# One WaitTicket of a wait with no timeout: the wait goes on with the next one (admitd also
# cuts each one short at its queue.max_wait).
LONG_POLL = 60.0
# Renewal never runs more often than this, whatever the lease's remaining time says (a
# client clock far ahead of admitd's would otherwise make it spin).
MIN_RENEW_INTERVAL = 1.0
# A dedup follower whose leader ended without a result (DEDUP_LEADER_FAILED) tries this many
# more times in a ``lease`` block or ``run``: the leader has ended, so the retry leads a call
# of its own, or joins the one another former follower now leads. Once is enough for that;
# a second failure means the calls keep failing, which the caller should hear.
REJOIN_RETRIES = 1
# Usage fields an admitd that prices cached input takes (cached input is part of
# input_tokens, so an admitd without them charges it at the full input price).
_CACHE_FIELDS = ("cached_input_tokens", "cache_write_input_tokens")
_STOP_RENEWING = {
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.INVALID_ARGUMENT,
}


@dataclass
class Core(Caller):
    """The shared client logic: plans, plus the options they read (``Caller``)."""

    def acquire(
        self,
        args: LeaseArgs,
        *,
        streamed: bool = False,
        rejoin: bool = False,
        where: str = "acquire",
    ) -> Plan[Lease]:
        """Count input tokens, Acquire, and apply the fail-open policy.

        The arguments are checked now (``TypeError`` naming ``where``, the caller's
        method), before the plan runs.
        ``streamed``: wait with AcquireStream, emitting a ``QueueUpdate`` whenever admitd
        reports the caller's place in the queue. ``rejoin``: a dedup follower told
        DEDUP_LEADER_FAILED asks again, ``REJOIN_RETRIES`` times (the same request: its
        idempotency key was not kept for a follower).
        """
        check_lease_args(args, where)
        return self._acquire(args, streamed, rejoin)

    def _acquire(self, args: LeaseArgs, streamed: bool, rejoin: bool) -> Plan[Lease]:
        request, reservation = yield from self._request(args)
        wait = request.wait_timeout.ToNanoseconds() / 1e9
        timeout = self._timeout(args) + wait
        granted: pb.Lease | None = None
        rejoins = REJOIN_RETRIES if rejoin and request.dedup_key else 0
        try:
            while granted is None:
                try:
                    if streamed:
                        granted = yield from self._stream_lease(request, timeout)
                    else:
                        granted = yield from self.rpc("Acquire", request, timeout)
                except Rejected as refused:
                    if refused.reason is not Reason.DEDUP_LEADER_FAILED or rejoins == 0:
                        raise
                    rejoins -= 1
                    log.debug("dedup leader of %s failed: asking again", request.dedup_key)
        except Unavailable as error:
            if self.on_unavailable == "fail_closed":
                raise
            pool = request.pool
            log.warning("admitd unreachable (%s): failing open, %s runs unadmitted", error, pool)
        lease = Lease(
            proto=granted,
            tenant=request.tenant,
            pool=request.pool,
            input_tokens=request.input_tokens,
            max_output_tokens=request.max_output_tokens,
            request_tenant=request.tenant,
        )
        if reservation is not None:
            lease.model, lease.api = reservation.model, reservation.api
        return lease

    def _request(self, args: LeaseArgs) -> Plan[tuple[pb.AcquireRequest, Reservation | None]]:
        """The AcquireRequest ``args`` ask for (counting input tokens when needed), and the
        reservation a provider ``request`` implies."""
        reservation: Reservation | None = None
        input_tokens = args.get("input_tokens")
        max_output = args.get("max_output_tokens")
        provider_request = args.get("request")
        if provider_request is not None:  # tokenizing may load an encoding: offload
            reservation = yield Offload(partial(reserve, args.get("api"), provider_request))
            input_tokens = reservation.input_tokens
            max_output = reservation.max_output_tokens if max_output is None else max_output
        elif input_tokens is None:
            input_tokens = 0
            if args.get("messages") is not None or args.get("prompt") is not None:
                input_tokens = yield Offload(partial(self._count, args))
        pool = args.get("pool")
        if not pool:
            assert reservation is not None, "check_lease_args lets no lease without a pool by"
            pool = pool_for(reservation.api, reservation.model, self.model_pools)
        wait = float(args.get("wait_timeout", 0.0))
        request = pb.AcquireRequest(
            tenant=args.get("tenant") or self.tenant,
            pool=pool,
            fallback_pools=list(args.get("fallback_pools") or ()),
            dedup_key=args.get("dedup_key") or "",
            input_tokens=input_tokens,
            max_output_tokens=max_output or 0,
            priority=cast("pb.Priority.ValueType", int(args.get("priority", Priority.NORMAL))),
            idempotency_key=args.get("idempotency_key") or uuid.uuid4().hex,
            labels=dict(args.get("labels") or {}),
        )
        if wait > 0:
            request.wait_timeout.FromNanoseconds(round(wait * 1e9))
        return request, reservation

    def _stream_lease(self, request: pb.AcquireRequest, timeout: float) -> Plan[pb.Lease]:
        wrapped = pb.AcquireStreamRequest(acquire=request)
        stream, message = yield from self.open_stream("AcquireStream", wrapped, timeout)
        try:
            while message is not None:
                if message.WhichOneof("update") == "lease":
                    lease: pb.Lease = message.lease
                    return lease
                if message.HasField("queued"):
                    yield Emit(QueueUpdate.from_proto(message.queued))
                message = yield from self.read(stream)
        except BaseException:  # also GeneratorExit: the caller stopped listening
            stream.cancel()  # leaves the queue
            raise
        raise AdmitdError(grpc.StatusCode.INTERNAL, "AcquireStream ended without a lease")

    def enqueue(self, args: LeaseArgs) -> Plan[Ticket]:
        """Take a place in the queue for ``args``; a ticket comes back at once."""
        check_lease_args(args, "enqueue")
        return self._enqueue(args)

    def _enqueue(self, args: LeaseArgs) -> Plan[Ticket]:
        request, _ = yield from self._request(args)
        wrapped = pb.EnqueueRequest(acquire=request)
        reply = yield from self.rpc("Enqueue", wrapped, self._timeout(args))
        return Ticket.from_proto(reply, request.tenant)

    def get_ticket(self, ticket: Ticket | str, tenant: str | None) -> Plan[Ticket]:
        """The ticket now; a granted one's lease is claimed."""
        ticket_id, owner = self._ticket_ref(ticket, tenant)
        request = pb.GetTicketRequest(ticket_id=ticket_id, tenant=owner)
        return Ticket.from_proto((yield from self.rpc("GetTicket", request, self.timeout)), owner)

    def wait_ticket(
        self, ticket: Ticket | str, wait_timeout: float | None, tenant: str | None
    ) -> Plan[Ticket]:
        """Long-poll: once, up to ``wait_timeout`` s; or (None) until granted."""
        if wait_timeout is not None and wait_timeout < 0:
            raise ValueError(f"wait_timeout must not be negative, got {wait_timeout}")
        ticket_id, owner = self._ticket_ref(ticket, tenant)
        while True:
            wait = LONG_POLL if wait_timeout is None else wait_timeout
            request = pb.WaitTicketRequest(ticket_id=ticket_id, tenant=owner)
            request.wait_timeout.FromNanoseconds(round(wait * 1e9))
            reply = yield from self.rpc("WaitTicket", request, self.timeout + wait)
            now = Ticket.from_proto(reply, owner)
            if now.granted or wait_timeout is not None:
                return now

    def cancel_ticket(self, ticket: Ticket | str, tenant: str | None) -> Plan[bool]:
        """Leave the queue; False when there was nothing left to cancel."""
        ticket_id, owner = self._ticket_ref(ticket, tenant)
        request = pb.CancelTicketRequest(ticket_id=ticket_id, tenant=owner)
        reply = yield from self.rpc("CancelTicket", request, self.timeout)
        return bool(reply.cancelled)

    def _ticket_ref(self, ticket: Ticket | str, tenant: str | None) -> tuple[str, str]:
        if isinstance(ticket, Ticket):
            return ticket.id, tenant or ticket.tenant
        return ticket, tenant or self.tenant

    def _count(self, args: LeaseArgs) -> int:
        """Input tokens in each candidate pool's encoding; the largest, as admitd takes one
        count for every candidate (a reservation errs high; release charges the actual)."""
        encodings = {
            encoding_name(
                pool,
                encoding=args.get("encoding"),
                model=args.get("model"),
                pool_encodings=self.pool_encodings,
                default=self.encoding,
            )
            for pool in (args["pool"], *(args.get("fallback_pools") or ()))
        }
        messages, prompt = args.get("messages"), args.get("prompt")
        count = max(count_tokens(messages=messages, prompt=prompt, encoding=e) for e in encodings)
        # A Claude pool (or model): no public tokenizer, so the estimate is scaled up.
        return scale_for_model(args.get("model") or args["pool"], count)

    def release(
        self,
        lease: Lease,
        outcome: Outcome | None = None,
        error: BaseException | None = None,
    ) -> Plan[Settlement | None]:
        """Release with the recorded usage (none: admitd charges the full reservation).

        The outcome: ``outcome``; else ``lease.outcome``; else the one the error recorded
        with ``lease.record_error``, or else ``error`` (the block's), implies; else OK. The
        provider's retry-after: ``lease.provider_retry_after``, else the one that error
        carries. A dedup leader's shared result goes with an OK outcome.

        A lease that expired first: admitd records the usage all the same and answers
        LEASE_EXPIRED (``LeaseEnded``, raised); ``lease.expired`` and ``lease.settlement``
        say what it stands charged.
        """
        if not lease.lease_id:
            return None  # unadmitted, or a dedup follower: nothing reserved
        failure = lease._error if lease._error is not None else error
        if outcome is None:
            outcome = lease.outcome if lease.outcome is not None else outcome_for(failure)
        retry_after = lease.provider_retry_after
        if retry_after is None:
            retry_after = retry_after_for(failure, self.wall())
        request = pb.ReleaseRequest(
            lease_id=lease.lease_id,
            outcome=cast("pb.Outcome.ValueType", int(outcome)),
            tenant=lease.request_tenant,
        )
        usage = lease.usage
        if usage is not None:
            request.usage.input_tokens = usage.input_tokens
            request.usage.output_tokens = usage.output_tokens
            for name in _CACHE_FIELDS:  # sent once the contract has them; part of input
                if name in request.usage.DESCRIPTOR.fields_by_name:
                    setattr(request.usage, name, getattr(usage, name))
        if retry_after is not None and retry_after > 0:
            request.provider_retry_after.FromNanoseconds(round(retry_after * 1e9))
        if lease.role is DedupRole.LEADER and lease._shared and outcome is Outcome.OK:
            request.result = lease._shared
        lease.outcome, lease.provider_retry_after = outcome, retry_after
        try:
            reply = yield from self._release(request, self._until_expiry(lease))
        except LeaseEnded as ended:
            if ended.reason is Reason.LEASE_EXPIRED:  # settled all the same: say to what
                lease.expired = True
                refunded = max(0, ended.reserved_tokens - ended.charged_tokens)
                charged, usd = ended.charged_tokens, ended.charged_usd
                lease.settlement = Settlement(charged, refunded, ended.already_released, usd)
            raise
        lease.settlement = Settlement(
            charged_tokens=reply.charged_tokens,
            refunded_tokens=reply.refunded_tokens,
            already_released=reply.already_released,
            charged_usd=reply.charged_usd,
        )
        return lease.settlement

    def _until_expiry(self, lease: Lease) -> float:
        """Seconds left until admitd reclaims the lease: Release is retried that long (it is
        idempotent, and until then an unreleased lease holds its slot)."""
        expires_at = lease.proto.expires_at.ToNanoseconds() / 1e9 if lease.proto else 0.0
        return max(expires_at - self.wall(), self.timeout)

    def _release(self, request: pb.ReleaseRequest, budget: float) -> Plan[pb.ReleaseResponse]:
        try:
            reply: pb.ReleaseResponse = yield from self.rpc(
                "Release", request, self.timeout, budget
            )
        except AdmitdError as error:
            if not request.result or "result" not in error.field_violations:
                raise
            # Too big for admitd's lease.max_shared_result. Releasing anyway frees the slot
            # now and sends the followers back to retry, instead of at the lease's expiry.
            log.warning("admitd refused the shared result, released without it: %s", error)
            bare = pb.ReleaseRequest()
            bare.CopyFrom(request)
            bare.ClearField("result")
            reply = yield from self.rpc("Release", bare, self.timeout, budget)
        return reply

    def settle(self, lease: Lease, error: BaseException | None) -> Plan[None]:
        """Release at the end of a ``lease`` block; never raises (the block's result wins)."""
        try:
            yield from self.release(lease, None, error)
        except LeaseEnded as ended:  # not a leak: admitd freed the slot when it expired
            log.warning("lease %s ended before its release: %s", lease.lease_id, ended.message)
        except Exception as failure:  # e.g. AdmitdError, or a channel closed under the block
            # Retried until the lease's expiry (Unavailable), or refused for good: the
            # call already happened, and admitd reclaims the lease at its TTL.
            log.error("releasing lease %s failed: %s", lease.lease_id, failure)

    def renew(self, lease: Lease) -> Plan[Lease]:
        """Extend the lease by admitd's configured TTL."""
        request = pb.RenewRequest(lease_id=lease.lease_id, tenant=lease.request_tenant)
        lease._renewed((yield from self.rpc("Renew", request, self.timeout)))
        return lease

    def keep_alive(self, lease: Lease) -> Plan[None]:
        """Renew ``lease`` until stopped, or until admitd says it is gone."""
        while True:
            yield Sleep(self.renew_interval(lease))
            try:
                yield from self.renew(lease)
            except AdmitdError as error:
                if error.code in _STOP_RENEWING:
                    lease.lost = True
                    lease.expired = getattr(error, "reason", None) is Reason.LEASE_EXPIRED
                    log.warning("lease %s can no longer be renewed: %s", lease.lease_id, error)
                    return
                log.warning("renewing lease %s failed, trying again: %s", lease.lease_id, error)

    def renew_interval(self, lease: Lease) -> float:
        if self.renew_every is not None:
            return self.renew_every
        expires_at = lease.proto.expires_at.ToNanoseconds() / 1e9 if lease.proto else 0.0
        return max(MIN_RENEW_INTERVAL, (expires_at - self.wall()) / 3)

    def usage(
        self,
        from_day: date | str | None,
        to_day: date | str | None,
        tenant: str | None,
        pool: str | None,
    ) -> Plan[list[UsageRow]]:
        """The cost ledger's rows, by day, then tenant, then pool."""
        request = pb.GetUsageRequest(
            from_day=day_text(from_day),
            to_day=day_text(to_day),
            tenant=tenant or "",
            pool=pool or "",
        )
        reply = yield from self.rpc("GetUsage", request, self.timeout)
        return [UsageRow.from_proto(row) for row in reply.rows]

    def status(self) -> Plan[pb.StatusResponse]:
        reply: pb.StatusResponse = yield from self.rpc(
            "GetStatus", pb.GetStatusRequest(), self.timeout
        )
        return reply

    def flight_key(self, args: LeaseArgs, singleflight: bool | str) -> str:
        """Identity of a request for singleflight: the caller's string, or the lease args."""
        tenant = args.get("tenant") or self.tenant
        if isinstance(singleflight, str):
            identity: list[Any] = ["key", tenant, singleflight]
        else:
            # A fresh idempotency key or another deadline does not make a different call.
            fields = {k: v for k, v in args.items() if k not in ("idempotency_key", "timeout")}
            identity = ["request", tenant, fields]
        text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=repr)
        return hashlib.sha256(text.encode()).hexdigest()

    def _timeout(self, args: LeaseArgs) -> float:
        return args.get("timeout") or self.timeout
