"""Input hardening, proven with hypothesis against the real gRPC server, on both backends.

Arbitrary field values (any int64, odd and huge unicode with NUL, negative and overflowing
durations, unknown enum numbers, random label maps, random lease ids) go to a server on a
socket. Whatever arrives, the server

- answers with a code a client can act on: OK, INVALID_ARGUMENT, NOT_FOUND,
  RESOURCE_EXHAUSTED (and PERMISSION_DENIED for a Release/Renew naming another tenant),
  never UNKNOWN or INTERNAL;
- reserves nothing for a call it refuses: GetStatus (every level, in-flight and queue count)
  is the same after a failed call as before it;
- leaks nothing: after every example all leases granted in it are released, and every level
  is back where it started, moved only by the usage that was charged.

One server per backend serves every example (``support.fuzz_server``, on a ManualClock,
which each example moves on by more than a lease TTL so that buckets refill and remembered
ids are forgotten). Raw garbage bytes and request sizes: ``test_raw_requests.py``. Settings
and seeds: ``support.fuzzing``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from hypothesis import given
from hypothesis import strategies as st

from admitd.v1 import admission_pb2 as pb
from support.fuzz_server import (
    ANSWERS,
    BETWEEN_EXAMPLES,
    LEASE_ANSWERS,
    MAX_WAIT,
    Code,
    Served,
    assert_unchanged,
    state,
)
from support.fuzzing import fuzz_settings, run
from support.harness import Harness

MAX_TOKENS = 10_000_000  # the server's bound on each token field
UNCHECKED = "unchecked-"  # prefix of lease ids admitted without the store (fail_open)

# -- strategies -------------------------------------------------------------------------------

INT64 = st.integers(-(2**63), 2**63 - 1)
INT32 = st.integers(-(2**31), 2**31 - 1)
EDGES = st.sampled_from([0, 1, -1, MAX_TOKENS, MAX_TOKENS + 1, 2**31, 2**63 - 1, -(2**63)])
TOKENS = st.one_of(st.integers(0, 600), EDGES, INT64)
# Any code point but surrogates (protobuf strings are UTF-8), NUL and the rest included.
TEXT = st.text(st.characters(codec="utf-8"), max_size=40)
HUGE = st.builds(
    lambda unit, times: unit * times,
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=3),
    st.integers(1, 20_000),
)
ODD = st.one_of(TEXT, HUGE)
TENANTS = st.one_of(st.sampled_from(["a", "b", ""]), ODD)
POOLS = st.one_of(st.sampled_from(["p", "tight", ""]), ODD)
DURATIONS = st.builds(
    duration_pb2.Duration,
    seconds=st.one_of(st.integers(0, 3), st.integers(-3, 0), INT64),
    nanos=st.one_of(st.integers(0, 999_999_999), st.sampled_from([10**9, -1]), INT32),
)
LABELS = st.dictionaries(
    st.one_of(TEXT, st.text(max_size=300)), st.one_of(TEXT, st.text(max_size=300)), max_size=40
)


@st.composite
def acquire_requests(draw: st.DrawFn) -> pb.AcquireRequest:
    request = pb.AcquireRequest(
        tenant=draw(TENANTS),
        pool=draw(POOLS),
        input_tokens=draw(TOKENS),
        max_output_tokens=draw(TOKENS),
        priority=draw(st.one_of(st.integers(0, 4), INT32)),  # type: ignore[arg-type]
        idempotency_key=draw(st.one_of(st.sampled_from(["", "k1", "k2"]), ODD)),
        prompt=draw(st.one_of(st.just(""), ODD)),
        labels=draw(LABELS),
    )
    wait = draw(st.none() | DURATIONS)
    if wait is not None:
        request.wait_timeout.CopyFrom(wait)
    return request


# -- one example ------------------------------------------------------------------------------


@dataclass
class Granted:
    lease: pb.Lease
    charged: int | None = None  # set once released
    charged_usd: float = 0.0


@dataclass
class Example:
    h: Harness
    seen: set[str]  # every lease id ever granted by this server (replays return old ones)
    start: dict[str, float] = field(default_factory=dict)
    leases: dict[str, Granted] = field(default_factory=dict)
    clock_moved: bool = False
    log: list[str] = field(default_factory=list)

    async def call(self, rpc: Any, request: Message, allowed: set[Code]) -> tuple[Any, Code]:
        """Run one RPC; when it waits in the queue, time it out by moving the clock."""
        task = asyncio.ensure_future(rpc(request, timeout=30))
        deadline = time.monotonic() + 20
        while not task.done():
            await asyncio.wait({task}, timeout=0.005)
            if task.done():
                break
            assert time.monotonic() < deadline, f"no answer to {request!r}"
            if sum(p.queued for p in (await self.h.status()).pools):
                await self.h.advance(MAX_WAIT)  # a waiter: let its bounded wait run out
                self.clock_moved = True
        error = task.exception()
        if isinstance(error, grpc.aio.AioRpcError):
            self.log.append(f"{type(request).__name__} -> {error.code().name} {error.details()}")
            assert error.code() in allowed, (error.code(), error.details(), request)
            return None, error.code()
        response = task.result()
        self.log.append(f"{type(request).__name__} -> OK")
        return response, Code.OK

    async def acquire(self, request: pb.AcquireRequest) -> None:
        before = await state(self.h)
        lease, _code = await self.call(self.h.stub.Acquire, request, ANSWERS)
        after = await state(self.h)
        if lease is None:
            assert_unchanged(before, after, self.clock_moved)
            return
        assert (lease.tenant, lease.pool) in {(t, p) for t in "ab" for p in ("p", "tight")}
        assert len(lease.lease_id) == 32
        assert lease.reserved_tokens > 0
        if request.input_tokens:
            assert lease.reserved_tokens == request.input_tokens + request.max_output_tokens
        if lease.lease_id in self.seen:  # an idempotent replay reserves nothing again
            assert after[f"pool:{lease.pool}:in_flight"] == before[f"pool:{lease.pool}:in_flight"]
            return
        self.seen.add(lease.lease_id)
        self.leases[lease.lease_id] = Granted(lease)
        in_flight = f"pool:{lease.pool}:in_flight"
        assert after[in_flight] == before[in_flight] + 1

    async def release(self, request: pb.ReleaseRequest) -> None:
        before = await state(self.h)
        settled, _ = await self.call(self.h.stub.Release, request, LEASE_ANSWERS)
        after = await state(self.h)
        granted = self.leases.get(request.lease_id)
        if settled is None or request.lease_id.startswith(UNCHECKED):
            # An "unchecked-" id names a lease admitted while the store was down (fail_open);
            # nothing was reserved for it, so its Release settles nothing (and says OK).
            assert_unchanged(before, after, self.clock_moved)
            return
        assert granted is not None, f"released an unknown lease {request.lease_id!r}"
        if granted.charged is not None:
            assert settled.already_released
            assert settled.charged_tokens == granted.charged
            return
        assert not settled.already_released
        reserved = granted.lease.reserved_tokens
        if request.HasField("usage"):
            usage = request.usage
            assert 0 <= usage.input_tokens <= MAX_TOKENS
            assert 0 <= usage.output_tokens <= MAX_TOKENS
            assert settled.charged_tokens == usage.input_tokens + usage.output_tokens
        else:
            assert settled.charged_tokens == reserved
        assert settled.refunded_tokens == max(0, reserved - settled.charged_tokens)
        assert 0 <= settled.refunded_tokens <= reserved
        granted.charged, granted.charged_usd = settled.charged_tokens, settled.charged_usd
        in_flight = f"pool:{granted.lease.pool}:in_flight"
        assert after[in_flight] == before[in_flight] - 1

    async def renew(self, request: pb.RenewRequest) -> None:
        before = await state(self.h)
        renewed, _ = await self.call(self.h.stub.Renew, request, LEASE_ANSWERS)
        assert_unchanged(before, await state(self.h), self.clock_moved)  # renew moves no level
        if renewed is not None:
            granted = self.leases.get(request.lease_id)
            assert granted is not None, request
            assert granted.charged is None, request
            assert renewed.lease_id == request.lease_id

    async def finish(self) -> None:
        """Release what is still held (charging nothing) and check every level is back at its
        start, moved only by what was charged."""
        for lease_id, granted in self.leases.items():
            if granted.charged is None:
                settled = await self.h.release(lease_id, (0, 0))
                assert not settled.already_released
                granted.charged, granted.charged_usd = 0, 0.0
        end = await state(self.h)
        expected = dict(self.start)
        nano = {k: round(v * 1e9) for k, v in self.start.items() if k.endswith("usd_per_day")}
        for granted in self.leases.values():
            lease, charged = granted.lease, granted.charged or 0
            for scope in (f"pool:{lease.pool}", f"tenant:{lease.tenant}", "global"):
                for key, delta in (
                    (f"{scope}:tokens_per_minute", -charged),
                    (f"{scope}:requests_per_minute", -1),
                    (f"{scope}:tokens_per_day", charged),
                ):
                    if key in expected:
                        expected[key] += delta
                if f"{scope}:usd_per_day" in nano:
                    nano[f"{scope}:usd_per_day"] += round(granted.charged_usd * 1e9)
        for key, value in end.items():
            if key.endswith(("in_flight", "queued", "concurrency")):
                assert value == self.start[key] == 0, (key, value, self.log)
            elif key.endswith("usd_per_day"):
                assert round(value * 1e9) == nano[key], (key, value, nano[key], self.log)
            elif self.clock_moved and key.endswith("per_minute"):
                assert value >= expected[key], (key, value, expected[key], self.log)
            else:
                assert value == expected[key], (key, value, expected[key], self.log)


def lease_ids(example: Example) -> st.SearchStrategy[str]:
    known = sorted(example.leases)
    options: list[st.SearchStrategy[str]] = [
        ODD,
        st.text("0123456789abcdef", min_size=32, max_size=32),
        st.sampled_from(["unchecked-", "unchecked-x", "x" * 64, "x" * 65]),
    ]
    if known:
        options.insert(0, st.sampled_from(known))
        options.append(st.sampled_from(known).map(lambda i: i.upper()))
    return st.one_of(options)


async def run_example(h: Harness, seen: set[str], data: st.DataObject) -> None:
    example = Example(h, seen)
    example.start = await state(h)
    try:
        await run_calls(example, data)
        await example.finish()
    finally:
        await cleanup(example)


async def cleanup(example: Example) -> None:
    """After a failed example too: give back what it holds, so the next starts clean."""
    for lease_id in example.leases:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await example.h.release(lease_id, (0, 0))
    await example.h.advance(BETWEEN_EXAMPLES)


async def run_calls(example: Example, data: st.DataObject) -> None:
    for _ in range(data.draw(st.integers(1, 6), label="calls")):
        kind = data.draw(st.sampled_from(["acquire", "acquire", "release", "renew"]))
        if kind == "acquire" or (not example.leases and kind != "release"):
            await example.acquire(data.draw(acquire_requests(), label="acquire"))
        elif kind == "release":
            request = pb.ReleaseRequest(
                lease_id=data.draw(lease_ids(example), label="lease_id"),
                outcome=data.draw(st.one_of(st.integers(0, 5), INT32)),  # type: ignore[arg-type]
                tenant=data.draw(TENANTS, label="tenant"),
            )
            if data.draw(st.booleans(), label="has usage"):
                request.usage.input_tokens = data.draw(TOKENS, label="usage.input")
                request.usage.output_tokens = data.draw(TOKENS, label="usage.output")
            await example.release(request)
        else:
            renewal = pb.RenewRequest(
                lease_id=data.draw(lease_ids(example), label="lease_id"),
                tenant=data.draw(TENANTS, label="tenant"),
            )
            if data.draw(st.booleans(), label="has extend_by"):
                renewal.extend_by.CopyFrom(data.draw(DURATIONS, label="extend_by"))
            await example.renew(renewal)


@pytest.mark.slow
def test_arbitrary_fields_never_crash_leak_or_reserve_on_error(fuzz_server: Served) -> None:
    seen: set[str] = set()

    @fuzz_settings(max_examples=60)
    @given(st.data())
    def example(data: st.DataObject) -> None:
        fuzz_server.runner.run(run_example(fuzz_server.h, seen, data))

    run(example)
    assert seen, "no example was ever admitted: the strategies miss the happy path"
