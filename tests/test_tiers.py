"""Tiers: tenants take the weight and limits they do not set from their tier, on both
backends, and GetStatus shows the effective limits."""

from __future__ import annotations

from typing import Any

from admitd import parse_config
from support.harness import MakeHarness

TIERS: dict[str, Any] = {
    "pools": [{"name": "p"}],
    "tiers": [
        {"name": "free", "max_concurrency": 1, "tokens_per_minute": 1000},
        {"name": "pro", "weight": 4, "max_concurrency": 3},
    ],
    "tenants": [
        {"name": "a", "tier": "free"},
        {"name": "b", "tier": "free", "max_concurrency": 2},
        {"name": "c", "tier": "pro"},
    ],
}


async def test_a_tier_limit_holds_each_of_its_tenants(make_harness: MakeHarness) -> None:
    h = await make_harness(TIERS)
    await h.acquire(tenant="a", input_tokens=10)
    assert (await h.fail(h.acquire(tenant="a", input_tokens=10))).metadata == {
        "scope": "tenant",
        "tenant": "a",
        "limit": "max_concurrency",
        "limit_value": "1",
        "requested": "1",
    }
    # b overrides the tier's concurrency (2) and keeps its token bucket, a bucket of its own.
    await h.acquire(tenant="b", input_tokens=995)
    failure = await h.fail(h.acquire(tenant="b", input_tokens=10))
    assert (failure.reason, failure.metadata["tenant"]) == ("TOKEN_RATE_LIMIT", "b")
    assert failure.metadata["limit_value"] == "1000"
    await h.acquire(tenant="b", input_tokens=5)  # exactly what is left
    assert (await h.fail(h.acquire(tenant="b", input_tokens=1))).reason == "CONCURRENCY_LIMIT"
    # pro sets no token limit: c is held by none.
    assert (await h.acquire(tenant="c", input_tokens=50_000)).reserved_tokens == 50_000


async def test_status_shows_each_tenants_tier_and_effective_limits(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness(TIERS)
    tenants = {t.name: t for t in (await h.status()).tenants}
    assert {n: t.tier for n, t in tenants.items()} == {"a": "free", "b": "free", "c": "pro"}
    assert [tenants[n].concurrency.limit for n in "abc"] == [1, 2, 3]
    assert tenants["a"].tokens_per_minute.limit == 1000
    assert not tenants["c"].HasField("tokens_per_minute")
    assert [tenants[n].weight for n in "abc"] == [1, 1, 4]


async def test_changing_a_tier_applies_to_its_tenants_live(make_harness: MakeHarness) -> None:
    h = await make_harness(TIERS)
    await h.acquire(tenant="a", input_tokens=1)
    changed = h.engine.settings.model_dump(mode="json", exclude_unset=True)
    changed["tiers"][0]["max_concurrency"] = 2
    await h.engine.apply(parse_config({**changed, "backend": h.engine.settings.backend}))
    assert (await h.acquire(tenant="a", input_tokens=1)).tenant == "a"
    assert (await h.fail(h.acquire(tenant="a", input_tokens=1))).reason == "CONCURRENCY_LIMIT"
