"""Answers that say what happened, under faults: a draining replica answers every admission
UNAVAILABLE (none CANCELLED), a queue timeout is answered on time however many waiters time
out together and however slow the store is, and a grant made within a wait is the waiter's
even when its message arrives after the wait ran out.

Real processes where the fault needs one (SIGTERM of a replica); the manual clock where time
is the subject. Waits for real-world conditions are bounded polls (``until``).
"""

from __future__ import annotations

import asyncio
import statistics
import uuid
from collections import Counter
from typing import Any

import grpc
import pytest

from admitd._clock import settle
from admitd._waits import LOOK_BUDGET
from admitd.v1 import admission_pb2 as pb
from admitd.v1 import admission_pb2_grpc as pb_grpc
from support.decoding import decode
from support.harness import MakeHarness, seconds, start_harness
from support.polling import until
from support.processes import AdmitdProcess
from support.redis_server import RedisServer

Code = grpc.StatusCode


def acquire(wait: float = 0.0, **fields: Any) -> pb.AcquireRequest:
    request = pb.AcquireRequest(tenant="a", pool="p", **fields)
    if wait:
        request.wait_timeout.CopyFrom(seconds(wait))
    return request


async def code_of(call: Any) -> str:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code().name
    return "OK"


async def stream_code(stub: pb_grpc.AdmissionAsyncStub) -> str:
    try:
        async for _ in stub.AcquireStream(
            pb.AcquireStreamRequest(acquire=acquire(wait=60, input_tokens=1)), timeout=90
        ):
            pass
    except grpc.aio.AioRpcError as error:
        return error.code().name
    return "OK"


@pytest.mark.slow
async def test_a_draining_replica_answers_every_admission_unavailable(
    redis_server: RedisServer,
) -> None:
    """SIGTERM a replica while callers wait on it (Acquire, AcquireStream, WaitTicket, a
    dedup follower) and others are in flight (their prompts being counted): every one is
    answered UNAVAILABLE, so its client goes to another replica; none is cut off CANCELLED
    by the server's shutdown grace, and the waiters leave the shared queue."""
    prefix = f"drain-{uuid.uuid4().hex[:8]}"
    config = {
        "backend": {"kind": "redis", "url": redis_server.url, "key_prefix": prefix, "timeout": 2},
        "pools": [{"name": "p", "max_concurrency": 1}],
        "tenants": [{"name": "a"}],
        "drain_delay": 0.2,
        "shutdown_grace": 1,
    }
    replica = AdmitdProcess(config, "draining")
    other = AdmitdProcess(config, "other")
    channel = grpc.aio.insecure_channel(replica.target)
    other_channel = grpc.aio.insecure_channel(other.target)
    stub, on_other = pb_grpc.AdmissionStub(channel), pb_grpc.AdmissionStub(other_channel)
    try:
        held = await stub.Acquire(acquire(input_tokens=1, dedup_key="d"), timeout=10)
        calls = [
            code_of(stub.Acquire(acquire(wait=60, input_tokens=1), timeout=90)) for _ in range(30)
        ]
        calls += [stream_code(stub) for _ in range(5)]
        follower = stub.Acquire(acquire(wait=60, input_tokens=1, dedup_key="d"), timeout=90)
        calls.append(code_of(follower))
        tickets = [
            await stub.Enqueue(pb.EnqueueRequest(acquire=acquire(input_tokens=1)), timeout=10)
            for _ in range(3)
        ]
        for ticket in tickets:
            request = pb.WaitTicketRequest(ticket_id=ticket.ticket_id, tenant="a")
            request.wait_timeout.CopyFrom(seconds(60))
            calls.append(code_of(stub.WaitTicket(request, timeout=90)))
        answers = [asyncio.ensure_future(call) for call in calls]

        async def all_waiting() -> bool:
            status = await on_other.GetStatus(pb.GetStatusRequest(), timeout=5)
            return status.pools[0].queued >= 38  # 35 Acquire waiters, 3 tickets

        await until(all_waiting, 30, "the waiters queued")
        # Prompts that take a while to count: in flight when the drain begins.
        counting = [
            asyncio.ensure_future(
                code_of(stub.Acquire(acquire(wait=60, prompt="word " * 200_000), timeout=90))
            )
            for _ in range(3)
        ]
        await asyncio.sleep(0.05)  # pacing: let them reach the server, nothing waits on it
        replica.process.terminate()
        codes = Counter(await asyncio.wait_for(asyncio.gather(*answers, *counting), 60))
        assert codes == Counter({"UNAVAILABLE": len(answers) + len(counting)}), codes
        assert replica.process.wait(30) == 0

        async def only_tickets_queued() -> bool:  # the waiters left; deferred tickets stay
            status = await on_other.GetStatus(pb.GetStatusRequest(), timeout=5)
            return status.pools[0].queued == 3

        await until(only_tickets_queued, 15, "the drained waiters left the queue")
        release = pb.ReleaseRequest(lease_id=held.lease_id, tenant="a")
        assert not (await on_other.Release(release, timeout=10)).already_released
    finally:
        await channel.close()
        await other_channel.close()
        replica.kill()
        replica.stop()
        other.stop()


async def test_a_queue_timeout_is_answered_before_the_waiter_leaves_the_queue(
    make_harness: MakeHarness,
) -> None:
    """The caller hears QUEUE_TIMEOUT when its wait runs out, exactly, not once the store
    has taken its place out of the queue (that round trip, times many waiters timing out
    together, made the last answer a second late)."""
    h = await make_harness({"pools": [{"name": "p", "max_concurrency": 1}]})
    await h.acquire(input_tokens=1)
    waiter = h.acquire_later(input_tokens=1, wait_timeout=5)
    await h.until_queued("p", 1)  # and its wait's timer set
    backend = h.engine.backend
    cancel = backend.cancel
    store_free = asyncio.Event()

    async def slow_cancel(lease_id: str) -> Any:
        await store_free.wait()
        return await cancel(lease_id)

    backend.cancel = slow_cancel
    try:
        advancing = asyncio.ensure_future(h.advance(5))  # its idle() may wait for the cancel
        failure = decode(await asyncio.wait_for(_error(waiter), 10))
        assert (failure.reason, failure.metadata["waited_seconds"]) == ("QUEUE_TIMEOUT", "5.000")
        assert (failure.metadata["queue_position"], failure.metadata["queue_depth"]) == ("0", "1")
        assert (await h.pool("p")).queued == 1  # answered; its place not given up yet
    finally:
        store_free.set()  # else the engine's close would wait for the cancel forever
        backend.cancel = cancel
    await advancing

    async def left() -> bool:
        return (await h.pool("p")).queued == 0

    await until(left, 10, "the waiter left the queue")


async def test_a_queue_timeout_waits_for_its_position_at_most_the_look_budget(
    make_harness: MakeHarness,
) -> None:
    """The QUEUE_TIMEOUT is answered by the wait's timer, and the look for where the waiter
    stood (its estimate) delays it by LOOK_BUDGET at most: with the store not answering that
    look, the answer comes LOOK_BUDGET after the wait ran out (on the injected clock), without
    a position, not when the store answers."""
    h = await make_harness({"pools": [{"name": "p", "max_concurrency": 1}]})
    await h.acquire(input_tokens=1)
    waiter = h.acquire_later(input_tokens=1, wait_timeout=5)
    await h.until_queued("p", 1)  # and its wait's timer set
    backend = h.engine.backend
    look = backend.look
    looking, store_free = asyncio.Event(), asyncio.Event()

    async def slow_look(lease_id: str, *, claim: bool) -> Any:
        looking.set()
        await store_free.wait()
        return await look(lease_id, claim=claim)

    backend.look = slow_look
    try:
        await h.advance(5)
        await asyncio.wait_for(looking.wait(), 10)
        await settle()
        assert not waiter.done(), "answered before the look's budget ran out"
        advancing = asyncio.ensure_future(h.advance(LOOK_BUDGET))  # its idle() awaits the look
        failure = decode(await asyncio.wait_for(_error(waiter), 10))
        assert failure.reason == "QUEUE_TIMEOUT"
        assert float(failure.metadata["waited_seconds"]) == pytest.approx(5 + LOOK_BUDGET)
        assert "queue_position" not in failure.metadata  # the store did not say in time
    finally:
        store_free.set()  # else the engine's close would wait for the look forever
        backend.look = look
    await advancing

    async def left() -> bool:
        return (await h.pool("p")).queued == 0

    await until(left, 10, "the waiter left the queue")


async def test_a_grant_made_within_the_wait_is_the_waiters_though_its_message_is_late(
    make_harness: MakeHarness,
) -> None:
    """The store granted the waiter's call within its wait, but the grant had not reached the
    RPC when the wait ran out (another replica made it: pub/sub, a look and a claim behind).
    The caller gets the lease, not QUEUE_TIMEOUT: how fast a grant travels must not decide
    which replica's callers are served when the head of the queue is at its deadline."""
    h = await make_harness({"pools": [{"name": "p", "max_concurrency": 1}]})
    holder = await h.acquire(input_tokens=1)
    waiter = h.acquire_later(input_tokens=1, wait_timeout=5)
    await h.until_queued("p", 1)  # and its wait's timer set
    waits = h.engine.waits
    hand_over = waits.hand_over
    late: list[str] = []

    def on_its_way(lease: Any) -> bool:  # the message is still travelling
        late.append(lease.lease_id)
        return True

    waits.hand_over = on_its_way
    try:
        await h.release(holder.lease_id)  # grants the waiter in the store
        assert len(set(late)) == 1, "the release did not grant the waiter"  # (Redis: twice)
        assert not waiter.done()
        await h.advance(5)
        lease = await asyncio.wait_for(waiter, 10)
    finally:
        waits.hand_over = hand_over
    assert lease.lease_id == late[0]
    assert (await h.pool("p")).in_flight == 1
    assert not (await h.release(lease.lease_id)).already_released
    assert (await h.pool("p")).in_flight == 0


async def _error(task: asyncio.Task[Any]) -> grpc.aio.AioRpcError:
    try:
        await task
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError("expected the RPC to fail")


@pytest.mark.redis
async def test_a_waiter_deep_in_one_class_learns_its_exact_position_at_once(
    shared_redis: RedisServer,
) -> None:
    """With one priority class waiting, a look is the waiter's rank in the class (exact, at
    any depth), not a walk of the fair order: the walk cost ~17 us of Redis per waiter
    ahead, and 200 waiters timing out together each looked up their place. The Redis time
    of a look at position 150 is that of one at position 0 (fewest of a few tries each,
    so that the machine's load does not decide)."""
    backend = {"kind": "redis", "url": shared_redis.url, "key_prefix": uuid.uuid4().hex[:8]}
    h = await start_harness({"backend": backend, "pools": [{"name": "p", "max_concurrency": 1}]})
    redis = shared_redis.client()
    try:
        await h.acquire(input_tokens=1)
        for _ in range(151):
            h.acquire_later(input_tokens=1, wait_timeout=60)
        await h.until_queued("p", 151)
        spots = {i: await h.engine.look(i) for i in h.engine.waiting.awaited()}
        by_position = {look.queued.position: i for i, look in spots.items() if look.queued}
        assert sorted(by_position) == list(range(151))

        async def redis_time(lease_id: str) -> int:
            fewest = None
            for _ in range(5):
                redis.config_resetstat()
                await h.engine.look(lease_id)
                spent = int(redis.info("commandstats")["cmdstat_evalsha"]["usec"])
                fewest = spent if fewest is None else min(fewest, spent)
            assert fewest is not None
            return fewest

        first, last = await redis_time(by_position[0]), await redis_time(by_position[150])
        print(f"a look at position 0: {first} us of Redis, at position 150: {last} us")
        assert last < 5 * first
    finally:
        await h.close()


@pytest.mark.slow
async def test_two_hundred_waiters_timing_out_together_are_each_answered_queue_timeout(
    redis_server: RedisServer,
) -> None:
    """200 waiters on one replica (a real process; Redis), whose waits run out together
    (they arrive together): every one is answered QUEUE_TIMEOUT (none UNAVAILABLE: redis-py's
    pool of 100 connections failed the calls beyond it). How late, by the server's
    ``waited_seconds``, is printed, not asserted: past LOOK_BUDGET it is the machine's CPU, not
    admitd (the bound itself is tested on the injected clock above)."""
    prefix = f"late-{uuid.uuid4().hex[:8]}"
    config = {
        "backend": {"kind": "redis", "url": redis_server.url, "key_prefix": prefix, "timeout": 2},
        "pools": [{"name": "p", "max_concurrency": 1}],
        "tenants": [{"name": "a"}],
    }
    server = AdmitdProcess(config, "timeouts")
    channel = grpc.aio.insecure_channel(server.target)
    stub = pb_grpc.AdmissionStub(channel)
    wait = 4.0
    try:
        await stub.Acquire(acquire(input_tokens=1), timeout=10)

        async def one() -> float:
            try:
                await stub.Acquire(acquire(wait=wait, input_tokens=1), timeout=60)
            except grpc.aio.AioRpcError as error:
                failure = decode(error)
                assert failure.reason == "QUEUE_TIMEOUT", failure
                return float(failure.metadata["waited_seconds"]) - wait
            raise AssertionError("admitted, yet the slot was held")

        late = sorted(await asyncio.gather(*(one() for _ in range(200))))
        median, worst = statistics.median(late), late[-1]
        print(f"QUEUE_TIMEOUT late by: median {median * 1000:.0f} ms, worst {worst * 1000:.0f} ms")
    finally:
        await channel.close()
        server.stop()
