"""Shadow mode: a pool's or tenant's limits are checked and counted but never refuse; the
lease says which reason would have refused it, and a metric counts it."""

from __future__ import annotations

from typing import Any

from support.harness import MakeHarness
from support.metrics import scrape, value

SHADOW_POOL: dict[str, Any] = {
    "pools": [
        {"name": "p", "max_concurrency": 1, "tokens_per_minute": 100, "shadow": True},
        {"name": "q", "max_concurrency": 1},
    ],
}


async def test_a_shadow_pool_admits_past_its_limits_and_says_so(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness(SHADOW_POOL)
    first = await h.acquire(pool="p", input_tokens=60)
    assert first.shadow_reason == ""
    second = await h.acquire(pool="p", input_tokens=60)  # over concurrency and tokens
    assert second.shadow_reason == "CONCURRENCY_LIMIT"
    big = await h.acquire(pool="p", input_tokens=5000)  # bigger than the whole bucket
    assert big.reserved_tokens == 5000
    status = await h.pool("p")
    # Counted as if enforced: 3 in flight against 1, the bucket deep in debt.
    assert (status.in_flight, status.concurrency.value) == (3, 3)
    assert status.tokens_per_minute.value == 100 - 60 - 60 - 5000
    # Another pool is enforced as usual.
    await h.acquire(pool="q", input_tokens=1)
    assert (await h.fail(h.acquire(pool="q", input_tokens=1))).reason == "CONCURRENCY_LIMIT"


async def test_a_shadow_tenant_is_still_held_by_the_pool(make_harness: MakeHarness) -> None:
    h = await make_harness(
        {
            "pools": [{"name": "p", "max_concurrency": 3}],
            "tenants": [{"name": "a", "max_concurrency": 1, "shadow": True}, {"name": "b"}],
        }
    )
    await h.acquire(tenant="a", input_tokens=1)
    assert (await h.acquire(tenant="a", input_tokens=1)).shadow_reason == "CONCURRENCY_LIMIT"
    await h.acquire(tenant="b", input_tokens=1)
    failure = await h.fail(h.acquire(tenant="a", input_tokens=1))  # the pool's 3 are used
    assert (failure.reason, failure.metadata["scope"]) == ("CONCURRENCY_LIMIT", "pool")


async def test_shadow_refusals_are_counted(make_harness: MakeHarness) -> None:
    h = await make_harness({**SHADOW_POOL, "observability": {"metrics_listen": "127.0.0.1:0"}})
    for _ in range(3):
        await h.acquire(pool="p", input_tokens=1)
    text = await scrape(h)
    labels = {"pool": "p", "tenant": "a", "reason": "CONCURRENCY_LIMIT"}
    assert value(text, "admitd_shadow_rejections_total", **labels) == 2


async def test_turning_shadow_mode_off_enforces_at_once(make_harness: MakeHarness) -> None:
    from admitd import parse_config

    h = await make_harness(SHADOW_POOL)
    await h.acquire(pool="p", input_tokens=1)
    await h.acquire(pool="p", input_tokens=1)
    enforced = h.engine.settings.model_dump(mode="json")
    enforced["pools"][0]["shadow"] = False
    await h.engine.apply(parse_config(enforced))
    assert (await h.fail(h.acquire(pool="p", input_tokens=1))).reason == "CONCURRENCY_LIMIT"
