"""Envoy's rate limit service, ``envoy.service.ratelimit.v3.RateLimitService``, on admitd's
port: Envoy, Istio and Envoy Gateway point their global rate limit filter here.

Each descriptor of a ``ShouldRateLimit`` is one call of a tenant to a pool, named by the
domain's mapping (``envoy:`` in the config, ``_config/envoy.py``), with ``hits`` = the
descriptor's ``hits_addend`` when set, else the request's, else 1:

- an *admission* is an Acquire of ``hits`` tokens that settles at once: fail fast (Envoy
  waits 20 ms by default), then released with usage ``hits``. Request buckets count it,
  token buckets, daily quotas and USD budgets are charged ``hits`` tokens, a full
  concurrency limit refuses it (it holds no slot: the protocol has no release). ``hits`` 0
  (Envoy AI Gateway's "check only") asks whether one more token fits, and charges none;
- a *report* (a descriptor with the domain's ``report_key``, sent by Envoy at the end of the
  stream with the tokens used) is charged as it is, into debt if need be, never refused.

A refusal is ``OVER_LIMIT`` with ``duration_until_reset`` = admitd's retry delay and a
``retry-after`` header; a descriptor that names nothing configured gets ``OK`` (Envoy's "no
limit") unless configured otherwise. Every descriptor is read and checked before any is
charged (``_requests.check_rate_limit``), so an invalid request (INVALID_ARGUMENT, naming
the field) reserves nothing. Store errors and draining are ``UNAVAILABLE``: Envoy then
applies its ``failure_mode_deny``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from .._config import EnvoyDomain
from .._engine import Engine
from .._errors import InvalidArgument, NotFound, Rejected
from .._requests import AcquireSpec, check_rate_limit, check_tokens
from .._third_party.envoy.config.core.v3 import base_pb2
from .._third_party.envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from .._usage import Usage
from .auth import Principal
from .service import _translated
from .status import seconds_to_duration

RATE_LIMIT_SERVICE = rls_pb2.DESCRIPTOR.services_by_name["RateLimitService"]
Response = rls_pb2.RateLimitResponse
Status = Response.DescriptorStatus
OK, OVER_LIMIT = Response.Code.OK, Response.Code.OVER_LIMIT
# The window Envoy's X-RateLimit headers quote for a limit (RateLimit.Unit), by config field;
# concurrency and USD limits are not counts per window, so they get no current_limit.
_UNITS = {
    "tokens_per_minute": Response.RateLimit.Unit.MINUTE,
    "requests_per_minute": Response.RateLimit.Unit.MINUTE,
    "tokens_per_day": Response.RateLimit.Unit.DAY,
}

Identify = Callable[[grpc.aio.ServicerContext[Any, Any]], Principal]


@dataclass(frozen=True, slots=True)
class _Call:
    """One descriptor as admitd reads it; ``tenant`` None: it matches nothing configured."""

    tenant: str | None
    pool: str
    hits: int
    report: str  # "" for an admission; "input" or "output" for a usage report


class RateLimitService(rls_pb2_grpc.RateLimitServiceServicer):
    """``ShouldRateLimit`` on the engine. ``identify`` is the Admission service's: the same
    API keys and client certificates (Envoy sends its key as ``initial_metadata``)."""

    def __init__(self, engine: Engine, identify: Identify) -> None:
        self.engine = engine
        self._identify = identify

    @_translated
    async def ShouldRateLimit(  # noqa: N802 (gRPC method name)
        self,
        request: rls_pb2.RateLimitRequest,
        context: grpc.aio.ServicerContext[rls_pb2.RateLimitRequest, Response],
    ) -> Response:
        caller = self._identify(context)
        envoy = self.engine.settings.envoy
        descriptors = [[(e.key, e.value) for e in d.entries] for d in request.descriptors]
        check_rate_limit(request.domain, request.hits_addend, descriptors)
        domain = envoy.domain(request.domain)
        if domain is None:
            code = OK if envoy.unknown_domain == "ok" else OVER_LIMIT
            statuses = [Status(code=code) for _ in request.descriptors]
            return Response(overall_code=code, statuses=statuses)
        calls = [self._call(domain, caller, request, i) for i in range(len(request.descriptors))]
        refusals: list[Rejected] = []
        response = Response(overall_code=OK)
        for call in calls:
            if call.tenant is None:
                matched = domain.unmatched == "ok"
                response.statuses.append(Status(code=OK if matched else OVER_LIMIT))
                continue
            refusal = await self._apply(call, context.time_remaining())
            response.statuses.append(_status(refusal))
            if refusal is not None:
                refusals.append(refusal)
        if any(status.code == OVER_LIMIT for status in response.statuses):
            response.overall_code = OVER_LIMIT
        if refusals:
            _explain(response, refusals)
        return response

    def _call(
        self, domain: EnvoyDomain, caller: Principal, request: rls_pb2.RateLimitRequest, i: int
    ) -> _Call:
        """Read descriptor ``i``: its tenant and pool (checked against the caller's
        credential), its hits, and whether it is a report. Reserves nothing."""
        descriptor = request.descriptors[i]
        entries = {entry.key: entry.value for entry in descriptor.entries}
        hits = request.hits_addend or 1
        if descriptor.HasField("hits_addend"):
            hits = descriptor.hits_addend.value
            check_tokens(f"descriptors[{i}].hits_addend", hits)
        report = ""
        if domain.report_key is not None and domain.report_key in entries:
            report = "output" if entries[domain.report_key] == "output" else "input"
        # As in Acquire: a client bound to a tenant acts only for it (and names it when the
        # descriptor does not); an admin, or an anonymous caller, for the tenant named.
        tenant = caller.tenant_for(entries.get(domain.tenant_key or "", domain.tenant or ""))
        pool = entries.get(domain.pool_key or "", domain.pool or "")
        try:
            self.engine.requests.tenant(tenant)  # the default tenant, if any, for unknown ones
            self.engine.requests.pool(pool)
        except (NotFound, InvalidArgument):
            return _Call(None, pool, hits, report)
        return _Call(tenant, pool, hits, report)

    async def _apply(self, call: _Call, deadline: float | None) -> Rejected | None:
        """Admit, or charge a report; the refusal when the call does not fit."""
        assert call.tenant is not None
        spec = AcquireSpec(tenant=call.tenant, pool=call.pool)
        if call.report:
            if call.hits:
                usage = Usage(0, call.hits) if call.report == "output" else Usage(call.hits, 0)
                await self.engine.charge(spec, usage)
            return None
        # hits 0 checks that one token fits (an empty reservation is no call) and charges 0.
        spec = AcquireSpec(tenant=call.tenant, pool=call.pool, input_tokens=max(1, call.hits))
        try:
            lease = await self.engine.acquire(spec, deadline=deadline)
        except Rejected as refused:
            return refused
        await self.engine.release(lease.lease_id, Usage(call.hits, 0), call.tenant)
        return None


def _status(refusal: Rejected | None) -> Status:
    if refusal is None:
        return Status(code=OK)
    status = Status(code=OVER_LIMIT, limit_remaining=0)
    if refusal.retry_after is not None:
        status.duration_until_reset.CopyFrom(seconds_to_duration(refusal.retry_after))
    meta = refusal.metadata
    unit = _UNITS.get(meta.get("limit", ""))
    if unit is not None:
        owner = meta.get(meta.get("scope", ""), "")
        status.current_limit.CopyFrom(
            Response.RateLimit(
                name=" ".join(filter(None, (meta["scope"], owner, meta["limit"]))),
                requests_per_unit=min(int(float(meta["limit_value"])), 2**32 - 1),
                unit=unit,
            )
        )
    return status


def _explain(response: Response, refusals: list[Rejected]) -> None:
    """Headers and body of Envoy's 429, from the refusal a retry must wait longest for (a
    retry succeeds only once every descriptor fits); none can wait: no ``retry-after``."""
    hopeless = [r for r in refusals if r.retry_after is None]
    worst = hopeless[0] if hopeless else max(refusals, key=lambda r: r.retry_after or 0.0)
    headers = [("x-admitd-reason", worst.reason.value)]
    if worst.retry_after is not None:
        # Whole seconds, rounded up past float noise (Redis gives 30.0000001 for 30).
        headers.append(("retry-after", str(max(1, math.ceil(worst.retry_after - 1e-6)))))
    for key, value in headers:
        response.response_headers_to_add.append(base_pb2.HeaderValue(key=key, value=value))
    response.raw_body = worst.message.encode()
