"""Queue visibility: a streamed wait (AcquireStream) reports the caller's position and an
estimated wait as they change, then the lease; QUEUE_FULL/QUEUE_TIMEOUT rejections carry the
estimate; and the estimate is checked against what actually happens in a scripted scenario.
"""

from __future__ import annotations

from typing import Any

import grpc

from admitd.v1 import admission_pb2 as pb
from support.harness import Harness, MakeHarness, seconds

ONE_SLOT: dict[str, Any] = {"pools": [{"name": "p", "max_concurrency": 1}]}


class Stream:
    """An AcquireStream call, read message by message."""

    def __init__(self, h: Harness, wait: float = 600, **fields: Any) -> None:
        request = pb.AcquireRequest(tenant=fields.pop("tenant", "a"), pool="p", **fields)
        request.wait_timeout.CopyFrom(seconds(wait))
        self.call = h.track(
            h.stub.AcquireStream(pb.AcquireStreamRequest(acquire=request), timeout=600)
        )

    async def next(self) -> pb.AcquireStreamResponse:
        message = await self.call.read()
        assert message is not grpc.aio.EOF, "the stream ended early"
        assert isinstance(message, pb.AcquireStreamResponse)
        return message

    async def position(self) -> pb.QueuePosition:
        message = await self.next()
        assert message.WhichOneof("update") == "queued", message
        return message.queued


def wait_of(position: pb.QueuePosition) -> float:
    return position.estimated_wait.ToTimedelta().total_seconds()


async def test_a_streamed_wait_reports_its_place_then_the_lease(make_harness: MakeHarness) -> None:
    h = await make_harness(ONE_SLOT)
    holder = await h.acquire(input_tokens=1)
    streams = []
    for i in range(3):
        streams.append(Stream(h, input_tokens=1))
        first = await streams[-1].position()
        assert (first.position, first.depth) == (i, i + 1)
    await h.release(holder.lease_id)
    lease = (await streams[0].next()).lease
    assert lease.reserved_tokens == 1
    assert (await streams[0].call.read()) is grpc.aio.EOF  # the lease is the last message
    await h.advance(1.0)  # one update_interval: the others look again and have moved up
    assert [(await s.position()).position for s in streams[1:]] == [0, 1]
    await h.release(lease.lease_id)
    assert (await streams[1].next()).WhichOneof("update") == "lease"


async def test_a_stream_that_cannot_wait_ends_with_the_rejection(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness(ONE_SLOT)
    await h.acquire(input_tokens=1)
    stream = Stream(h, wait=0, input_tokens=1)
    failure = await h.fail(stream.call.read())
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "CONCURRENCY_LIMIT",
    )
    assert (await h.pool("p")).queued == 0


async def test_a_cancelled_stream_leaves_the_queue(make_harness: MakeHarness) -> None:
    h = await make_harness(ONE_SLOT)
    await h.acquire(input_tokens=1)
    stream = Stream(h, input_tokens=1)
    await stream.position()
    stream.call.cancel()
    for _ in range(200):
        if (await h.pool("p")).queued == 0:
            break
        await h.advance(0)
    assert (await h.pool("p")).queued == 0


async def test_queue_timeout_and_queue_full_carry_the_estimate(make_harness: MakeHarness) -> None:
    h = await make_harness({**ONE_SLOT, "queue": {"max_length": 2}})
    await h.acquire(input_tokens=1)
    first = h.acquire_later(input_tokens=1, wait_timeout=5)
    await h.until_queued("p", 1)
    second = h.acquire_later(input_tokens=1, wait_timeout=60)
    await h.until_queued("p", 2)
    full = await h.fail(h.acquire(input_tokens=1, wait_timeout=60))
    assert full.reason == "QUEUE_FULL"
    assert full.metadata["queue_depth"] == "2"
    assert float(full.metadata["estimated_wait_seconds"]) > 0
    await h.advance(5.0)
    timeout = await h.fail(first)
    assert timeout.reason == "QUEUE_TIMEOUT"
    assert (timeout.metadata["queue_position"], timeout.metadata["queue_depth"]) == ("0", "2")
    assert float(timeout.metadata["estimated_wait_seconds"]) > 0
    second.cancel()


async def test_the_estimate_is_close_to_the_actual_wait(make_harness: MakeHarness) -> None:
    """A scripted scenario: one slot, each lease held 2 s, so the pool grants 0.5 a second.
    A caller joining behind 4 others is told about 10 s, and gets its lease after 10 s."""
    h = await make_harness({**ONE_SLOT, "lease": {"ttl": 600}})
    lease = await h.acquire(input_tokens=1)
    for _ in range(10):  # the pool's recent history: a grant every 2 s
        await h.advance(2.0)
        await h.release(lease.lease_id)
        lease = await h.acquire(input_tokens=1)
    ahead = []
    for i in range(4):  # one at a time, so the queue order is the list's
        ahead.append(h.acquire_later(input_tokens=1, wait_timeout=600))
        await h.until_queued("p", i + 1)
    stream = Stream(h, input_tokens=1)
    told = await stream.position()
    assert (told.position, told.depth) == (4, 5)
    started = h.engine.clock.now()
    for waiter in ahead:
        await h.advance(2.0)
        await h.release(lease.lease_id)
        lease = await waiter
    await h.advance(2.0)
    await h.release(lease.lease_id)
    positions = []
    while (message := await stream.next()).WhichOneof("update") == "queued":
        positions.append(message.queued.position)
    assert positions == sorted(positions, reverse=True)  # it only ever moved up
    assert message.lease.queued_for.ToTimedelta().total_seconds() == 10.0
    actual = h.engine.clock.now() - started
    assert actual == 10.0
    # Told 10 s too: the rate of the last 20 s (10 grants) predicted the next 5 exactly.
    assert abs(wait_of(told) - actual) <= 0.5, (wait_of(told), actual)
