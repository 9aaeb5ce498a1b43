"""A Release or Renew with bad input gets its exact error, names its field, and leaves the
lease as it was: held, and settled normally afterwards (README.md, "How admission works",
bad input). Acquire: ``test_invalid_acquire.py``.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from admitd.v1 import admission_pb2 as pb
from support.decoding import assert_names_field
from support.harness import Harness, MakeHarness, duration

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
FULL = 1000  # the pool's tokens per minute


async def _held_lease(h: Harness) -> pb.Lease:
    lease = await h.acquire(input_tokens=100, max_output_tokens=100)
    assert (await h.pool("p")).in_flight == 1
    return lease


async def _assert_lease_untouched(h: Harness, lease: pb.Lease) -> None:
    """The refused Release/Renew changed nothing: the lease is held, and settles normally."""
    pool = await h.pool("p")
    assert pool.in_flight == 1
    assert pool.tokens_per_minute.value == FULL - 200
    released = await h.release(lease.lease_id, (50, 50))
    assert (released.charged_tokens, released.refunded_tokens) == (100, 100)
    assert not released.already_released


LEASE_CONFIG: dict[str, Any] = {
    "pools": [{"name": "p", "tokens_per_minute": FULL}],
    "lease": {"ttl": "120s", "max_extend": "600s"},
}


@pytest.mark.parametrize("lease_id", ["", "x" * 65], ids=["empty", "too-long"])
@pytest.mark.parametrize("rpc", ["release", "renew"])
async def test_malformed_lease_id_is_invalid(
    make_harness: MakeHarness, rpc: str, lease_id: str
) -> None:
    h = await make_harness(LEASE_CONFIG)
    lease = await _held_lease(h)
    failure = await h.fail(getattr(h, rpc)(lease_id))
    assert_names_field(failure, INVALID, "lease_id")
    await _assert_lease_untouched(h, lease)


@pytest.mark.parametrize("rpc", ["release", "renew"])
async def test_unknown_lease_id_is_not_found(make_harness: MakeHarness, rpc: str) -> None:
    h = await make_harness(LEASE_CONFIG)
    lease = await _held_lease(h)
    unknown = "0" * 32
    failure = await h.fail(getattr(h, rpc)(unknown))
    assert_names_field(failure, NOT_FOUND, "lease_id")
    assert unknown in failure.message
    await _assert_lease_untouched(h, lease)


@pytest.mark.parametrize(
    ("usage", "field"),
    [
        pytest.param((-1, 0), "usage.input_tokens", id="negative-input"),
        pytest.param((0, -1), "usage.output_tokens", id="negative-output"),
        pytest.param((-(2**63), 5), "usage.input_tokens", id="most-negative-input"),
        pytest.param((10_000_001, 0), "usage.input_tokens", id="huge-input"),
        pytest.param((0, 2**63 - 1), "usage.output_tokens", id="huge-output"),
    ],
)
async def test_release_with_bad_usage_is_invalid(
    make_harness: MakeHarness, usage: tuple[int, int], field: str
) -> None:
    h = await make_harness(LEASE_CONFIG)
    lease = await _held_lease(h)
    failure = await h.fail(h.release(lease.lease_id, usage))
    assert_names_field(failure, INVALID, field)
    await _assert_lease_untouched(h, lease)


@pytest.mark.parametrize("outcome", [6, 99, -1])
async def test_release_with_unknown_outcome_is_invalid(
    make_harness: MakeHarness, outcome: int
) -> None:
    h = await make_harness(LEASE_CONFIG)
    lease = await _held_lease(h)
    failure = await h.fail(h.release(lease.lease_id, (1, 1), outcome=outcome))
    assert_names_field(failure, INVALID, "outcome")
    assert str(outcome) in failure.message
    await _assert_lease_untouched(h, lease)


@pytest.mark.parametrize(
    "extend_by",
    [
        pytest.param(duration(-1), id="negative-seconds"),
        pytest.param(duration(0, -1), id="negative-nanos"),
        pytest.param(duration(601), id="above-max-extend"),
        pytest.param(duration(600, 1), id="just-above-max-extend"),
        pytest.param(duration(0, 1_000_000_000), id="nanos-overflow"),
        pytest.param(duration(10**12), id="absurd"),
    ],
)
async def test_renew_with_bad_extend_by_is_invalid(
    make_harness: MakeHarness, extend_by: duration_pb2.Duration
) -> None:
    h = await make_harness(LEASE_CONFIG)
    lease = await _held_lease(h)
    request = pb.RenewRequest(lease_id=lease.lease_id, extend_by=extend_by)
    failure = await h.fail(h.stub.Renew(request, timeout=5))
    assert_names_field(failure, INVALID, "extend_by")
    # The expiry did not move: after the TTL (not the asked extension) the lease is gone.
    await h.advance(121)
    assert (await h.pool("p")).in_flight == 0
    assert (await h.fail(h.renew(lease.lease_id))).reason == "LEASE_EXPIRED"


async def test_renew_by_exactly_max_extend_is_accepted(make_harness: MakeHarness) -> None:
    h = await make_harness(LEASE_CONFIG)
    lease = await _held_lease(h)
    renewed = await h.renew(lease.lease_id, extend_by=600)
    assert renewed.expires_at.ToNanoseconds() - lease.expires_at.ToNanoseconds() == 480 * 10**9
