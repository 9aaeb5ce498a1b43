"""The official ``openai`` SDK, wrapped by ``admitd_client.wrap``, against the simulated
provider and a real admitd: chat completions, the Responses API and their streams (with and
without ``include_usage``), and OpenAI's prompt cache.

Each test asserts the exact tokens the provider reported, what the client sent at each
Release, what the cost ledger charged (tokens and USD) and what the pool saw
(``support.sdks``).
"""

from __future__ import annotations

import contextlib

import openai
import tiktoken

from admitd_client import Outcome, wrap
from support.client import FakeProvider
from support.sdks import (
    GPT,
    HELLO,
    REPLY,
    REPLY_TOKENS,
    admitted,
    cache_counts,
    ledger,
    releases,
    usd,
)


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
        assert chunks[-1].usage is not None
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


async def test_openai_prompt_cache_is_billed_at_the_cached_price(fake: FakeProvider) -> None:
    document = [{"role": "system", "content": "Answer from this long document. " * 300}]
    async with admitted() as (h, admitd, sent, _), contextlib.AsyncExitStack() as stack:
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
        assert (await h.pool(GPT)).in_flight == 0


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


async def test_parse_and_the_chat_stream_helper_are_admitted(fake: FakeProvider) -> None:
    async with admitted() as (h, admitd, sent, _), contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(
            wrap(openai.AsyncOpenAI(base_url=fake.openai_url, api_key="k"), admitd)
        )
        parsed = await client.chat.completions.parse(model="gpt-4o", messages=HELLO, max_tokens=50)
        assert parsed.choices[0].message.content == REPLY
        assert sent.last("Acquire").request.max_output_tokens == 50
        answer = await client.responses.parse(model="gpt-4o", input="hello world")
        assert answer.output_text == REPLY
        async with client.chat.completions.stream(
            model="gpt-4o", messages=HELLO, max_tokens=50
        ) as stream:
            assert (await h.pool(GPT)).in_flight == 1  # held while the caller reads
            deltas = [event.delta async for event in stream if event.type == "content.delta"]
        assert "".join(deltas) == REPLY
        # The helper left early: charged the text it had streamed, counted.
        async with client.chat.completions.stream(
            model="gpt-4o", messages=HELLO, max_tokens=50
        ) as stream:
            seen = ""
            async for event in stream:
                if event.type == "content.delta" and event.delta:
                    seen = event.snapshot
                    break
        assert seen == "Hello! "
        produced = len(tiktoken.get_encoding("o200k_base").encode(seen))
        assert releases(sent) == [
            *[(Outcome.OK, 0.0, (9, REPLY_TOKENS))] * 3,
            (Outcome.CANCELLED, 0.0, (9, produced)),
        ]
        output = 3 * REPLY_TOKENS + produced
        assert await ledger(admitd, GPT) == (4, 36, output, usd(GPT, 36, output))
        assert (await h.pool(GPT)).in_flight == 0
