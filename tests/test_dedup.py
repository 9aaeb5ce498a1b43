"""In-flight deduplication: a call with the dedup_key of a call in flight (same tenant)
joins it instead of reserving, and gets the result the leader shares at Release, or is told
to retry. Both backends, and across replicas with Redis."""

from __future__ import annotations

from typing import Any

import grpc

from admitd.v1 import admission_pb2 as pb
from support.harness import Harness, MakeHarness, Replicas

LEADER, FOLLOWER = pb.DedupRole.DEDUP_ROLE_LEADER, pb.DedupRole.DEDUP_ROLE_FOLLOWER
ONE_SLOT: dict[str, Any] = {"pools": [{"name": "p", "max_concurrency": 1}]}


async def share(
    h: Harness, lease_id: str, result: bytes, outcome: int = pb.Outcome.OUTCOME_OK
) -> pb.ReleaseResponse:
    request = pb.ReleaseRequest(lease_id=lease_id, result=result, outcome=outcome)  # type: ignore[arg-type]
    request.usage.input_tokens, request.usage.output_tokens = 10, 20
    return await h.stub.Release(request, timeout=10)


async def test_followers_share_the_leaders_call_and_result(make_harness: MakeHarness) -> None:
    h = await make_harness({"pools": [{"name": "p", "max_concurrency": 5}]})
    leader = await h.acquire(input_tokens=10, max_output_tokens=50, dedup_key="q:42")
    assert (leader.dedup_role, leader.dedup_leader_id) == (LEADER, leader.lease_id)
    followers = [
        h.acquire_later(input_tokens=10, max_output_tokens=50, dedup_key="q:42", wait_timeout=60)
        for _ in range(2)
    ]
    await h.until_following(leader.lease_id, 2)
    assert (await h.pool("p")).in_flight == 1  # the followers reserved nothing
    await share(h, leader.lease_id, b"the answer")
    for follower in followers:
        lease = await follower
        assert (lease.dedup_role, lease.shared_result) == (FOLLOWER, b"the answer")
        assert (lease.lease_id, lease.dedup_leader_id) == ("", leader.lease_id)
    assert (await h.pool("p")).in_flight == 0
    # The key is free again: the next identical call leads a call of its own.
    again = await h.acquire(input_tokens=10, dedup_key="q:42")
    assert (again.dedup_role, again.lease_id != leader.lease_id) == (LEADER, True)


async def test_a_leader_without_a_result_sends_its_followers_back(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness()
    endings = ((pb.Outcome.OUTCOME_OK, b""), (pb.Outcome.OUTCOME_PROVIDER_ERROR, b"x"))
    for outcome, result in endings:
        leader = await h.acquire(input_tokens=1, dedup_key="k")
        follower = h.acquire_later(input_tokens=1, dedup_key="k", wait_timeout=60)
        await h.until_following(leader.lease_id)
        await share(h, leader.lease_id, result, outcome)
        failure = await h.fail(follower)
        assert (failure.code, failure.reason) == (grpc.StatusCode.ABORTED, "DEDUP_LEADER_FAILED")
        assert failure.retry_after is not None


async def test_a_follower_that_does_not_wait_is_told_at_once(make_harness: MakeHarness) -> None:
    h = await make_harness()
    leader = await h.acquire(input_tokens=1, dedup_key="k")
    failure = await h.fail(h.acquire(input_tokens=1, dedup_key="k"))
    assert (failure.code, failure.reason) == (grpc.StatusCode.ABORTED, "DEDUP_IN_FLIGHT")
    assert failure.metadata["dedup_leader"] == leader.lease_id


async def test_dedup_is_per_tenant(make_harness: MakeHarness) -> None:
    h = await make_harness()
    a = await h.acquire(tenant="a", input_tokens=1, dedup_key="k")
    b = await h.acquire(tenant="b", input_tokens=1, dedup_key="k")
    assert (a.dedup_role, b.dedup_role) == (LEADER, LEADER)
    assert (await h.pool("p")).in_flight == 2


async def test_followers_join_a_leader_still_queued(make_harness: MakeHarness) -> None:
    h = await make_harness(ONE_SLOT)
    holder = await h.acquire(input_tokens=1)
    leading = h.acquire_later(input_tokens=1, dedup_key="k", wait_timeout=60)
    await h.until_queued("p", 1)
    follower = h.acquire_later(input_tokens=1, dedup_key="k", wait_timeout=60)
    await h.until_following(next(iter(h.engine.waiting.awaited())))  # the waiting leader
    assert (await h.pool("p")).queued == 1  # the follower joined it, not the queue
    await h.release(holder.lease_id)
    leader = await leading
    await share(h, leader.lease_id, b"done")
    assert (await follower).shared_result == b"done"


async def test_a_leader_that_expires_sends_its_followers_back(make_harness: MakeHarness) -> None:
    h = await make_harness({"lease": {"ttl": 30}})
    leader = await h.acquire(input_tokens=1, dedup_key="k")
    follower = h.acquire_later(input_tokens=1, dedup_key="k", wait_timeout=60)
    await h.until_following(leader.lease_id)
    await h.advance(31)
    assert (await h.fail(follower)).reason == "DEDUP_LEADER_FAILED"


async def test_a_shared_result_over_the_limit_is_invalid(make_harness: MakeHarness) -> None:
    h = await make_harness({"lease": {"max_shared_result": 8}})
    leader = await h.acquire(input_tokens=1, dedup_key="k")
    failure = await h.fail(share(h, leader.lease_id, b"123456789"))
    assert failure.field_violations == ["result"]
    assert (await h.pool("p")).in_flight == 1  # not released
    assert (await share(h, leader.lease_id, b"12345678")).charged_tokens == 30


async def test_a_follower_on_another_replica_gets_the_result(replicas: Replicas) -> None:
    a, b = await replicas(2)
    leader = await a.acquire(input_tokens=1, dedup_key="k")
    follower = b.acquire_later(input_tokens=1, dedup_key="k", wait_timeout=30)
    await b.until_following(leader.lease_id)
    await share(a, leader.lease_id, b"from a")
    lease = await follower
    assert (lease.dedup_role, lease.shared_result) == (FOLLOWER, b"from a")


async def test_followers_are_counted_by_how_they_ended(make_harness: MakeHarness) -> None:
    from support.metrics import scrape, value

    h = await make_harness({"observability": {"metrics_listen": "127.0.0.1:0"}})
    leader = await h.acquire(input_tokens=1, dedup_key="k")
    follower = h.acquire_later(input_tokens=1, dedup_key="k", wait_timeout=60)
    await h.until_following(leader.lease_id)
    await share(h, leader.lease_id, b"r")
    await follower
    text = await scrape(h)
    assert value(text, "admitd_dedup_followers_total", pool="p", result="shared") == 1
