"""Fallback pools: an Acquire names candidates in order; the first that can admit now grants
(Lease.pool says which); one whose circuit is open or that cannot fit now is skipped; if none
admits now, the call waits on the candidate promising the shortest wait."""

from __future__ import annotations

from typing import Any

import grpc
import tiktoken

from admitd.v1 import admission_pb2 as pb
from support.harness import MakeHarness

CANDIDATES: dict[str, Any] = {
    "pools": [
        {"name": "openai", "max_concurrency": 1, "tokens_per_minute": 600},
        {"name": "azure", "max_concurrency": 1, "encoding": "cl100k_base"},
        {
            "name": "anthropic",
            "max_concurrency": 1,
            "breaker": {"min_calls": 1, "failure_rate": 1, "open_for": "60s"},
        },
    ]
}


async def test_the_first_candidate_that_fits_grants(make_harness: MakeHarness) -> None:
    h = await make_harness(CANDIDATES)
    await h.acquire(pool="openai", input_tokens=1)  # openai's one slot is taken
    lease = await h.acquire(pool="openai", fallback_pools=["azure", "anthropic"], input_tokens=5)
    assert lease.pool == "azure"
    lease = await h.acquire(pool="openai", fallback_pools=["azure", "anthropic"], input_tokens=5)
    assert lease.pool == "anthropic"


async def test_a_candidate_with_an_open_circuit_is_skipped(make_harness: MakeHarness) -> None:
    h = await make_harness(CANDIDATES)
    broken = await h.acquire(pool="anthropic", input_tokens=1)
    error = pb.Outcome.OUTCOME_PROVIDER_ERROR
    await h.stub.Release(pb.ReleaseRequest(lease_id=broken.lease_id, outcome=error), timeout=10)
    assert (await h.pool("anthropic")).circuit == "open"
    lease = await h.acquire(pool="anthropic", fallback_pools=["azure"], input_tokens=5)
    assert lease.pool == "azure"


async def test_the_wait_is_on_the_candidate_promising_the_shortest_one(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness(CANDIDATES)
    await h.acquire(pool="azure", input_tokens=1)  # azure: a slot held, no hold time known
    used = await h.acquire(pool="openai", input_tokens=590)
    await h.release(used.lease_id, (590, 0))
    # openai has its slot free but only 10 tokens left, refilling at 10 a second: 100
    # tokens are there in 9 s; azure's slot could take a whole lease TTL.
    leasing = h.acquire_later(
        pool="azure", fallback_pools=["openai"], input_tokens=100, wait_timeout=60
    )
    await h.until_queued("openai", 1)
    assert (await h.pool("azure")).queued == 0
    await h.advance(9)
    assert (await leasing).pool == "openai"


async def test_when_none_fits_the_most_hopeful_refusal_names_the_candidates(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness(CANDIDATES)
    await h.acquire(pool="azure", input_tokens=1)
    failure = await h.fail(h.acquire(pool="openai", fallback_pools=["azure"], input_tokens=5000))
    # openai can never fit 5000 (a 600 bucket): azure's concurrency refusal is the hopeful one.
    assert (failure.reason, failure.metadata["pool"]) == ("CONCURRENCY_LIMIT", "azure")
    assert failure.metadata["candidates"] == "openai,azure"


async def test_each_candidate_counts_the_prompt_with_its_own_encoding(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness(CANDIDATES)
    await h.acquire(pool="openai", input_tokens=1)
    prompt = "Überprüfen Sie die Lieferkettenverzögerungen für nächste Woche."
    lease = await h.acquire(pool="openai", fallback_pools=["azure"], prompt=prompt)
    expected = len(tiktoken.get_encoding("cl100k_base").encode(prompt))
    assert expected != len(tiktoken.get_encoding("o200k_base").encode(prompt))
    assert (lease.pool, lease.input_tokens) == ("azure", expected)


async def test_an_idempotent_retry_finds_the_lease_whichever_candidate_granted_it(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness(CANDIDATES)
    await h.acquire(pool="openai", input_tokens=1)
    ask: dict[str, Any] = {"pool": "openai", "fallback_pools": ["azure"], "input_tokens": 7}
    first = await h.acquire(idempotency_key="k1", **ask)
    again = await h.acquire(idempotency_key="k1", **ask)
    assert (again.lease_id, again.pool) == (first.lease_id, "azure")
    assert (await h.pool("azure")).in_flight == 1


async def test_bad_fallback_lists_name_the_entry(make_harness: MakeHarness) -> None:
    h = await make_harness(CANDIDATES)
    unknown = await h.fail(h.acquire(pool="openai", fallback_pools=["gcp"], input_tokens=1))
    assert (unknown.code, unknown.field_violations) == (grpc.StatusCode.NOT_FOUND, [])
    assert unknown.message.startswith("fallback_pools[0]: unknown pool 'gcp'")
    twice = await h.fail(h.acquire(pool="openai", fallback_pools=["openai"], input_tokens=1))
    assert twice.field_violations == ["fallback_pools[0]"]
    for pool in ("openai", "azure", "anthropic"):
        assert (await h.pool(pool)).in_flight == 0
