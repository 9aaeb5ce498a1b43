"""The official ``anthropic`` SDK, wrapped by ``admitd_client.wrap``, against the simulated
provider and a real admitd: messages with a system prompt, tools and the prompt cache (read
and write tokens priced apart), the ``messages.stream`` helper and a raw stream.

Each test asserts the exact tokens the provider reported, what the client sent at each
Release, what the cost ledger charged (tokens and USD) and what the pool saw
(``support.sdks``).
"""

from __future__ import annotations

import contextlib

import anthropic

from admitd_client import Outcome, wrap
from support.client import FakeProvider
from support.sdks import (
    CLAUDE,
    HELLO,
    REPLY_TOKENS,
    admitted,
    cache_counts,
    ledger,
    releases,
    usd,
)


async def test_anthropic_system_tools_and_prompt_cache(fake: FakeProvider) -> None:
    system = [{"type": "text", "text": "You answer questions about a long document. " * 20,
               "cache_control": {"type": "ephemeral"}}]  # fmt: skip
    schema = {"type": "object", "properties": {"word": {"type": "string"}}}
    tools = [{"name": "lookup", "description": "Look a word up.", "input_schema": schema}]
    async with admitted() as (h, admitd, sent, _), contextlib.AsyncExitStack() as stack:
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
        assert await ledger(admitd, CLAUDE) == (2, 18, 11, usd(CLAUDE, 18, 11))
        assert (await h.pool(CLAUDE)).in_flight == 0
