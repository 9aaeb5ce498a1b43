"""Envoy's rate limit service on admitd's port, called as Envoy calls it: with the client
generated from Envoy's own protos (protos/third_party), against a real server on a socket,
on both backends. Each ShouldRateLimit descriptor is an admission settled at once (or a
usage report); refusals carry admitd's retry delay."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from admitd._api.auth import hash_key
from admitd._third_party.envoy.service.ratelimit.v3 import rls_pb2
from admitd.v1 import admission_pb2 as pb
from support import ROOT
from support.envoy import OK, OVER_LIMIT, call, descriptor, headers, request, should
from support.harness import Harness, MakeHarness
from support.health import SERVING, health

GATEWAY = {"name": "llm-gateway", "tenant_key": "tenant", "pool_key": "model"}
GATEWAY_KEY = "admitd-envoy-gateway-key"
SEARCH_KEY = "admitd-search-key"
MINUTE = rls_pb2.RateLimitResponse.RateLimit.Unit.MINUTE
DAY = rls_pb2.RateLimitResponse.RateLimit.Unit.DAY


async def ledger(h: Harness) -> list[tuple[str, str, int, int, int]]:
    rows = (await h.stub.GetUsage(pb.GetUsageRequest(), timeout=10)).rows
    return sorted((r.tenant, r.pool, r.calls, r.input_tokens, r.output_tokens) for r in rows)


async def gateway(make: MakeHarness, **config: Any) -> Harness:
    return await make({"envoy": {"domains": [GATEWAY]}, **config})


async def test_requests_per_minute_refuse_with_admitds_own_retry_delay(
    make_harness: MakeHarness,
) -> None:
    h = await gateway(make_harness, pools=[{"name": "p", "requests_per_minute": 2}])
    for _ in range(2):
        assert (await should(h, request(call()))).overall_code == OK
    refused = await should(h, request(call()))
    assert refused.overall_code == OVER_LIMIT
    (status,) = refused.statuses
    assert status.code == OVER_LIMIT
    assert status.limit_remaining == 0
    assert status.current_limit.requests_per_unit == 2
    assert status.current_limit.unit == MINUTE
    assert status.current_limit.name == "pool p requests_per_minute"
    acquire = await h.fail(h.acquire(input_tokens=1))
    assert acquire.reason == "REQUEST_RATE_LIMIT"
    assert status.duration_until_reset.ToTimedelta().total_seconds() == acquire.retry_after == 30
    assert headers(refused) == {"retry-after": "30", "x-admitd-reason": "REQUEST_RATE_LIMIT"}
    assert b"requests_per_minute reached" in refused.raw_body
    await h.advance(30)
    assert (await should(h, request(call()))).overall_code == OK


async def test_hits_addend_are_tokens_of_a_token_bucket(make_harness: MakeHarness) -> None:
    h = await gateway(make_harness, tenants=[{"name": "a", "tokens_per_minute": 1000}])
    assert (await should(h, request(call(), hits=600))).overall_code == OK
    refused = await should(h, request(call(), hits=600))
    (status,) = refused.statuses
    assert status.code == OVER_LIMIT
    assert (status.current_limit.name, status.current_limit.unit) == (
        "tenant a tokens_per_minute",
        MINUTE,
    )
    acquire = await h.fail(h.acquire(input_tokens=600))
    assert acquire.reason == "TOKEN_RATE_LIMIT"
    # 400 left of 1000/min, 600 needed: 200 tokens at 1000/60 a second.
    assert status.duration_until_reset.ToTimedelta().total_seconds() == acquire.retry_after == 12
    assert headers(refused)["retry-after"] == "12"
    assert await ledger(h) == [("a", "p", 1, 600, 0)]


async def test_a_descriptors_hits_addend_overrides_the_requests_and_zero_only_checks(
    make_harness: MakeHarness,
) -> None:
    h = await gateway(make_harness, tenants=[{"name": "a", "tokens_per_minute": 1000}])
    both = request(call(hits=300), call(), hits=50)  # the second takes the request's 50
    assert (await should(h, both)).overall_code == OK
    assert (await should(h, request(call()))).overall_code == OK  # default: 1 token
    assert (await should(h, request(call(hits=0)))).overall_code == OK  # a check: no tokens
    assert await ledger(h) == [("a", "p", 4, 351, 0)]
    assert (await should(h, request(call(hits=649)))).overall_code == OK  # the last 649
    checked = await should(h, request(call(hits=0)))  # no token left: a check is refused
    assert checked.overall_code == OVER_LIMIT
    assert checked.statuses[0].duration_until_reset.ToTimedelta().total_seconds() == 0.06


async def test_a_daily_quota_refuses_until_midnight(make_harness: MakeHarness) -> None:
    h = await gateway(make_harness, tenants=[{"name": "a", "tokens_per_day": 100}])
    assert (await should(h, request(call(hits=100)))).overall_code == OK
    refused = await should(h, request(call()))
    (status,) = refused.statuses
    assert (status.current_limit.unit, status.current_limit.requests_per_unit) == (DAY, 100)
    acquire = await h.fail(h.acquire(input_tokens=1))
    assert acquire.reason == refused.response_headers_to_add[0].value == "TENANT_QUOTA"
    assert status.duration_until_reset.ToTimedelta().total_seconds() == acquire.retry_after
    assert acquire.retry_after is not None
    assert 0 < acquire.retry_after <= 86_400


async def test_concurrency_is_checked_but_never_held(make_harness: MakeHarness) -> None:
    h = await gateway(make_harness, pools=[{"name": "p", "max_concurrency": 1}])
    assert (await should(h, request(call()))).overall_code == OK
    lease = await h.acquire(input_tokens=10)  # the Envoy call left the one slot free
    refused = await should(h, request(call()))
    (status,) = refused.statuses
    assert status.code == OVER_LIMIT
    assert not status.HasField("current_limit")
    assert headers(refused)["x-admitd-reason"] == "CONCURRENCY_LIMIT"
    assert status.duration_until_reset.ToTimedelta().total_seconds() > 0
    await h.release(lease.lease_id, usage=(10, 0))
    assert (await should(h, request(call()))).overall_code == OK
    assert (await h.pool("p")).in_flight == 0


async def test_a_usage_report_is_charged_into_debt_and_never_refused(
    make_harness: MakeHarness,
) -> None:
    domain = {**GATEWAY, "report_key": "usage"}
    h = await make_harness(
        {
            "envoy": {"domains": [domain]},
            "pools": [{"name": "p", "price": {"input_per_million": 1, "output_per_million": 4}}],
            "tenants": [{"name": "a", "tokens_per_minute": 600}],
        }
    )
    assert (await should(h, request(call(hits=0)))).overall_code == OK  # the check, on request
    reports = request(
        descriptor((("tenant", "a"), ("model", "p"), ("usage", "input")), hits=500),
        descriptor((("tenant", "a"), ("model", "p"), ("usage", "output")), hits=400),
    )
    answered = await should(h, reports)  # 900 used of 600: reported anyway
    assert [s.code for s in answered.statuses] == [OK, OK]
    assert await ledger(h) == [("a", "p", 1, 500, 400)]  # one call, its tokens reported
    usage = await h.stub.GetUsage(pb.GetUsageRequest(), timeout=10)
    assert usage.rows[0].usd == pytest.approx(500e-6 + 1600e-6)
    refused = await should(h, request(call(hits=0)))  # 300 in debt: a check waits 301 tokens
    assert refused.statuses[0].duration_until_reset.ToTimedelta().total_seconds() == 30.1
    await h.advance(31)
    assert (await should(h, request(call(hits=0)))).overall_code == OK


async def test_descriptors_name_tenant_and_pool_by_configuration(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness(
        {
            "pools": [{"name": "p"}, {"name": "q", "requests_per_minute": 1}],
            "tenants": [{"name": "a"}, {"name": "b", "requests_per_minute": 1}],
            "envoy": {
                "domains": [
                    GATEWAY,
                    {"name": "fixed", "tenant": "b", "pool": "p", "pool_key": "model"},
                    {**GATEWAY, "name": "strict", "unmatched": "over_limit"},
                ]
            },
        }
    )
    assert (await should(h, request(call("a", "q")))).overall_code == OK
    assert (await should(h, request(call("b", "q")))).overall_code == OVER_LIMIT  # q's 1/min
    fixed = descriptor((("path", "/v1/chat"),))  # tenant b and pool p by configuration
    assert (await should(h, request(fixed, domain="fixed"))).overall_code == OK
    assert (await should(h, request(fixed, domain="fixed"))).overall_code == OVER_LIMIT  # b's
    assert await ledger(h) == [("a", "q", 1, 1, 0), ("b", "p", 1, 1, 0)]
    # Nothing configured: Envoy's convention is no limit, unless the domain says otherwise.
    for unknown in (call("nobody", "p"), call("a", "no-such-pool"), descriptor((("x", "y"),))):
        assert (await should(h, request(unknown))).overall_code == OK
        strict = await should(h, request(unknown, domain="strict"))
        assert strict.overall_code == OVER_LIMIT
        assert not strict.statuses[0].HasField("duration_until_reset")
    mixed = await should(h, request(call("a", "p"), call("b", "p")))
    assert [s.code for s in mixed.statuses] == [OK, OVER_LIMIT]
    assert mixed.overall_code == OVER_LIMIT


async def test_an_unknown_tenant_takes_the_default_tenants_limits(
    make_harness: MakeHarness,
) -> None:
    h = await gateway(
        make_harness,
        tenants=[{"name": "guests", "requests_per_minute": 1}],
        default_tenant="guests",
    )
    assert (await should(h, request(call("somebody")))).overall_code == OK
    assert (await should(h, request(call("somebody-else")))).overall_code == OVER_LIMIT
    assert await ledger(h) == [("guests", "p", 1, 1, 0)]


async def test_an_unknown_domain_has_no_limit_unless_configured(
    make_harness: MakeHarness,
) -> None:
    h = await gateway(make_harness, pools=[{"name": "p", "requests_per_minute": 1}])
    for _ in range(3):
        answer = await should(h, request(call(), call(), domain="other"))
        assert answer.overall_code == OK
        assert [s.code for s in answer.statuses] == [OK, OK]
    assert await ledger(h) == []
    envoy = h.engine.settings.envoy.model_copy(update={"unknown_domain": "over_limit"})
    await h.engine.apply(h.engine.settings.model_copy(update={"envoy": envoy}))
    assert (await should(h, request(call(), domain="other"))).overall_code == OVER_LIMIT


@pytest.mark.parametrize(
    ("req", "field"),
    [
        (request(call(), domain=""), "domain"),
        (request(), "descriptors"),
        (request(call(), rls_pb2.RateLimitRequest().descriptors.add()), "descriptors[1].entries"),
        (request(call(), descriptor((("", "x"),))), "descriptors[1].entries[0].key"),
        (request(call(), call(hits=10_000_001)), "descriptors[1].hits_addend"),
        (request(call(), hits=10_000_001), "hits_addend"),
        (request(call(), descriptor((("tenant", "a" * 201),))), "descriptors[1].entries[0]"),
    ],
)
async def test_an_invalid_request_names_its_field_and_reserves_nothing(
    make_harness: MakeHarness, req: Any, field: str
) -> None:
    h = await gateway(make_harness)
    failure = await h.fail(should(h, req))
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.field_violations == [field]
    assert failure.message.startswith(f"{field}: ")
    assert await ledger(h) == []


async def test_a_payload_that_is_not_a_request_is_invalid_argument(
    make_harness: MakeHarness,
) -> None:
    h = await gateway(make_harness)
    method = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
    raw: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = h.channel.unary_unary(method)
    failure = await h.fail(raw(b"\xff\xff", timeout=10))
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "envoy.service.ratelimit.v3.RateLimitRequest" in failure.message


async def test_envoy_authenticates_with_a_key_in_its_initial_metadata(
    make_harness: MakeHarness,
) -> None:
    h = await gateway(
        make_harness,
        auth={
            "allow_anonymous": False,
            "clients": [
                {"name": "envoy", "api_key_sha256": hash_key(GATEWAY_KEY), "admin": True},
                {"name": "search", "api_key_sha256": hash_key(SEARCH_KEY), "tenant": "a"},
            ],
        },
    )
    anonymous = await h.fail(should(h, request(call())))
    assert anonymous.code == grpc.StatusCode.UNAUTHENTICATED
    wrong = await h.fail(should(h, request(call()), key="not-a-key"))
    assert wrong.code == grpc.StatusCode.UNAUTHENTICATED
    assert (await should(h, request(call("b")), key=GATEWAY_KEY)).overall_code == OK
    # A tenant's key acts only for that tenant, and names it when the descriptor does not.
    denied = await h.fail(should(h, request(call("a"), call("b")), key=SEARCH_KEY))
    assert denied.code == grpc.StatusCode.PERMISSION_DENIED
    own = descriptor((("model", "p"),))
    assert (await should(h, request(own), key=SEARCH_KEY)).overall_code == OK
    usage = await h.stub.GetUsage(
        pb.GetUsageRequest(), timeout=10, metadata=(("authorization", f"Bearer {GATEWAY_KEY}"),)
    )
    assert sorted((r.tenant, r.calls) for r in usage.rows) == [("a", 1), ("b", 1)]


async def test_a_draining_server_is_unavailable_so_envoy_applies_its_failure_mode(
    make_harness: MakeHarness,
) -> None:
    h = await gateway(make_harness)
    await h.server.drain()
    failure = await h.fail(should(h, request(call())))
    assert failure.code == grpc.StatusCode.UNAVAILABLE


async def test_health_and_reflection_include_the_rate_limit_service(
    make_harness: MakeHarness,
) -> None:
    h = await gateway(make_harness)
    name = "envoy.service.ratelimit.v3.RateLimitService"
    assert await health(h.channel, name) == SERVING
    address = f"127.0.0.1:{h.server.port}"

    def listed() -> list[str]:
        with grpc.insecure_channel(address) as channel:
            return list(ProtoReflectionDescriptorDatabase(channel).get_services())

    assert name in await asyncio.to_thread(listed)


def test_the_vendored_protos_are_upstreams_unmodified() -> None:
    """protos/third_party/SHA256SUMS lists every vendored file with its upstream hash."""
    folder = ROOT / "protos" / "third_party"
    listed = {}
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name] = digest
    present = {str(p.relative_to(folder)) for p in folder.rglob("*.proto")}
    assert set(listed) == present
    for name, digest in listed.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    assert rls_pb2.DESCRIPTOR.package == "envoy.service.ratelimit.v3"  # Envoy's wire names
