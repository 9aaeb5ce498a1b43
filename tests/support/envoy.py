"""Envoy's rate limit service as Envoy calls it: requests built with the client generated from
Envoy's own protos (``admitd._third_party``), sent to a test server."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from admitd._third_party.envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from support.harness import Harness

OK = rls_pb2.RateLimitResponse.Code.OK
OVER_LIMIT = rls_pb2.RateLimitResponse.Code.OVER_LIMIT
MINUTE = rls_pb2.RateLimitResponse.RateLimit.Unit.MINUTE
DAY = rls_pb2.RateLimitResponse.RateLimit.Unit.DAY

Entries = Sequence[tuple[str, str]]


def descriptor(entries: Entries, hits: int | None = None) -> Any:
    """A descriptor of these entries, with its own ``hits_addend`` unless None."""
    d = rls_pb2.RateLimitRequest().descriptors.add()
    for key, value in entries:
        d.entries.add(key=key, value=value)
    if hits is not None:
        d.hits_addend.value = hits
    return d


def request(*descriptors: Any, domain: str = "llm-gateway", hits: int = 0) -> Any:
    """A RateLimitRequest of these descriptors."""
    r = rls_pb2.RateLimitRequest(domain=domain, hits_addend=hits)
    for d in descriptors:
        r.descriptors.add().CopyFrom(d)
    return r


def call(tenant: str = "a", pool: str = "p", hits: int | None = None) -> Any:
    """The descriptor of a call of ``tenant`` to ``pool`` (entries ``tenant`` and ``model``)."""
    return descriptor((("tenant", tenant), ("model", pool)), hits)


async def should(h: Harness, req: Any, key: str | None = None) -> Any:
    """ShouldRateLimit, with ``key`` as Envoy sends it (``initial_metadata``)."""
    stub = rls_pb2_grpc.RateLimitServiceStub(h.channel)
    metadata = (("authorization", f"Bearer {key}"),) if key else None
    return await stub.ShouldRateLimit(req, timeout=10, metadata=metadata)


def headers(response: Any) -> dict[str, str]:
    """The headers admitd adds to Envoy's answer."""
    return {h.key: h.value for h in response.response_headers_to_add}
