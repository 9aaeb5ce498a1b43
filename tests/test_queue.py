"""The wait queue: strict priority with aging, weighted fair sharing, bounded waits."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from admitd.v1 import admission_pb2 as pb
from support.harness import Harness, MakeHarness
from support.queueing import CREDITED, grant_order, queue_up, refund_moves_its_tenant_ahead

ONE_SLOT = {"pools": [{"name": "p", "max_concurrency": 1}]}


async def test_priority_classes_are_served_strictly_in_order(make_harness: MakeHarness) -> None:
    h = await make_harness(ONE_SLOT)
    holder = await h.acquire(input_tokens=1)
    names = ["LOW", "NORMAL", "HIGH", "CRITICAL", "LOW", "CRITICAL"]
    tasks = await queue_up(h, [{"priority": pb.Priority.Value(f"PRIORITY_{n}")} for n in names])
    order = await grant_order(h, holder, tasks, names)
    assert order == ["CRITICAL", "CRITICAL", "HIGH", "NORMAL", "LOW", "LOW"]


async def test_weights_one_to_three_interleave_one_to_three(make_harness: MakeHarness) -> None:
    h = await make_harness(
        {**ONE_SLOT, "tenants": [{"name": "a", "weight": 1}, {"name": "b", "weight": 3}]}
    )
    holder = await h.acquire(tenant="a", input_tokens=1)
    labels = [f"a{i}" for i in range(6)] + [f"b{i}" for i in range(18)]
    tasks = await queue_up(h, [{"tenant": label[0]} for label in labels])
    order = await grant_order(h, holder, tasks, labels)
    # Every window of four grants serves a once and b three times ...
    for start in range(0, 24, 4):
        window = [label[0] for label in order[start : start + 4]]
        assert window.count("a") == 1, (start, order)
    # ... and each tenant's own requests in the order they came (FIFO within a tenant).
    for tenant in "ab":
        mine = [label for label in order if label[0] == tenant]
        assert mine == sorted(mine, key=lambda label: int(label[1:]))


async def test_fair_share_is_on_token_cost_not_request_count(make_harness: MakeHarness) -> None:
    h = await make_harness(ONE_SLOT)
    holder = await h.acquire(input_tokens=1)
    # a asks for 300 tokens a call, b for 100: equal weights give b three calls per a call.
    requests: list[dict[str, Any]] = [{"tenant": "a", "input_tokens": 300}] * 4
    requests += [{"tenant": "b"}] * 12
    labels = [r["tenant"] for r in requests]
    order = await grant_order(h, holder, await queue_up(h, requests), labels)
    assert order[:8].count("a") == 2, order


async def test_an_idle_tenant_cannot_bank_credit(make_harness: MakeHarness) -> None:
    h = await make_harness(ONE_SLOT)
    holder = await h.acquire(tenant="a", input_tokens=1)
    # a is served alone for a while (its finish tags and virtual time advance together) ...
    tasks = await queue_up(h, [{"tenant": "a"}] * 5)
    order = await grant_order(h, holder, tasks, ["a"] * 5)
    assert order == ["a"] * 5
    last = tasks[-1].result()
    # ... then b, idle so far, arrives with a: it gets its fair half, not a burst of five.
    labels = ["a", "a", "a", "b", "b", "b"]
    tasks = await queue_up(h, [{"tenant": t} for t in labels])
    order = await grant_order(h, last, tasks, labels)
    assert order[:4].count("b") == 2, order


async def test_waiting_times_out_with_queue_timeout(make_harness: MakeHarness) -> None:
    h = await make_harness(ONE_SLOT)
    holder = await h.acquire(input_tokens=1)
    waiting = h.acquire_later(input_tokens=1, wait_timeout=5)
    await h.until_queued("p", 1)
    await h.advance(4.9)
    assert not waiting.done()
    await h.advance(0.1)
    failure = await h.fail(waiting)
    assert failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert failure.reason == "QUEUE_TIMEOUT"
    assert failure.retry_after is not None
    assert failure.retry_after > 0
    assert failure.metadata["limit"] == "max_concurrency"
    # The waiter leaves the queue after its caller has the answer (_waits.py: answering
    # first keeps many QUEUE_TIMEOUTs at once on time): wait for that background work.
    await h.engine.idle()
    pool = await h.pool("p")
    assert (pool.queued, pool.in_flight) == (0, 1)
    # The freed slot is not handed to the waiter that gave up.
    await h.release(holder.lease_id)
    assert (await h.pool("p")).in_flight == 0


async def test_wait_is_bounded_by_the_configured_max_wait(make_harness: MakeHarness) -> None:
    h = await make_harness({**ONE_SLOT, "queue": {"max_wait": "2s"}})
    await h.acquire(input_tokens=1)
    waiting = h.acquire_later(input_tokens=1, wait_timeout=600)
    await h.until_queued("p", 1)
    await h.advance(2)
    assert (await h.fail(waiting)).reason == "QUEUE_TIMEOUT"


async def test_cancelled_waiter_leaves_the_queue_and_reserves_nothing(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness(
        {"pools": [{"name": "p", "max_concurrency": 1, "tokens_per_minute": 1000}]}
    )
    holder = await h.acquire(input_tokens=100)
    waiting = h.acquire_later(input_tokens=100, wait_timeout=60)
    await h.until_queued("p", 1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    for _ in range(200):
        if (await h.pool("p")).queued == 0:
            break
        await asyncio.sleep(0.005)
    await h.release(holder.lease_id, (0, 0))
    pool = await h.pool("p")
    assert (pool.queued, pool.in_flight) == (0, 0)
    assert pool.tokens_per_minute.value == 1000


async def test_rpc_deadline_ends_the_wait(make_harness: MakeHarness) -> None:
    h = await make_harness(ONE_SLOT)
    holder = await h.acquire(input_tokens=1)
    failure = await h.fail(h.acquire(input_tokens=1, wait_timeout=60, timeout=0.3))
    assert failure.code == grpc.StatusCode.DEADLINE_EXCEEDED
    for _ in range(200):
        if (await h.pool("p")).queued == 0:
            break
        await asyncio.sleep(0.005)
    await h.release(holder.lease_id)
    pool = await h.pool("p")
    assert (pool.queued, pool.in_flight) == (0, 0)


async def test_bucket_refill_admits_waiters_without_any_release(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness({"pools": [{"name": "p", "tokens_per_minute": 600}]})  # 10/s
    await h.acquire(input_tokens=600)
    waiting = h.acquire_later(input_tokens=50, wait_timeout=60)
    await h.until_queued("p", 1)
    await h.advance(4.9)
    assert not waiting.done()
    await h.advance(0.1)
    lease = await waiting
    assert lease.queued_for.ToTimedelta().total_seconds() == pytest.approx(5.0)


async def test_a_tenant_at_its_own_limit_does_not_hold_up_others(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness({"tenants": [{"name": "a", "max_concurrency": 1}, {"name": "b"}]})
    await h.acquire(tenant="a", input_tokens=1)
    waiting = h.acquire_later(tenant="a", input_tokens=1, wait_timeout=60)
    await h.until_queued("p", 1)
    # b is behind a's waiter in the queue, but a is only blocked by its own limit.
    lease = await h.acquire(tenant="b", input_tokens=1)
    assert lease.tenant == "b"
    assert not waiting.done()


async def test_fail_fast_callers_do_not_jump_a_queue_held_by_the_pool(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness({"pools": [{"name": "p", "tokens_per_minute": 1200}]})
    await h.acquire(input_tokens=1000)  # 200 left
    big = h.acquire_later(tenant="a", input_tokens=500, wait_timeout=60)
    await h.until_queued("p", 1)
    # 50 tokens would fit, but a's own earlier call is first in line (FIFO within a tenant).
    failure = await h.fail(h.acquire(tenant="a", input_tokens=50))
    assert failure.reason == "TOKEN_RATE_LIMIT"
    assert failure.metadata["requested"] == "500"  # what holds the queue
    await h.advance(15)
    assert (await big).reserved_tokens == 500


async def test_a_smaller_call_of_another_tenant_has_an_earlier_finish_tag(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness({"pools": [{"name": "p", "tokens_per_minute": 1200}]})
    await h.acquire(input_tokens=1000)  # 200 left
    h.acquire_later(tenant="a", input_tokens=500, wait_timeout=60)
    await h.until_queued("p", 1)
    # Weighted fair queueing on token cost: b's 50 tokens finish before a's 500.
    assert (await h.acquire(tenant="b", input_tokens=50)).tenant == "b"


async def served_first(make_harness: MakeHarness, aged: float) -> set[str]:
    """One slot held, aging every 10 s; a LOW call waits ``aged`` seconds, then a CRITICAL
    one queues too: which of them the freed slot serves first ("low" or "critical")."""
    h = await make_harness({**ONE_SLOT, "queue": {"aging": "10s", "max_wait": "10m"}})
    holder = await h.acquire(input_tokens=1)
    low = h.acquire_later(input_tokens=1, wait_timeout=300, priority=pb.PRIORITY_LOW)
    await h.until_queued("p", 1)
    await h.advance(aged)
    critical = h.acquire_later(input_tokens=1, wait_timeout=300, priority=pb.PRIORITY_CRITICAL)
    await h.until_queued("p", 2)
    await h.release(holder.lease_id)
    done, _ = await asyncio.wait({low, critical}, return_when=asyncio.FIRST_COMPLETED)
    return {name for name, task in (("low", low), ("critical", critical)) if task in done}


async def test_lower_classes_age_so_they_are_never_starved(make_harness: MakeHarness) -> None:
    # LOW has climbed four classes: above a fresh CRITICAL.
    assert await served_first(make_harness, aged=45) == {"low"}


async def test_without_enough_aging_critical_goes_first(make_harness: MakeHarness) -> None:
    # Two classes climbed: LOW acts as HIGH, still below CRITICAL.
    assert await served_first(make_harness, aged=25) == {"critical"}


async def test_queue_full_globally_and_per_tenant(make_harness: MakeHarness) -> None:
    h = await make_harness(
        {
            **ONE_SLOT,
            "queue": {"max_length": 3, "max_per_tenant": 2},
            "tenants": [{"name": "a"}, {"name": "b", "max_queued": 1}, {"name": "c"}],
        }
    )
    await h.acquire(input_tokens=1)
    await queue_up(h, [{"tenant": "a"}, {"tenant": "a"}])
    failure = await h.fail(h.acquire(tenant="a", input_tokens=1, wait_timeout=60))
    assert (failure.reason, failure.metadata["scope"]) == ("QUEUE_FULL", "tenant")
    assert failure.retry_after is not None
    assert failure.retry_after > 0
    await queue_up_more(h, {"tenant": "b"}, 3)
    failure = await h.fail(h.acquire(tenant="b", input_tokens=1, wait_timeout=60))
    assert (failure.reason, failure.metadata["scope"]) == ("QUEUE_FULL", "tenant")
    failure = await h.fail(h.acquire(tenant="c", input_tokens=1, wait_timeout=60))
    assert (failure.reason, failure.metadata["scope"]) == ("QUEUE_FULL", "global")
    assert (await h.pool("p")).queued == 3


async def queue_up_more(h: Harness, fields: dict[str, Any], total: int) -> asyncio.Task[pb.Lease]:
    task = h.acquire_later(**{"wait_timeout": 60, "input_tokens": 1, **fields})
    await h.until_queued("p", total)
    return task


async def test_refill_of_a_tenant_bucket_admits_its_waiter(make_harness: MakeHarness) -> None:
    h = await make_harness({"tenants": [{"name": "a", "tokens_per_minute": 600}]})  # 10/s
    await h.acquire(tenant="a", input_tokens=600)
    waiting = h.acquire_later(tenant="a", input_tokens=100, wait_timeout=60)
    await h.until_queued("p", 1)
    await h.advance(9.9)
    assert not waiting.done()
    await h.advance(0.1)
    assert (await waiting).reserved_tokens == 100


async def test_a_refund_moves_its_tenant_ahead_by_what_it_did_not_use(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness(CREDITED)
    await refund_moves_its_tenant_ahead(h, h)


async def test_refunds_while_alone_are_no_head_start_later(make_harness: MakeHarness) -> None:
    h = await make_harness(ONE_SLOT)
    holder = await h.acquire(tenant="a", input_tokens=1)
    # a is served alone, each call using 10 of the 100 tokens it reserved: credited while it
    # waits, its tags and the virtual time still advance together ...
    tasks = await queue_up(h, [{"tenant": "a", "max_output_tokens": 90}] * 5)
    order = await grant_order(h, holder, tasks, ["a"] * 5, usage=(10, 0))
    assert order == ["a"] * 5
    last = tasks[-1].result()
    # ... so when b arrives it gets its fair half at once, not after a's banked refunds.
    labels = ["a", "a", "a", "b", "b", "b"]
    tasks = await queue_up(h, [{"tenant": t} for t in labels])
    order = await grant_order(h, last, tasks, labels)
    assert order[:4].count("b") == 2, order
