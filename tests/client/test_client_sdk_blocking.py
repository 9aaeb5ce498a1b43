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
from support.sdks import CLAUDE, CONFIG, GPT, HELLO, REPLY_TOKENS, ledger, releases, usd


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
        channel, _ = aio_channel(target(h))
        reader = AsyncAdmissionClient(channel, tenant="a")
        # Two calls each, of 9 input and 8 output tokens: the bills exact.
        assert await ledger(reader, GPT) == (2, 18, 16, usd(GPT, 18, 2 * REPLY_TOKENS))
        assert await ledger(reader, CLAUDE) == (2, 18, 16, usd(CLAUDE, 18, 2 * REPLY_TOKENS))
        await channel.close()
        assert (await h.pool(GPT)).in_flight == (await h.pool(CLAUDE)).in_flight == 0
