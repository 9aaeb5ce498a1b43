"""The blocking ``OpenAI`` and ``Anthropic`` clients, wrapped with a blocking
``AdmissionClient``, against the simulated provider and a real admitd."""

from __future__ import annotations

import asyncio
import contextlib

import anthropic
import openai
import pytest

from admitd_client import AdmissionClient, AsyncAdmissionClient, Outcome, wrap
from support.client import FakeProvider, aio_channel, serve, sync_channel, target
from support.sdks import CLAUDE, CONFIG, GPT, HELLO, REPLY, REPLY_TOKENS, ledger, releases, usd


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
                parsed = gpt.chat.completions.parse(model="gpt-4o", messages=HELLO)
                assert parsed.choices[0].message.content == REPLY
                with gpt.chat.completions.stream(model="gpt-4o", messages=HELLO) as helper:
                    assert helper.get_final_completion().choices[0].message.content == REPLY
                assert releases(sent) == [(Outcome.OK, 0.0, (9, REPLY_TOKENS))] * 6
                with pytest.raises(TypeError, match="wrap\\(\\) needs an AsyncAdmissionClient"):
                    wrap(openai.AsyncOpenAI(api_key="k"), admitd)
            channel.close()

        await asyncio.to_thread(scenario)
        channel, _ = aio_channel(target(h))
        reader = AsyncAdmissionClient(channel, tenant="a")
        # Four and two calls, of 9 input and 8 output tokens each: the bills exact.
        assert await ledger(reader, GPT) == (4, 36, 32, usd(GPT, 36, 4 * REPLY_TOKENS))
        assert await ledger(reader, CLAUDE) == (2, 18, 16, usd(CLAUDE, 18, 2 * REPLY_TOKENS))
        await channel.close()
        assert (await h.pool(GPT)).in_flight == (await h.pool(CLAUDE)).in_flight == 0


async def test_a_blocking_call_s_429_and_529_are_retried_through_admitd(
    fake: FakeProvider,
) -> None:
    async with serve(CONFIG) as h:
        fake.faults({"status": 429, "retry_after_ms": "1500"})
        channel, sent = sync_channel(target(h))
        admitd = AdmissionClient(channel, tenant="a")
        gpt = wrap(openai.OpenAI(base_url=fake.openai_url, api_key="k"), admitd)
        claude = wrap(anthropic.Anthropic(base_url=fake.anthropic_url, api_key="k"), admitd)
        openai_call = asyncio.ensure_future(
            asyncio.to_thread(
                gpt.chat.completions.create, model="gpt-4o", messages=HELLO, max_tokens=50
            )
        )
        # Released at once with its hint: the retry waits in admitd's queue, holding no slot.
        await h.until_queued(GPT, 1)
        assert (await h.pool(GPT)).paused_for.ToTimedelta().total_seconds() == 1.5
        assert (await h.pool(GPT)).in_flight == 0
        await h.advance(1.5)
        reply = await asyncio.wait_for(openai_call, 30)
        assert reply.usage is not None
        assert reply.usage.prompt_tokens == 9
        fake.faults({"status": 529, "retry_after": "2"})
        anthropic_call = asyncio.ensure_future(
            asyncio.to_thread(
                claude.messages.create, model="claude-sonnet-4-6", max_tokens=50, messages=HELLO
            )
        )
        await h.until_queued(CLAUDE, 1)
        assert (await h.pool(CLAUDE)).paused_for.ToTimedelta().total_seconds() == 2.0
        await h.advance(2)
        message = await asyncio.wait_for(anthropic_call, 30)
        assert message.usage.output_tokens == REPLY_TOKENS
        assert releases(sent) == [
            (Outcome.PROVIDER_RATE_LIMITED, 1.5, (0, 0)),  # billed nothing
            (Outcome.OK, 0.0, (9, REPLY_TOKENS)),
            (Outcome.PROVIDER_RATE_LIMITED, 2.0, (0, 0)),
            (Outcome.OK, 0.0, (9, REPLY_TOKENS)),
        ]
        gpt.close()
        claude.close()
        channel.close()
        reader, _ = aio_channel(target(h))
        usage = AsyncAdmissionClient(reader, tenant="a")
        assert await ledger(usage, GPT) == (2, 9, 8, usd(GPT, 9, REPLY_TOKENS))
        assert await ledger(usage, CLAUDE) == (2, 9, 8, usd(CLAUDE, 9, REPLY_TOKENS))
        await reader.close()
