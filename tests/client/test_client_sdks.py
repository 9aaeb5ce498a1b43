"""The official openai and anthropic SDKs, wrapped by admitd_client.wrap, against the
simulated provider (a real HTTP server process) and a real admitd (ManualClock).

Each test asserts the exact tokens the provider reported, what the client sent at each
Release (usage, outcome, retry-after), what the cost ledger charged (tokens and USD), and
what the pool saw (in flight, paused). Time passes only as the client's injected sleep
asks: a short sleep (a backoff) advances admitd's clock; a renewal's long sleep never ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anthropic
import openai
import pytest
import tiktoken

from admitd_client import AdmissionClient, AsyncAdmissionClient, Outcome, Rejected, wrap
from admitd_client._proto import admission_pb2 as pb
from support.client import FakeProvider, aio_channel, serve, sync_channel, target
from support.harness import Harness

GPT = "openai/gpt-4o"
CLAUDE = "anthropic/claude-sonnet-4-6"
# The providers' list prices (USD per million tokens), cache reads and writes included.
PRICES: dict[str, dict[str, float]] = {
    GPT: {"input_per_million": 2.5, "cached_input_per_million": 1.25, "output_per_million": 10},
    CLAUDE: {
        "input_per_million": 3,
        "cached_input_per_million": 0.3,
        "cache_write_input_per_million": 3.75,
        "output_per_million": 15,
    },
}
CONFIG: dict[str, Any] = {
    "lease": {"ttl": "30s"},
    "pools": [{"name": GPT, "price": PRICES[GPT]}, {"name": CLAUDE, "price": PRICES[CLAUDE]}],
    "tenants": [{"name": "a"}],
}
HELLO = [{"role": "user", "content": "hello world"}]
# "Hello! I am a simulated model." is 8 tokens in o200k_base and in cl100k_base.
REPLY_TOKENS = 8


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeProvider]:
    fake = FakeProvider()
    yield fake
    fake.close()


@pytest.fixture
def fake(provider: FakeProvider) -> FakeProvider:
    provider.reset()
    return provider


class Sleep:
    """The client's injected sleep: a backoff advances admitd's clock; a renewal (a long
    sleep) waits until the lease's block cancels it."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.slept: list[float] = []

    async def __call__(self, seconds: float) -> None:
        if seconds >= 5:
            await asyncio.Future()
        self.slept.append(seconds)
        await self.h.advance(seconds)


@contextlib.asynccontextmanager
async def admitted(
    **options: Any,
) -> AsyncIterator[tuple[Harness, AsyncAdmissionClient, Any, Sleep]]:
    async with serve(CONFIG) as h:
        assert h.clock is not None
        channel, sent = aio_channel(target(h))
        sleep = Sleep(h)
        client = AsyncAdmissionClient(
            channel, tenant="a", sleep=sleep, wall=h.clock.wall, **options
        )
        try:
            yield h, client, sent, sleep
        finally:
            await channel.close()


def releases(sent: Any) -> list[tuple[Outcome, float, tuple[int, int] | None]]:
    """Each Release the client sent: outcome, provider retry-after, usage."""
    out = []
    for call in sent.sent:
        if call.method == "Release":
            request: pb.ReleaseRequest = call.request
            usage = (request.usage.input_tokens, request.usage.output_tokens)
            hint = request.provider_retry_after.ToNanoseconds() / 1e9
            out.append(
                (Outcome(request.outcome), hint, usage if request.HasField("usage") else None)
            )
    return out


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop turn until ``condition`` holds (bounded; no time passes for admitd)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


def usd(pool: str, input_tokens: int, output_tokens: int, read: int = 0, written: int = 0) -> float:
    """The bill of this usage at the pool's list prices, as GetUsage reports it: whole
    nano-dollars (every price here is a whole number of nano-dollars a token)."""
    price = {name: round(value * 1000) for name, value in PRICES[pool].items()}
    price.setdefault("cache_write_input_per_million", price["input_per_million"])
    nano = (
        (input_tokens - read - written) * price["input_per_million"]
        + read * price["cached_input_per_million"]
        + written * price["cache_write_input_per_million"]
        + output_tokens * price["output_per_million"]
    )
    return nano / 1e9


def cache_counts(sent: Any) -> list[tuple[int, int]]:
    """The cached and cache-write input tokens each Release sent (parts of its input)."""
    return [
        (call.request.usage.cached_input_tokens, call.request.usage.cache_write_input_tokens)
        for call in sent.sent
        if call.method == "Release"
    ]


async def ledger(client: AsyncAdmissionClient, pool: str) -> tuple[int, int, int, float]:
    """The pool's ledger row: calls, input and output tokens, USD (no cached input)."""
    rows = [row for row in await client.usage() if row.pool == pool]
    assert len(rows) == 1, rows
    row = rows[0]
    assert (row.cached_input_tokens, row.cache_write_input_tokens) == (0, 0)
    return row.calls, row.input_tokens, row.output_tokens, row.usd


async def test_openai_chat_completion_async(fake: FakeProvider) -> None:
    async with admitted() as (h, admitd, sent, _), contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(
            wrap(openai.AsyncOpenAI(base_url=fake.openai_url, api_key="k"), admitd)
        )
        reply = await client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=50)
        assert reply.choices[0].message.content == "Hello! I am a simulated model."
        assert reply.usage is not None
        assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (9, REPLY_TOKENS)
        # The reservation was the provider's own count, plus max_tokens.
        acquire = sent.last("Acquire").request
        assert (acquire.pool, acquire.input_tokens, acquire.max_output_tokens) == (GPT, 9, 50)
        assert releases(sent) == [(Outcome.OK, 0.0, (9, REPLY_TOKENS))]
        assert await ledger(admitd, GPT) == (1, 9, REPLY_TOKENS, usd(GPT, 9, 8))
        assert (await h.pool(GPT)).in_flight == 0
        assert fake.calls() == [
            {"api": "openai.chat", "model": "gpt-4o", "stream": False, "input_tokens": 9,
             "output_tokens": 8, "cache_read": 0, "cache_write": 0},
        ]  # fmt: skip


async def test_openai_stream_without_include_usage_is_charged_exactly(fake: FakeProvider) -> None:
    async with admitted() as (h, admitd, sent, _), contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(
            wrap(openai.AsyncOpenAI(base_url=fake.openai_url, api_key="k"), admitd)
        )
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=HELLO, max_tokens=50, stream=True
        )
        assert (await h.pool(GPT)).in_flight == 1  # held while the caller reads
        chunks = [chunk async for chunk in stream]
        # The caller did not ask for usage: it sees no usage chunk, every chunk has a choice.
        assert all(chunk.choices for chunk in chunks)
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == (
            "Hello! I am a simulated model."
        )
        assert releases(sent) == [(Outcome.OK, 0.0, (9, REPLY_TOKENS))]
        assert (await h.pool(GPT)).in_flight == 0
        # Asked for: the usage chunk is the caller's.
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
        assert chunks[-1].choices == []
        assert chunks[-1].usage.prompt_tokens == 9
        assert sent.last("Acquire").request.max_output_tokens == 16_384  # gpt-4o's ceiling
        assert await ledger(admitd, GPT) == (2, 18, 16, usd(GPT, 18, 16))


async def test_openai_responses_whole_and_streamed(fake: FakeProvider) -> None:
    async with admitted() as (h, admitd, sent, _), contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(
            wrap(openai.AsyncOpenAI(base_url=fake.openai_url, api_key="k"), admitd)
        )
        reply = await client.responses.create(
            model="gpt-4o", input="hello world", instructions="Be brief.", max_output_tokens=5
        )
        assert reply.usage is not None
        assert (reply.usage.input_tokens, reply.usage.output_tokens) == (16, 5)
        assert reply.status == "incomplete"  # cut at max_output_tokens
        assert sent.last("Acquire").request.input_tokens == 16
        events = [
            e
            async for e in await client.responses.create(
                model="gpt-4o", input="hello world", stream=True
            )
        ]
        assert events[-1].type == "response.completed"
        assert releases(sent) == [(Outcome.OK, 0.0, (16, 5)), (Outcome.OK, 0.0, (9, REPLY_TOKENS))]
        assert await ledger(admitd, GPT) == (2, 25, 13, usd(GPT, 25, 13))
        assert (await h.pool(GPT)).in_flight == 0


async def test_anthropic_system_tools_and_prompt_cache(fake: FakeProvider) -> None:
    system = [{"type": "text", "text": "You answer questions about a long document. " * 20,
               "cache_control": {"type": "ephemeral"}}]  # fmt: skip
    schema = {"type": "object", "properties": {"word": {"type": "string"}}}
    tools = [{"name": "lookup", "description": "Look a word up.", "input_schema": schema}]
    async with admitted() as (_h, admitd, sent, _), contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(
            wrap(anthropic.AsyncAnthropic(base_url=fake.anthropic_url, api_key="k"), admitd)
        )
        args = dict(
            model="claude-sonnet-4-6", max_tokens=100, system=system, tools=tools, messages=HELLO
        )
        first = await client.messages.create(**args)
        second = await client.messages.create(**args)
        write = first.usage.cache_creation_input_tokens
        assert write is not None
        assert write > 0
        assert (first.usage.cache_read_input_tokens, second.usage.cache_read_input_tokens) == (
            0,
            write,
        )
        assert second.usage.cache_creation_input_tokens == 0
        rest = first.usage.input_tokens
        total = rest + write  # the input Anthropic counts beside its cache
        calls = fake.calls()
        assert [c["input_tokens"] for c in calls] == [total, total]
        # The reservation erred high (cl100k_base x 1.3 against the provider's count).
        reserved = sent.last("Acquire").request.input_tokens
        assert total < reserved <= total * 1.3 + 1
        # Anthropic's three input counts, sent as one total and its cached parts.
        assert releases(sent) == [(Outcome.OK, 0.0, (total, REPLY_TOKENS))] * 2
        assert cache_counts(sent) == [(0, write), (write, 0)]
        (row,) = await admitd.usage()
        assert (row.calls, row.input_tokens, row.output_tokens) == (2, 2 * total, 16)
        assert (row.cached_input_tokens, row.cache_write_input_tokens) == (write, write)
        # The bill: a write at 1.25x the input price, a read at 0.1x, the rest at 1x.
        assert row.usd == usd(CLAUDE, 2 * total, 16, read=write, written=write)
        assert row.usd < usd(CLAUDE, 2 * total, 16)  # no longer all at the input price


async def test_openai_prompt_cache_is_billed_at_the_cached_price(fake: FakeProvider) -> None:
    document = [{"role": "system", "content": "Answer from this long document. " * 300}]
    async with admitted() as (_h, admitd, sent, _), contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(
            wrap(openai.AsyncOpenAI(base_url=fake.openai_url, api_key="k"), admitd)
        )
        messages = [*document, *HELLO]
        first = await client.chat.completions.create(model="gpt-4o", messages=messages)
        second = await client.chat.completions.create(model="gpt-4o", messages=messages)
        assert first.usage is not None
        assert second.usage is not None
        prompt = first.usage.prompt_tokens
        assert second.usage.prompt_tokens == prompt
        details = second.usage.prompt_tokens_details
        assert details is not None
        cached = details.cached_tokens
        assert cached is not None
        assert 1024 <= cached <= prompt  # OpenAI caches prefixes of 1024 tokens and more
        assert releases(sent) == [(Outcome.OK, 0.0, (prompt, REPLY_TOKENS))] * 2
        assert cache_counts(sent) == [(0, 0), (cached, 0)]
        (row,) = await admitd.usage()
        assert (row.input_tokens, row.cached_input_tokens, row.cache_write_input_tokens) == (
            2 * prompt,
            cached,
            0,
        )
        assert row.usd == usd(GPT, 2 * prompt, 2 * REPLY_TOKENS, read=cached)


async def test_a_stream_closed_early_is_charged_what_it_produced(fake: FakeProvider) -> None:
    async with admitted() as (h, admitd, sent, _), contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(
            wrap(openai.AsyncOpenAI(base_url=fake.openai_url, api_key="k"), admitd)
        )
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=HELLO, max_tokens=50, stream=True
        )
        seen = ""
        async for chunk in stream:
            seen += chunk.choices[0].delta.content or ""
            if seen:
                break
        await stream.close()  # the caller stopped reading after the first words
        assert seen == "Hello! "
        produced = len(tiktoken.get_encoding("o200k_base").encode(seen))
        assert releases(sent) == [(Outcome.CANCELLED, 0.0, (9, produced))]
        assert await ledger(admitd, GPT) == (1, 9, produced, usd(GPT, 9, produced))
        assert (await h.pool(GPT)).in_flight == 0


async def test_an_overloaded_529_pauses_the_pool_like_a_429_and_bills_nothing(
    fake: FakeProvider,
) -> None:
    async with (
        admitted(random=lambda: 0.0) as (h, admitd, sent, sleep),
        contextlib.AsyncExitStack() as stack,
    ):
        fake.faults({"status": 529, "retry_after": "3"}, {"status": 503})
        client = await stack.enter_async_context(
            wrap(anthropic.AsyncAnthropic(base_url=fake.anthropic_url, api_key="k"), admitd)
        )
        call = asyncio.ensure_future(
            client.messages.create(model="claude-sonnet-4-6", max_tokens=100, messages=HELLO)
        )
        await h.until_queued(CLAUDE, 1)  # the retry waits in admitd's queue
        assert (await h.pool(CLAUDE)).paused_for.ToTimedelta().total_seconds() == 3.0
        await h.advance(3)  # then a 503 (an error without a hint), then the answer
        reply = await asyncio.wait_for(call, 30)
        assert reply.usage.input_tokens == 9
        assert sleep.slept == [1.0]  # the SDK's second backoff, outside any lease
        assert releases(sent) == [
            (Outcome.PROVIDER_RATE_LIMITED, 3.0, (0, 0)),
            (Outcome.PROVIDER_ERROR, 0.0, (0, 0)),
            (Outcome.OK, 0.0, (9, REPLY_TOKENS)),
        ]
        assert await ledger(admitd, CLAUDE) == (3, 9, REPLY_TOKENS, usd(CLAUDE, 9, REPLY_TOKENS))
        assert (await h.pool(CLAUDE)).in_flight == 0


async def test_anthropic_stream_helper_and_raw_stream(fake: FakeProvider) -> None:
    async with admitted() as (h, admitd, sent, _), contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(
            wrap(anthropic.AsyncAnthropic(base_url=fake.anthropic_url, api_key="k"), admitd)
        )
        async with client.messages.stream(
            model="claude-sonnet-4-6", max_tokens=3, messages=HELLO
        ) as stream:
            assert (await h.pool(CLAUDE)).in_flight == 1
            text = "".join([piece async for piece in stream.text_stream])
        assert text == "Hello! I"  # cut at 3 tokens
        events = [
            e
            async for e in await client.messages.create(
                model="claude-sonnet-4-6", max_tokens=100, messages=HELLO, stream=True
            )
        ]
        assert events[0].type == "message_start"
        assert releases(sent) == [(Outcome.OK, 0.0, (9, 3)), (Outcome.OK, 0.0, (9, REPLY_TOKENS))]
        assert (await h.pool(CLAUDE)).in_flight == 0


async def test_a_429_is_released_then_retried_through_admitd(fake: FakeProvider) -> None:
    async with admitted() as (h, admitd, sent, sleep), contextlib.AsyncExitStack() as stack:
        fake.faults({"status": 429, "retry_after": "2"}, {"status": 429, "retry_after_ms": "1500"})
        client = await stack.enter_async_context(
            wrap(openai.AsyncOpenAI(base_url=fake.openai_url, api_key="k"), admitd)
        )
        call = asyncio.ensure_future(
            client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=50)
        )
        # The 429 is released with its hint: the pool is paused for everyone, and the
        # retry waits in admitd's queue, holding no slot.
        await h.until_queued(GPT, 1)
        assert (await h.pool(GPT)).paused_for.ToTimedelta().total_seconds() == 2.0
        assert (await h.pool(GPT)).in_flight == 0
        await h.advance(2)
        await h.until_queued(GPT, 1)  # the second 429: retry-after-ms
        assert (await h.pool(GPT)).paused_for.ToTimedelta().total_seconds() == 1.5
        await h.advance(1.5)
        reply = await asyncio.wait_for(call, 30)
        assert reply.usage is not None
        assert reply.usage.prompt_tokens == 9
        assert sleep.slept == []  # never slept: admitd held the retries back
        assert releases(sent) == [
            (Outcome.PROVIDER_RATE_LIMITED, 2.0, (0, 0)),  # a 429 bills nothing
            (Outcome.PROVIDER_RATE_LIMITED, 1.5, (0, 0)),
            (Outcome.OK, 0.0, (9, REPLY_TOKENS)),
        ]
        assert [c.get("fault", {}).get("status") for c in fake.calls()] == [429, 429, None]
        assert await ledger(admitd, GPT) == (3, 9, REPLY_TOKENS, usd(GPT, 9, 8))


async def test_529_backs_off_and_retries_run_out(fake: FakeProvider) -> None:
    async with (
        admitted(random=lambda: 0.0) as (h, admitd, sent, sleep),
        contextlib.AsyncExitStack() as stack,
    ):
        fake.faults({"status": 529}, {"status": 529})
        sdk = anthropic.AsyncAnthropic(base_url=fake.anthropic_url, api_key="k", max_retries=1)
        client = await stack.enter_async_context(wrap(sdk, admitd))
        with pytest.raises(anthropic.InternalServerError) as raised:
            await client.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=HELLO)
        assert raised.value.status_code == 529
        assert sleep.slept == [0.5]  # the SDK's first backoff, outside any lease
        assert releases(sent) == [(Outcome.PROVIDER_RATE_LIMITED, 0.0, (0, 0))] * 2
        assert (await h.pool(CLAUDE)).in_flight == 0
        assert len(fake.calls()) == 2
        assert await ledger(admitd, CLAUDE) == (2, 0, 0, 0.0)  # overloaded: nothing billed


async def test_a_timeout_and_a_cancellation_release_their_slot(fake: FakeProvider) -> None:
    async with admitted() as (h, admitd, sent, _), contextlib.AsyncExitStack() as stack:
        fake.faults({"hang": True}, {"hang": True})
        sdk = openai.AsyncOpenAI(base_url=fake.openai_url, api_key="k", max_retries=0, timeout=0.3)
        client = await stack.enter_async_context(wrap(sdk, admitd))
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=50)
        # No usage to send: admitd charges the reservation's input (the prompt may have been
        # processed), no output.
        assert releases(sent) == [(Outcome.TIMEOUT, 0.0, None)]
        patient = await stack.enter_async_context(
            wrap(openai.AsyncOpenAI(base_url=fake.openai_url, api_key="k"), admitd)
        )
        call = asyncio.ensure_future(
            patient.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=50)
        )
        await until(lambda: len(fake.calls()) == 2)  # the provider holds the second call
        assert (await h.pool(GPT)).in_flight == 1
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert releases(sent)[-1] == (Outcome.CANCELLED, 0.0, None)
        assert (await h.pool(GPT)).in_flight == 0
        assert await ledger(admitd, GPT) == (2, 18, 0, usd(GPT, 18, 0))


async def test_a_refusal_past_the_wait_budget_raises_rejected(fake: FakeProvider) -> None:
    async with admitted() as (h, admitd, _sent, _), contextlib.AsyncExitStack() as stack:
        await h.release(
            (await h.acquire(tenant="a", pool=GPT, input_tokens=1)).lease_id,
            provider_retry_after=_seconds(60),
        )
        client = await stack.enter_async_context(
            wrap(openai.AsyncOpenAI(base_url=fake.openai_url, api_key="k"), admitd, wait_timeout=0)
        )
        with pytest.raises(Rejected) as refused:
            await client.chat.completions.create(model="gpt-4o", messages=HELLO)
        assert refused.value.retry_after == 60.0
        assert fake.calls() == []


def _seconds(value: float) -> Any:
    from support.harness import seconds

    return seconds(value)


async def test_the_blocking_sdks(fake: FakeProvider) -> None:
    async with serve(CONFIG) as h:

        def scenario() -> None:
            channel, sent = sync_channel(target(h))
            admitd = AdmissionClient(channel, tenant="a")
            with contextlib.ExitStack() as closing:  # the SDK clients and their sockets
                gpt = closing.enter_context(
                    wrap(openai.OpenAI(base_url=fake.openai_url, api_key="k"), admitd)
                )
                reply = gpt.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=50)
                assert reply.usage is not None
                assert reply.usage.prompt_tokens == 9
                chunks = list(
                    gpt.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
                )
                assert all(chunk.choices for chunk in chunks)
                claude = closing.enter_context(
                    wrap(anthropic.Anthropic(base_url=fake.anthropic_url, api_key="k"), admitd)
                )
                with claude.messages.stream(
                    model="claude-sonnet-4-6", max_tokens=100, messages=HELLO
                ) as stream:
                    assert "".join(stream.text_stream) == "Hello! I am a simulated model."
                message = claude.with_options(timeout=5).messages.create(
                    model="claude-sonnet-4-6", max_tokens=100, messages=HELLO
                )
                assert message.usage.input_tokens == 9
                assert releases(sent) == [(Outcome.OK, 0.0, (9, REPLY_TOKENS))] * 4
                with pytest.raises(TypeError, match="wrap\\(\\) needs an AsyncAdmissionClient"):
                    wrap(openai.AsyncOpenAI(api_key="k"), admitd)
            channel.close()

        await asyncio.to_thread(scenario)
        assert (await h.pool(GPT)).in_flight == (await h.pool(CLAUDE)).in_flight == 0
