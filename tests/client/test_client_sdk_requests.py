"""What a wrapped SDK call reserves and where, from the call's own arguments, against the
simulated provider and a real admitd: unknown arguments refused before anything is
reserved, models mapped to pools, Claude models counted without tiktoken's ``KeyError``,
image parts counted (erring high when the size is unknown), and ``record()`` of an object
it cannot read warning with its type and what admitd then charges.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import anthropic
import openai
import pydantic
import pytest

from admitd_client import Outcome, wrap
from admitd_client._reserve import reserve
from admitd_client._tokens import Counter
from support.client import FakeProvider, png_base64
from support.sdks import (
    CLAUDE,
    CONFIG,
    GPT,
    HELLO,
    PRICES,
    REPLY,
    REPLY_TOKENS,
    admitted,
    ledger,
    releases,
    usd,
)

AZURE = "azure/gpt-4o"
SONNET_45 = "anthropic/claude-sonnet-4-5"
POOLS: dict[str, Any] = {
    **CONFIG,
    "pools": [
        *CONFIG["pools"],
        {"name": AZURE, "price": PRICES[GPT]},
        {"name": SONNET_45, "price": PRICES[CLAUDE]},
    ],
}


@pytest.mark.parametrize(
    ("maker", "call", "kwargs", "typo"),
    [
        ("openai", "chat.completions.create", {"model": "gpt-4o", "messages": HELLO}, "max_tokns"),
        ("openai", "responses.create", {"model": "gpt-4o", "input": "hi"}, "max_output_tokns"),
        (
            "anthropic",
            "messages.create",
            {"model": "claude-sonnet-4-6", "messages": HELLO},
            "wait_timout",
        ),
        ("anthropic", "messages.stream", {"model": "claude-sonnet-4-6", "messages": HELLO}, "tool"),
    ],
)
async def test_an_unknown_argument_raises_before_anything_is_reserved(
    fake: FakeProvider, maker: str, call: str, kwargs: dict[str, Any], typo: str
) -> None:
    async with admitted() as (h, admitd, sent, _), contextlib.AsyncExitStack() as stack:
        if maker == "openai":
            sdk: Any = openai.AsyncOpenAI(base_url=fake.openai_url, api_key="k")
        else:
            sdk = anthropic.AsyncAnthropic(base_url=fake.anthropic_url, api_key="k")
        client = await stack.enter_async_context(wrap(sdk, admitd))
        method = client
        for name in call.split("."):
            method = getattr(method, name)
        request = {**kwargs, "max_tokens": 10, typo: 5}
        if maker == "openai":
            del request["max_tokens"]
        with pytest.raises(TypeError, match=f"unexpected keyword argument '{typo}'"):
            method(**request)  # raised by the call itself, before any await
        assert sent.methods() == []
        assert fake.calls() == []
        assert (await h.pool(GPT)).in_flight == (await h.pool(CLAUDE)).in_flight == 0


async def test_models_map_to_pools(fake: FakeProvider) -> None:
    async with (
        admitted(POOLS, model_pools={"gpt-4o": AZURE}) as (h, admitd, sent, _),
        contextlib.AsyncExitStack() as stack,
    ):
        sdk = openai.AsyncOpenAI(base_url=fake.openai_url, api_key="k")
        by_client = await stack.enter_async_context(wrap(sdk, admitd))
        await by_client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=20)
        assert sent.last("Acquire").request.pool == AZURE  # the admitd client's map
        by_wrap = wrap(sdk, admitd, model_pools={"gpt-4o": GPT})
        await by_wrap.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=20)
        assert sent.last("Acquire").request.pool == GPT  # wrap's own map wins
        claude = await stack.enter_async_context(
            wrap(anthropic.AsyncAnthropic(base_url=fake.anthropic_url, api_key="k"), admitd)
        )
        await claude.messages.create(model="claude-sonnet-4-6", max_tokens=20, messages=HELLO)
        assert sent.last("Acquire").request.pool == CLAUDE  # unmapped: <provider>/<model>
        for pool in (AZURE, GPT):
            assert await ledger(admitd, pool) == (1, 9, REPLY_TOKENS, usd(GPT, 9, REPLY_TOKENS))
            assert (await h.pool(pool)).in_flight == 0


async def test_claude_sonnet_4_5_is_counted_without_tiktoken(fake: FakeProvider) -> None:
    async with admitted(POOLS) as (h, admitd, sent, _), contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(
            wrap(anthropic.AsyncAnthropic(base_url=fake.anthropic_url, api_key="k"), admitd)
        )
        with pytest.warns(DeprecationWarning, match="claude-sonnet-4-5"):  # the SDK's own
            reply = await client.messages.create(
                model="claude-sonnet-4-5", max_tokens=30, messages=HELLO
            )
        assert (reply.usage.input_tokens, reply.usage.output_tokens) == (9, REPLY_TOKENS)
        acquire = sent.last("Acquire").request
        # cl100k_base's 9, times 1.3 rounded up: above the bill, as documented.
        assert (acquire.pool, acquire.input_tokens, acquire.max_output_tokens) == (
            SONNET_45,
            12,
            30,
        )
        assert releases(sent) == [(Outcome.OK, 0.0, (9, REPLY_TOKENS))]
        assert await ledger(admitd, SONNET_45) == (1, 9, 8, usd(CLAUDE, 9, REPLY_TOKENS))
        assert (await h.pool(SONNET_45)).in_flight == 0


async def test_image_parts_are_counted_and_an_unknown_size_errs_high(fake: FakeProvider) -> None:
    inline = {"url": f"data:image/png;base64,{png_base64(1024, 1024)}"}
    linked = {"url": "https://example.com/photo.jpg"}  # size unknown: the largest bill
    async with admitted() as (h, admitd, sent, _), contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(
            wrap(openai.AsyncOpenAI(base_url=fake.openai_url, api_key="k"), admitd)
        )
        billed = []
        for image in (inline, linked):
            content: Any = [
                {"type": "text", "text": "hello world"},
                {"type": "image_url", "image_url": image},
            ]
            reply = await client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": content}], max_tokens=20
            )
            assert reply.usage is not None
            billed.append(reply.usage.prompt_tokens)
        reserved = [call.request.input_tokens for call in sent.sent if call.method == "Acquire"]
        # 9 for the text; 1024 x 1024 at high detail is 765 (OpenAI's vision guide); by URL
        # the size is unknown and 1445 (2048 x 2048, the most an image bills) is reserved.
        assert reserved == [9 + 765, 9 + 1445]
        assert billed[0] == reserved[0]
        assert billed[1] <= reserved[1]
        total = sum(billed)
        assert await ledger(admitd, GPT) == (2, total, 16, usd(GPT, total, 2 * REPLY_TOKENS))
        assert (await h.pool(GPT)).in_flight == 0


async def test_record_of_an_object_it_cannot_read_warns_and_the_reservation_is_charged(
    fake: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    sdk = openai.AsyncOpenAI(base_url=fake.openai_url, api_key="k")  # not wrapped
    request: dict[str, Any] = {"model": "gpt-4o", "messages": HELLO, "max_tokens": 50}
    async with admitted() as (h, admitd, sent, _):
        with caplog.at_level(logging.WARNING, logger="admitd_client"):
            async with admitd.lease(request=request) as lease:
                stream = await sdk.chat.completions.create(**request, stream=True)
                assert lease.record(stream) is False  # an unread stream has no usage yet
                text = "".join([c.choices[0].delta.content or "" async for c in stream])
        assert text == "Hello! I am a simulated model."
        assert [r.getMessage() for r in caplog.records] == [
            f"lease {lease.lease_id}: record() found no usage in a openai.AsyncStream, so "
            "nothing was recorded from it; unless usage is recorded, admitd charges the whole "
            "reservation (59 tokens). Record the final response or each stream event (OpenAI "
            "chat streams need stream_options={'include_usage': True}), or use "
            "admitd_client.wrap()."
        ]
        # Charged as warned: the reservation, 9 in and 50 out.
        assert releases(sent) == [(Outcome.OK, 0.0, None)]
        assert await ledger(admitd, GPT) == (1, 9, 50, usd(GPT, 9, 50))
        # A raw response is read: usage recorded, the bill exact.
        async with admitd.lease(request=request) as lease:
            raw = await sdk.chat.completions.with_raw_response.create(**request)
            assert lease.record(raw) is True
        assert releases(sent)[-1] == (Outcome.OK, 0.0, (9, REPLY_TOKENS))
        assert await ledger(admitd, GPT) == (2, 18, 58, usd(GPT, 18, 58))
        assert (await h.pool(GPT)).in_flight == 0
        await sdk.close()
        # Anthropic's stream helper, read to the end: its final message is read.
        claude = anthropic.AsyncAnthropic(base_url=fake.anthropic_url, api_key="k")
        asked: dict[str, Any] = {"model": "claude-sonnet-4-6", "max_tokens": 50, "messages": HELLO}
        async with admitd.lease(request=asked) as lease:
            async with claude.messages.stream(**asked) as message_stream:
                assert await message_stream.get_final_text() == REPLY
            assert lease.record(message_stream) is True
        assert releases(sent)[-1] == (Outcome.OK, 0.0, (9, REPLY_TOKENS))
        assert await ledger(admitd, CLAUDE) == (1, 9, 8, usd(CLAUDE, 9, REPLY_TOKENS))
        assert len(caplog.records) == 1  # no more warnings
        await claude.close()


class Answer(pydantic.BaseModel):
    word: str


def test_a_structured_output_type_is_counted_as_its_schema() -> None:
    schema = Counter("o200k_base").json(Answer.model_json_schema())
    assert schema > 10
    chat = {"model": "gpt-4o", "messages": HELLO, "response_format": Answer}
    assert reserve("openai.chat", chat).input_tokens == 9 + schema
    responses = {"model": "gpt-4o", "input": "hello world", "text_format": Answer}
    assert reserve("openai.responses", responses).input_tokens == 9 + schema
    claude = {"model": "claude-sonnet-4-6", "messages": HELLO, "max_tokens": 5}
    plain = reserve("anthropic.messages", claude).input_tokens
    typed = reserve("anthropic.messages", {**claude, "output_format": Answer}).input_tokens
    assert typed > plain


async def test_anthropic_parse_is_admitted_and_calls_that_are_not_say_so(
    fake: FakeProvider, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("admitd_client._wrap._warned", set())  # once per process
    async with admitted() as (h, admitd, sent, _), contextlib.AsyncExitStack() as stack:
        claude = await stack.enter_async_context(
            wrap(anthropic.AsyncAnthropic(base_url=fake.anthropic_url, api_key="k"), admitd)
        )
        parsed = await claude.messages.parse(
            model="claude-sonnet-4-6", max_tokens=30, messages=HELLO
        )
        assert parsed.usage.input_tokens == 9
        assert releases(sent) == [(Outcome.OK, 0.0, (9, REPLY_TOKENS))]
        assert await ledger(admitd, CLAUDE) == (1, 9, 8, usd(CLAUDE, 9, REPLY_TOKENS))
        gpt = await stack.enter_async_context(
            wrap(openai.AsyncOpenAI(base_url=fake.openai_url, api_key="k"), admitd)
        )
        with caplog.at_level(logging.WARNING, logger="admitd_client"):
            raw = claude.messages.with_raw_response
            assert gpt.responses.stream is not None
            assert claude.messages.with_raw_response is raw  # warned once
        assert [r.getMessage() for r in caplog.records] == [
            f"{name} is not admitted by admitd_client.wrap(): its calls bypass admitd's "
            "limits and are not charged"
            for name in ("AsyncMessages.with_raw_response", "AsyncResponses.stream")
        ]
        assert (await h.pool(CLAUDE)).in_flight == 0
