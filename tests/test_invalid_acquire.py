"""Every invalid Acquire gets its exact error, names its field, and reserves nothing.

README.md ("How admission works", bad input): negative or absurd token counts, empty lease
ids and unknown pools are INVALID_ARGUMENT / NOT_FOUND with a message that names the field
(and, for INVALID_ARGUMENT, a ``BadRequest.FieldViolation`` for it); nothing is reserved for
an invalid request. Each invalid Acquire runs against a server whose every limit has room
for exactly one full-size call, so a slot, token, request or quota leaked by the refused call
would make the full-size call after it fail. Also here: an unknown tenant served as the
default tenant, and a call bigger than a bucket refused at once. Release and Renew:
``test_invalid_release_and_renew.py``.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from admitd.v1 import admission_pb2 as pb
from support.decoding import assert_names_field
from support.harness import Harness, MakeHarness, duration

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND

FULL = 1000  # every limit below has room for exactly one call of this many tokens

# One slot, one request, and FULL tokens in every bucket and quota, pool and tenant alike.
TIGHT: dict[str, Any] = {
    "pools": [
        {
            "name": "p",
            "max_concurrency": 1,
            "tokens_per_minute": FULL,
            "requests_per_minute": 1,
            "tokens_per_day": FULL,
        }
    ],
    "tenants": [
        {
            "name": "a",
            "max_concurrency": 1,
            "tokens_per_minute": FULL,
            "requests_per_minute": 1,
            "tokens_per_day": FULL,
        },
        {"name": "b"},
    ],
    "budget": {"tokens_per_day": FULL},
}


WAIT = duration(5)  # a wait that would queue the call if validation let it through


def acquire_raw(h: Harness, **fields: Any) -> Any:
    """An Acquire built field by field (``wait_timeout`` as a raw Duration), so that values
    no well-behaved client sends reach the server unchanged."""
    fields.setdefault("tenant", "a")
    fields.setdefault("pool", "p")
    # A short deadline: an invalid call that got queued instead fails DEADLINE_EXCEEDED.
    return h.stub.Acquire(pb.AcquireRequest(**fields), timeout=5)


async def assert_nothing_reserved(h: Harness) -> None:
    """Status shows every limit as it was at start: no slot, token, request or quota taken."""
    status = await h.status()
    for pool in status.pools:
        assert (pool.in_flight, pool.queued) == (0, 0), pool
        assert list(pool.queued_by_priority) == [0, 0, 0, 0], pool
    for tenant in status.tenants:
        assert (tenant.in_flight, tenant.queued) == (0, 0), tenant
    p = next(pool for pool in status.pools if pool.name == "p")
    a = next(tenant for tenant in status.tenants if tenant.name == "a")
    for limits in (p, a):
        assert limits.concurrency.value == 0
        assert limits.tokens_per_minute.value == FULL
        assert limits.requests_per_minute.value == 1
        assert limits.tokens_per_day.value == 0
    assert status.budget.tokens_per_day.value == 0


async def assert_full_call_still_fits(h: Harness) -> None:
    """The one full-size call the limits allow is admitted, and then nothing more is."""
    lease = await h.acquire(input_tokens=FULL)
    assert lease.reserved_tokens == FULL
    failure = await h.fail(h.acquire(tenant="b", input_tokens=1))
    assert failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED  # the limits do bind


def invalid(name: str, field: str, **fields: Any) -> Any:
    return pytest.param(fields, INVALID, field, id=name)


def not_found(name: str, field: str, **fields: Any) -> Any:
    return pytest.param(fields, NOT_FOUND, field, id=name)


# Each: the request fields, the expected code, and the field the error must name.
INVALID_ACQUIRES = [
    invalid("negative-input", "input_tokens", input_tokens=-1, max_output_tokens=10),
    invalid("most-negative-input", "input_tokens", input_tokens=-(2**63)),
    invalid("negative-output", "max_output_tokens", input_tokens=10, max_output_tokens=-1),
    invalid("huge-input", "input_tokens", input_tokens=10_000_001),
    invalid("int64-max-input", "input_tokens", input_tokens=2**63 - 1),
    invalid("huge-output", "max_output_tokens", input_tokens=1, max_output_tokens=10_000_001),
    invalid("empty-reservation", "input_tokens"),
    invalid("empty-reservation-empty-prompt", "input_tokens", prompt=""),
    invalid("priority-99", "priority", input_tokens=10, priority=99),
    invalid("priority-5", "priority", input_tokens=10, priority=5),
    invalid("priority-negative", "priority", input_tokens=10, priority=-1),
    invalid("wait-negative-seconds", "wait_timeout", input_tokens=10, wait_timeout=duration(-1)),
    invalid("wait-negative-nanos", "wait_timeout", input_tokens=10, wait_timeout=duration(0, -1)),
    invalid(
        "wait-both-negative",
        "wait_timeout",
        input_tokens=10,
        wait_timeout=duration(-2, -500_000_000),
    ),
    invalid(
        "wait-nanos-overflow",
        "wait_timeout",
        input_tokens=10,
        wait_timeout=duration(1, 1_000_000_000),
    ),
    invalid("wait-absurd", "wait_timeout", input_tokens=10, wait_timeout=duration(10**12)),
    invalid("empty-pool", "pool", pool="", input_tokens=10),
    not_found("unknown-pool", "pool", pool="no/such-model", input_tokens=10),
    not_found("unknown-tenant", "tenant", tenant="stranger", input_tokens=10),
    invalid("empty-tenant", "tenant", tenant="", input_tokens=10),
    invalid("idempotency-key-257", "idempotency_key", input_tokens=10, idempotency_key="k" * 257),
    invalid("33-labels", "labels", input_tokens=10, labels={f"k{i}": "v" for i in range(33)}),
    invalid("label-key-257", "labels", input_tokens=10, labels={"k" * 257: "v"}),
    invalid("label-value-257", "labels", input_tokens=10, labels={"k": "v" * 257}),
    invalid("label-key-empty", "labels", input_tokens=10, labels={"": "v"}),
    invalid("prompt-2000001", "prompt", prompt="a" * 2_000_001),
    invalid("prompt-too-long-with-tokens", "prompt", input_tokens=10, prompt="a" * 2_000_001),
]


@pytest.mark.parametrize(("fields", "code", "field"), INVALID_ACQUIRES)
async def test_invalid_acquire_names_its_field_and_reserves_nothing(
    make_harness: MakeHarness, fields: dict[str, Any], code: grpc.StatusCode, field: str
) -> None:
    h = await make_harness(TIGHT)
    fields = dict(fields)
    fields.setdefault("wait_timeout", WAIT)
    failure = await h.fail(acquire_raw(h, **fields))
    assert_names_field(failure, code, field)
    await assert_nothing_reserved(h)
    await assert_full_call_still_fits(h)


async def test_invalid_acquires_in_a_row_leak_nothing(make_harness: MakeHarness) -> None:
    """All the invalid calls against one server: still room for exactly one full call."""
    h = await make_harness(TIGHT)
    for case in INVALID_ACQUIRES:
        fields, code, field = case.values
        failure = await h.fail(acquire_raw(h, **{"wait_timeout": WAIT, **fields}))
        assert_names_field(failure, code, field)
    await assert_nothing_reserved(h)
    await assert_full_call_still_fits(h)


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"input_tokens": 10_000_000}, id="input-at-limit"),
        pytest.param({"input_tokens": 1, "max_output_tokens": 10_000_000}, id="output-at-limit"),
        pytest.param({"input_tokens": 1, "idempotency_key": "k" * 256}, id="key-256"),
        pytest.param(
            {"input_tokens": 1, "labels": {f"{i:0>256}": "v" * 256 for i in range(32)}},
            id="32-labels-of-256",
        ),
        pytest.param({"input_tokens": 1, "labels": {"k": ""}}, id="label-value-empty"),
        pytest.param({"input_tokens": 1, "priority": 4}, id="priority-low"),
        pytest.param({"max_output_tokens": 1}, id="output-only"),
    ],
)
async def test_values_at_the_limits_are_accepted(
    make_harness: MakeHarness, fields: dict[str, Any]
) -> None:
    h = await make_harness()
    lease = await acquire_raw(h, **fields)
    assert lease.reserved_tokens == fields.get("input_tokens", 0) + fields.get(
        "max_output_tokens", 0
    )


async def test_prompt_at_the_length_limit_is_accepted(make_harness: MakeHarness) -> None:
    h = await make_harness()
    lease = await acquire_raw(h, input_tokens=7, prompt="a" * 2_000_000)
    assert lease.reserved_tokens == 7


# -- default tenant ---------------------------------------------------------------------------

WITH_DEFAULT: dict[str, Any] = {
    "pools": [{"name": "p"}],
    "tenants": [{"name": "a"}, {"name": "fallback", "max_concurrency": 1}],
    "default_tenant": "fallback",
}


async def test_unknown_tenant_gets_the_default_tenants_lease_and_limits(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness(WITH_DEFAULT)
    lease = await h.acquire(tenant="stranger", input_tokens=10)
    assert lease.tenant == "fallback"
    assert (await h.tenant("fallback")).in_flight == 1
    assert (await h.tenant("a")).in_flight == 0
    # The default tenant's max_concurrency of 1 now binds every unknown caller.
    failure = await h.fail(h.acquire(tenant="another-stranger", input_tokens=10))
    assert failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert failure.reason == "CONCURRENCY_LIMIT"
    assert failure.metadata["scope"] == "tenant"
    assert failure.metadata["tenant"] == "fallback"
    # A known tenant keeps its own identity and limits.
    assert (await h.acquire(tenant="a", input_tokens=10)).tenant == "a"


async def test_empty_tenant_gets_the_default_tenant(make_harness: MakeHarness) -> None:
    h = await make_harness(WITH_DEFAULT)
    lease = await h.acquire(tenant="", input_tokens=10)
    assert lease.tenant == "fallback"
    assert (await h.tenant("fallback")).in_flight == 1


async def test_caller_mapped_to_the_default_tenant_may_settle_its_lease(
    make_harness: MakeHarness,
) -> None:
    """A caller that names the same (unknown) tenant on every RPC, as a client library does,
    must be able to renew and release the lease it was given."""
    h = await make_harness(WITH_DEFAULT)
    lease = await h.acquire(tenant="stranger", input_tokens=10)
    renewed = await h.renew(lease.lease_id, tenant="stranger")
    assert renewed.lease_id == lease.lease_id
    released = await h.release(lease.lease_id, (4, 0), tenant="stranger")
    assert (released.charged_tokens, released.already_released) == (4, False)
    assert (await h.tenant("fallback")).in_flight == 0


async def test_invalid_fields_are_still_refused_for_the_default_tenant(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness(WITH_DEFAULT)
    failure = await h.fail(acquire_raw(h, tenant="stranger", input_tokens=-5))
    assert_names_field(failure, INVALID, "input_tokens")
    assert (await h.tenant("fallback")).in_flight == 0


# -- calls that can never fit -----------------------------------------------------------------


async def assert_nothing_reserved_loose(h: Harness) -> None:
    status = await h.status()
    for pool in status.pools:
        assert (pool.in_flight, pool.queued) == (0, 0), pool
        if pool.HasField("tokens_per_minute"):
            assert pool.tokens_per_minute.value == pool.tokens_per_minute.limit
    for tenant in status.tenants:
        assert (tenant.in_flight, tenant.queued) == (0, 0), tenant
        if tenant.HasField("tokens_per_minute"):
            assert tenant.tokens_per_minute.value == tenant.tokens_per_minute.limit


@pytest.mark.parametrize(
    ("config", "scope"),
    [
        pytest.param({"pools": [{"name": "p", "tokens_per_minute": 1000}]}, "pool", id="pool"),
        pytest.param(
            {"tenants": [{"name": "a", "tokens_per_minute": 1000}, {"name": "b"}]},
            "tenant",
            id="tenant",
        ),
    ],
)
@pytest.mark.parametrize("wait", [0, 30], ids=["fail-fast", "with-wait"])
async def test_call_bigger_than_a_token_bucket_is_refused_at_once_without_retry_info(
    make_harness: MakeHarness, config: dict[str, Any], scope: str, wait: int
) -> None:
    h = await make_harness(config)
    # The deadline is short: had the call been queued it would end DEADLINE_EXCEEDED instead.
    failure = await h.fail(
        acquire_raw(h, input_tokens=900, max_output_tokens=101, wait_timeout=duration(wait))
    )
    assert failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert failure.reason == "TOKEN_RATE_LIMIT"
    assert failure.domain == "admitd"
    assert failure.retry_after is None  # no RetryInfo: no retry can ever succeed
    assert failure.metadata["scope"] == scope
    assert failure.metadata["requested"] == "1001"
    assert failure.metadata["limit_value"] == "1000"
    await assert_nothing_reserved_loose(h)
    # Exactly the capacity does fit.
    assert (await h.acquire(input_tokens=900, max_output_tokens=100)).reserved_tokens == 1000
