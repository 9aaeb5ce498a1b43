"""Requests as bytes on the wire, against the real gRPC server: garbage (random bytes, and
valid requests mutated) always gets an error a client can act on and leaves the server
healthy, with nothing reserved (on both backends, with hypothesis); an undecodable request is
INVALID_ARGUMENT; and sizes at gRPC's receive limit: a 10 MB request is refused before it is
read, the largest prompt validation can see reaches it, and a long whitespace prompt is
counted. The fuzzed server: ``support.fuzz_server``.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2
from hypothesis import given
from hypothesis import strategies as st

from admitd.v1 import admission_pb2 as pb
from support.fuzz_server import BETWEEN_EXAMPLES, LEASE_ANSWERS, Code, Served, state
from support.fuzzing import fuzz_settings, run
from support.harness import Harness
from support.health import health

MAX_PROMPT_CHARS = 2_000_000  # the server's bound on a prompt

# -- raw bytes --------------------------------------------------------------------------------

METHODS: dict[str, type[Message]] = {
    "Acquire": pb.AcquireRequest,
    "Release": pb.ReleaseRequest,
    "Renew": pb.RenewRequest,
    "GetStatus": pb.GetStatusRequest,
}
VALID = {
    "Acquire": pb.AcquireRequest(tenant="a", pool="p", input_tokens=5).SerializeToString(),
    "Release": pb.ReleaseRequest(lease_id="ab" * 16).SerializeToString(),
    "Renew": pb.RenewRequest(lease_id="ab" * 16).SerializeToString(),
    "GetStatus": b"",
}


@st.composite
def payloads(draw: st.DrawFn) -> tuple[str, bytes]:
    method = draw(st.sampled_from(sorted(METHODS)))
    if draw(st.booleans()):
        return method, draw(st.binary(max_size=300))
    data = bytearray(VALID[method] + draw(st.binary(max_size=20)))  # mutate a valid one
    for _ in range(draw(st.integers(0, 4))):
        if data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
    return method, bytes(data)


def decodes(method: str, payload: bytes) -> bool:
    try:
        METHODS[method].FromString(payload)
    except DecodeError:
        return False
    return True


async def send_raw(h: Harness, method: str, payload: bytes) -> tuple[Code, bytes | None]:
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = h.channel.unary_unary(
        f"/admitd.v1.Admission/{method}"
    )  # identity serializers
    try:
        return Code.OK, await call(payload, timeout=10)
    except grpc.aio.AioRpcError as error:
        return error.code(), None


def test_garbage_bytes_get_an_error_and_the_server_stays_healthy(fuzz_server: Served) -> None:
    h = fuzz_server.h
    start = fuzz_server.runner.run(state(h))
    undecodable: list[Code] = []

    @fuzz_settings(max_examples=150)
    @given(payloads())
    def example(sent: tuple[str, bytes]) -> None:
        method, payload = sent
        code, response = fuzz_server.runner.run(send_raw(h, method, payload))
        if not decodes(method, payload):
            assert code == Code.INVALID_ARGUMENT, (code, payload)
            undecodable.append(code)
            return
        assert code in LEASE_ANSWERS, (code, method, payload)
        if code == Code.OK and method == "Acquire":
            assert response is not None
            lease = pb.Lease.FromString(response)
            fuzz_server.runner.run(h.release(lease.lease_id, (0, 0)))
            fuzz_server.runner.run(h.advance(BETWEEN_EXAMPLES))

    run(example)
    assert undecodable, "no undecodable payload was sent"

    async def still_fine() -> None:
        assert await health(h.channel) == health_pb2.HealthCheckResponse.SERVING
        end = await state(h)
        for key in end:
            if key.endswith(("in_flight", "queued", "concurrency")):
                assert end[key] == start[key] == 0, key
        lease = await h.acquire(tenant="a", pool="p", input_tokens=3)
        await h.release(lease.lease_id, (0, 0))

    fuzz_server.runner.run(still_fine())


async def test_an_undecodable_request_is_invalid_argument(make_harness: Any) -> None:
    h = await make_harness()
    code, _ = await send_raw(h, "Acquire", b"\xff\xff\xff")
    assert code == Code.INVALID_ARGUMENT


# -- sizes ------------------------------------------------------------------------------------


async def test_a_10mb_request_is_refused_before_it_is_read(make_harness: Any) -> None:
    """A 10 MB request is refused by gRPC's receive limit (RESOURCE_EXHAUSTED, nothing
    reserved) and the server carries on."""
    h = await make_harness()
    start = await state(h)
    failure = await h.fail(h.acquire(input_tokens=1, prompt="x" * 10_000_000))
    assert failure.code == Code.RESOURCE_EXHAUSTED
    assert "larger than max" in failure.message
    assert await state(h) == start
    assert await health(h.channel) == health_pb2.HealthCheckResponse.SERVING
    await h.release((await h.acquire(input_tokens=1)).lease_id)


async def test_the_largest_prompt_reaches_validation(make_harness: Any) -> None:
    """A prompt one character over MAX_PROMPT_CHARS, each character 4 UTF-8 bytes (8 MB on
    the wire), gets admitd's own answer naming the field, not a transport error: the receive
    limit must be above the largest request validation can see (4 x 2M chars + the rest)."""
    h = await make_harness()
    failure = await h.fail(h.acquire(prompt="\U0001f600" * (MAX_PROMPT_CHARS + 1)))
    assert failure.code == Code.INVALID_ARGUMENT
    assert failure.field_violations == ["prompt"]


@pytest.mark.parametrize("unit", [" ", "\t", "\u3000", " \t"])
async def test_a_long_whitespace_prompt_is_counted(make_harness: Any, unit: str) -> None:
    """tiktoken's o200k_base regex overflows its backtracking stack on a whitespace run of
    about 1M characters (a ValueError): the call must still be counted and admitted."""
    h = await make_harness()
    prompt = unit * (1_000_000 // len(unit))
    lease = await h.acquire(prompt=prompt)
    assert lease.input_tokens > 0
    await h.release(lease.lease_id, (0, 0))
