"""The LiteLLM callback in real LiteLLM proxies, in front of the simulated provider, admitted
by a real admitd: usage, streams, refusals, provider 429s, router fallbacks, abandoned streams.

The processes are the module's: one admitd, one provider, and two proxies started side by
side (the tests' config, and clients/README.md's exactly as written). Each test has model
groups, pools and so ledger rows of its own; after each, no pool may hold a slot.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import grpc
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from admitd_client import count_tokens
from admitd_client._proto import admission_pb2 as pb
from admitd_client._proto import admission_pb2_grpc as pb_grpc
from support.client import FakeProvider
from support.litellm_proxy import LiteLLMProxy, key_of, readme_config, readme_env, start
from support.polling import until_sync
from support.processes import AdmitdProcess

pytestmark = [pytest.mark.litellm, pytest.mark.slow]

PRICE = {"input_per_million": 2.5, "output_per_million": 10}
BREAKER = {"failure_rate": 0.5, "min_calls": 2, "window": "60s", "open_for": "120s"}
POOLS = ["usage", "stream", "stall", "queue", "tokens", "rate-limited", "east", "west"]
ADMITD: dict[str, Any] = {
    "lease": {"ttl": "120s"},
    "pools": [
        {"name": "openai/gpt-4o-a"},  # the README's two projects
        {"name": "openai/gpt-4o-b"},
        *({"name": name, "price": PRICE} for name in POOLS if name not in ("queue", "tokens")),
        {"name": "queue", "max_concurrency": 1},
        {"name": "tokens", "tokens_per_minute": 60},
        {"name": "open-east", "breaker": BREAKER},
        {"name": "open-west"},
    ],
    "tenants": [{"name": "search"}, {"name": "ads"}, {"name": "default"}],
}
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello world"}]
REPLY = "Hello! I am a simulated model."  # the provider's answer: 8 tokens (o200k_base)


def deployment(group: str, deployment_id: str, provider: FakeProvider) -> dict[str, Any]:
    params = {"model": "openai/gpt-4o", "api_base": provider.openai_url, "api_key": "sk-fake"}
    return {"model_name": group, "litellm_params": params, "model_info": {"id": deployment_id}}


def proxy_config(provider: FakeProvider, admitd: AdmitdProcess) -> dict[str, Any]:
    """Each test's model group, its deployments' ids naming their pools."""
    groups = {name: [name] for name in POOLS if name not in ("east", "west")}
    groups.update(regions=["east", "west"], circuit=["open-east", "open-west"])
    return {
        "model_list": [
            deployment(group, ident, provider) for group, ids in groups.items() for ident in ids
        ],
        "litellm_settings": {"callbacks": ["admitd_client.litellm.handler"]},
        "callback_settings": {
            "admitd": {
                "target": admitd.target,
                "pools": {ident: ident for ids in groups.values() for ident in ids},
                "tenants": {"search-prod": "search"},
                "max_wait": 30,
            }
        },
        "general_settings": {"custom_auth": "bench.litellm_teams.user_api_key_auth"},
    }


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeProvider]:
    fake = FakeProvider()
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def admitd() -> Iterator[AdmitdProcess]:
    server = AdmitdProcess(ADMITD, name="admitd-litellm")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def litellm_proxies(
    provider: FakeProvider, admitd: AdmitdProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiteLLMProxy, LiteLLMProxy]]:
    """The tests' proxy and the README's, started together (start-up is long)."""
    ours = LiteLLMProxy(proxy_config(provider, admitd), tmp_path_factory.mktemp("ours"))
    env = readme_env(provider.port, admitd.target)
    readme = LiteLLMProxy(readme_config(), tmp_path_factory.mktemp("readme"), env=env)
    start(ours, readme)
    try:
        yield ours, readme
    finally:
        ours.stop()
        readme.stop()


@pytest.fixture
def proxy(litellm_proxies: tuple[LiteLLMProxy, LiteLLMProxy]) -> LiteLLMProxy:
    return litellm_proxies[0]


@pytest.fixture
def stub(admitd: AdmitdProcess) -> Iterator[pb_grpc.AdmissionStub]:
    with grpc.insecure_channel(admitd.target) as channel:
        yield pb_grpc.AdmissionStub(channel)


@pytest.fixture(autouse=True)
def no_slot_held(provider: FakeProvider, stub: pb_grpc.AdmissionStub) -> Iterator[None]:
    """A clean provider before each test; after it, every pool's slots back (a stream's
    release may follow the response by a moment)."""
    provider.reset()
    yield
    until_sync(lambda: not in_flight(stub), 30, "every slot back after the test")


def in_flight(stub: pb_grpc.AdmissionStub) -> dict[str, int]:
    status = stub.GetStatus(pb.GetStatusRequest(), timeout=10)
    return {p.name: p.in_flight for p in status.pools if p.in_flight}


def usage(stub: pb_grpc.AdmissionStub, pool: str) -> list[tuple[str, int, int, int]]:
    """The ledger's rows of a pool today: (tenant, calls, input tokens, output tokens)."""
    rows = stub.GetUsage(pb.GetUsageRequest(pool=pool), timeout=10).rows
    return [(r.tenant, r.calls, r.input_tokens, r.output_tokens) for r in rows]


def client(proxy: LiteLLMProxy, team: str | None = None) -> openai.OpenAI:
    key = key_of(team) if team else "sk-anyone"
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0, timeout=120)


def test_a_call_is_admitted_for_its_team_and_released_with_its_usage(
    proxy: LiteLLMProxy, provider: FakeProvider, stub: pb_grpc.AdmissionStub
) -> None:
    reply = client(proxy, "search-prod").chat.completions.create(
        model="usage",
        messages=HELLO,
        max_tokens=50,
    )
    assert reply.choices[0].message.content == REPLY
    (call,) = provider.calls()
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (
        call["input_tokens"],
        call["output_tokens"],
    )
    # The team "search-prod" is the tenant "search" (callback_settings.admitd.tenants).
    assert usage(stub, "usage") == [("search", 1, call["input_tokens"], call["output_tokens"])]


def test_a_stream_is_released_with_the_usage_of_its_last_chunk(
    proxy: LiteLLMProxy, provider: FakeProvider, stub: pb_grpc.AdmissionStub
) -> None:
    stream = client(proxy, "ads").chat.completions.create(
        model="stream",
        messages=HELLO,
        max_tokens=50,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == REPLY
    (call,) = provider.calls()
    assert call["stream"] is True
    assert usage(stub, "stream") == [("ads", 1, call["input_tokens"], call["output_tokens"])]


def test_a_stream_the_client_abandons_is_released_at_once(
    proxy: LiteLLMProxy, provider: FakeProvider, stub: pb_grpc.AdmissionStub
) -> None:
    provider.faults({"stall_after": 3})  # the role, "Hello! ", "I ", then nothing
    stream = client(proxy, "ads").chat.completions.create(
        model="stall", messages=HELLO, max_tokens=50, stream=True
    )
    received = ""
    for chunk in stream:
        received += "".join(c.delta.content or "" for c in chunk.choices)
        if received == "Hello! I ":
            break
    assert in_flight(stub) == {"stall": 1}  # held while the provider stalls
    stream.close()  # the client goes away
    until_sync(lambda: not in_flight(stub), 60, "the abandoned stream's lease released")
    (call,) = provider.calls()
    # Charged the reserved input and the text streamed before the client left.
    streamed = count_tokens(prompt="Hello! I ", encoding="o200k_base")
    assert usage(stub, "stall") == [("ads", 1, call["input_tokens"], streamed)]


def test_a_refusal_is_litellms_own_429_with_retry_after(
    proxy: LiteLLMProxy, provider: FakeProvider, stub: pb_grpc.AdmissionStub
) -> None:
    drain(stub, "tokens", 60)  # the pool's minute of tokens, spent: 1 token/s comes back
    with pytest.raises(openai.RateLimitError) as refused:
        client(proxy, "ads").chat.completions.create(
            model="tokens",
            messages=HELLO,
            max_tokens=20,
            extra_body={"timeout": 1},  # the request may wait 1 s: not enough for 28 tokens
        )
    assert refused.value.status_code == 429
    assert "admitd refused the call (QUEUE_TIMEOUT" in refused.value.message
    retry_after = int(refused.value.response.headers["retry-after"])
    assert 1 <= retry_after <= 60
    assert provider.calls() == []  # the provider never saw it


def drain(stub: pb_grpc.AdmissionStub, pool: str, tokens: int) -> None:
    lease = stub.Acquire(pb.AcquireRequest(tenant="default", pool=pool, input_tokens=tokens))
    release = pb.ReleaseRequest(lease_id=lease.lease_id, tenant="default")
    release.usage.input_tokens = tokens
    stub.Release(release, timeout=10)


def test_a_queued_call_waits_and_higher_priority_goes_first(
    proxy: LiteLLMProxy, provider: FakeProvider, stub: pb_grpc.AdmissionStub
) -> None:
    holder = stub.Acquire(
        pb.AcquireRequest(tenant="default", pool="queue", input_tokens=1), timeout=10
    )
    answers: dict[str, str] = {}

    def ask(priority: str, max_tokens: int) -> None:
        reply = client(proxy, "ads").chat.completions.create(
            model="queue",
            messages=HELLO,
            max_tokens=max_tokens,
            metadata={"priority": priority},
        )
        answers[priority] = reply.choices[0].message.content or ""

    low = threading.Thread(target=ask, args=("low", 5))
    high = threading.Thread(target=ask, args=("high", 6))
    low.start()
    until_sync(lambda: queued(stub, "queue") == 1, 60, "the low-priority call queued")
    high.start()
    until_sync(lambda: queued(stub, "queue") == 2, 60, "the high-priority call queued behind it")
    stub.Release(pb.ReleaseRequest(lease_id=holder.lease_id, tenant="default"), timeout=10)
    low.join(120)
    high.join(120)
    assert set(answers) == {"low", "high"}
    # max_tokens tells the calls apart: the high-priority one reached the provider first.
    assert [c["output_tokens"] for c in provider.calls()] == [6, 5]


def queued(stub: pb_grpc.AdmissionStub, pool: str) -> int:
    status = stub.GetStatus(pb.GetStatusRequest(), timeout=10)
    return next(p.queued for p in status.pools if p.name == pool)


def test_a_provider_429_is_released_with_its_retry_after_which_pauses_the_pool(
    proxy: LiteLLMProxy, provider: FakeProvider, stub: pb_grpc.AdmissionStub
) -> None:
    provider.faults({"status": 429, "retry_after": "20"})
    with pytest.raises(openai.RateLimitError):
        client(proxy, "ads").chat.completions.create(
            model="rate-limited", messages=HELLO, max_tokens=20, extra_body={"num_retries": 0}
        )
    status = stub.GetStatus(pb.GetStatusRequest(), timeout=10)
    pool = next(p for p in status.pools if p.name == "rate-limited")
    assert 0 < pool.paused_for.ToTimedelta().total_seconds() <= 20
    # Released as PROVIDER_RATE_LIMITED: an error answer bills nothing.
    assert usage(stub, "rate-limited") == [("ads", 1, 0, 0)]


def pause(stub: pb_grpc.AdmissionStub, pool: str) -> None:
    """The provider asks everyone to wait 2 minutes: a release passing its retry-after."""
    lease = stub.Acquire(pb.AcquireRequest(tenant="default", pool=pool, input_tokens=1), timeout=10)
    release = pb.ReleaseRequest(
        lease_id=lease.lease_id, tenant="default", outcome=pb.OUTCOME_PROVIDER_RATE_LIMITED
    )
    release.provider_retry_after.FromSeconds(120)
    stub.Release(release, timeout=10)


def open_circuit(stub: pb_grpc.AdmissionStub, pool: str) -> None:
    """Two provider errors in a row: the breaker (min_calls 2, failure rate 0.5) opens."""
    for _ in range(2):
        lease = stub.Acquire(
            pb.AcquireRequest(tenant="default", pool=pool, input_tokens=1), timeout=10
        )
        failed = pb.ReleaseRequest(
            lease_id=lease.lease_id, tenant="default", outcome=pb.OUTCOME_PROVIDER_ERROR
        )
        stub.Release(failed, timeout=10)
    status = stub.GetStatus(pb.GetStatusRequest(), timeout=10)
    assert next(p.circuit for p in status.pools if p.name == pool) == "open"


@pytest.mark.parametrize(
    ("group", "down", "up", "shut"),
    [("regions", "east", "west", pause), ("circuit", "open-east", "open-west", open_circuit)],
    ids=["paused", "circuit-open"],
)
def test_the_router_moves_on_from_a_deployment_admitd_calls_unavailable(
    proxy: LiteLLMProxy,
    provider: FakeProvider,
    stub: pb_grpc.AdmissionStub,
    group: str,
    down: str,
    up: str,
    shut: Any,
) -> None:
    shut(stub, down)
    before = usage(stub, down)
    for _ in range(4):
        raw = client(proxy, "ads").chat.completions.with_raw_response.create(
            model=group,
            messages=HELLO,
            max_tokens=20,
        )
        assert raw.headers["x-litellm-model-id"] == up
    assert len(provider.calls()) == 4
    assert usage(stub, down) == before  # nothing admitted on the unavailable pool
    assert [row[:2] for row in usage(stub, up)] == [("ads", 4)]


def test_the_readme_config_as_written(
    litellm_proxies: tuple[LiteLLMProxy, LiteLLMProxy],
    provider: FakeProvider,
    stub: pb_grpc.AdmissionStub,
) -> None:
    readme = litellm_proxies[1]
    reply = client(readme).chat.completions.create(
        model="gpt-4o",
        messages=HELLO,
        max_tokens=50,
    )
    assert reply.choices[0].message.content == REPLY
    (call,) = provider.calls()
    rows = [*usage(stub, "openai/gpt-4o-a"), *usage(stub, "openai/gpt-4o-b")]
    assert rows == [("default", 1, call["input_tokens"], call["output_tokens"])]
