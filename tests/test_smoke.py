from support.harness import MakeHarness


async def test_acquire_and_release(make_harness: MakeHarness) -> None:
    h = await make_harness({"pools": [{"name": "p", "max_concurrency": 1}]})
    lease = await h.acquire(input_tokens=10, max_output_tokens=5)
    assert lease.reserved_tokens == 15
    failure = await h.fail(h.acquire(input_tokens=1))
    assert failure.reason == "CONCURRENCY_LIMIT"
    released = await h.release(lease.lease_id, (7, 3))
    assert (released.charged_tokens, released.refunded_tokens) == (10, 5)
