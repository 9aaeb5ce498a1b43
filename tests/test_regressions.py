"""Bugs the property, state-machine and fault tests found, each pinned by a small test of its
exact scenario (both backends)."""

from __future__ import annotations

import grpc

from conftest import MakeHarness


async def test_a_fail_fast_call_behind_its_tenants_held_waiter_is_rejected_at_once(
    make_harness: MakeHarness,
) -> None:
    """Found by test_state_machine.py. A fail-fast Acquire takes its place in the fair order;
    when an earlier waiter of the same tenant is held back by the tenant's own limit, the
    dispatch pass skips the rest of that tenant's waiters, the new call among them. It was
    then neither admitted nor denied: the engine made it wait 0 s, which on the real clock
    answered QUEUE_TIMEOUT (for a call that never queued) and on the test clock never
    answered at all. It must be rejected at once with the limit that holds its tenant."""
    h = await make_harness(
        {
            "pools": [{"name": "p", "max_concurrency": 10}],
            "tenants": [{"name": "a", "max_concurrency": 1}, {"name": "b"}],
        }
    )
    await h.acquire(tenant="a", input_tokens=1)
    waiting = h.acquire_later(tenant="a", input_tokens=1, wait_timeout=30)
    await h.until_queued("p", 1)

    failure = await h.fail(h.acquire(tenant="a", input_tokens=1, timeout=5))
    assert failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED, failure
    assert (failure.reason, failure.metadata["scope"]) == ("CONCURRENCY_LIMIT", "tenant")
    assert failure.retry_after is not None
    assert (await h.pool("p")).queued == 1  # the waiter keeps its place
    assert not waiting.done()
    await h.acquire(tenant="b", input_tokens=1)  # other tenants are not held back
