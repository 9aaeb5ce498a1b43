"""Strict lease arguments, and reservations derived from a provider request as it stands."""

from __future__ import annotations

import base64
import logging
import struct
from types import SimpleNamespace
from typing import Any

import pytest

from admitd_client import AdmissionClient, AsyncAdmissionClient, Lease, Usage
from admitd_client._images import anthropic_image_tokens, image_size, openai_image_tokens
from admitd_client._models import pool_for
from admitd_client._reserve import Reservation, api_of, reserve
from support.client import (
    COOKBOOK_MESSAGES,
    GPT4O,
    WEATHER_TOOL,
    aio_channel,
    dead_target,
    png,
    png_base64,
    serve,
    target,
)

HELLO = [{"role": "user", "content": "hello world"}]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"max_tokens": 512},
            "lease() got an unexpected keyword argument 'max_tokens'; admitd calls it "
            "'max_output_tokens' (or pass the provider request: request=)",
        ),
        (
            {"max_output_tokns": 512},
            "lease() got an unexpected keyword argument 'max_output_tokns'; did you mean "
            "'max_output_tokens'?",
        ),
        (
            {"wait_timout": 5},
            "lease() got an unexpected keyword argument 'wait_timout'; did you mean "
            "'wait_timeout'?",
        ),
        (
            {"tools": [WEATHER_TOOL]},
            "lease() got an unexpected keyword argument 'tools'; pass the whole provider "
            "request as request= to reserve for it",
        ),
        ({"pool": ""}, "lease() needs pool= (or request= naming the model)"),
        (
            {"request": {"model": "gpt-4o"}, "messages": HELLO},
            "lease() takes one of request, messages, prompt, input_tokens; got request, messages",
        ),
    ],
)
def test_unknown_arguments_raise_at_once(kwargs: dict[str, Any], message: str) -> None:
    # Nobody listens at the target: the TypeError comes before any RPC, at the call.
    client = AdmissionClient(dead_target(), tenant="a")
    args = {"pool": GPT4O, **kwargs}
    with pytest.raises(TypeError) as raised:
        client.lease(**args)
    assert str(raised.value) == message
    with pytest.raises(TypeError, match=r"^acquire\(\) got an unexpected"):
        client.acquire(pool=GPT4O, wait_timout=5)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"^enqueue\(\) got an unexpected"):
        client.enqueue(pool=GPT4O, max_tokens=5)  # type: ignore[call-arg]
    client.close()


async def test_the_async_client_is_as_strict() -> None:
    async with AsyncAdmissionClient(dead_target(), tenant="a") as client:
        with pytest.raises(TypeError, match=r"^lease\(\) got an unexpected .*'max_tokens'"):
            client.lease(pool=GPT4O, max_tokens=5)  # type: ignore[call-arg]
        with pytest.raises(TypeError, match=r"^run\(\) got an unexpected .*'stream'"):
            await client.run(_never, pool=GPT4O, stream=True)  # type: ignore[call-arg]


async def _never(lease: Lease) -> None:
    raise AssertionError("never called")


def test_openai_chat_requests() -> None:
    # The cookbook's conversation: 124 prompt tokens on gpt-4o, 129 on gpt-4 (the API's).
    request = {"model": "gpt-4o", "messages": COOKBOOK_MESSAGES, "max_tokens": 100}
    assert reserve("openai.chat", request) == Reservation("openai.chat", "gpt-4o", 124, 100)
    older = {"model": "gpt-4", "messages": COOKBOOK_MESSAGES, "max_completion_tokens": 7}
    assert reserve("openai.chat", older).input_tokens == 129
    # max_completion_tokens wins over the deprecated max_tokens; n choices each produce it.
    both = {"model": "gpt-4o", "messages": HELLO, "max_completion_tokens": 9, "max_tokens": 1}
    assert reserve("openai.chat", {**both, "n": 3}).max_output_tokens == 27
    # No limit at all: the model's documented ceiling.
    assert reserve("openai.chat", {"model": "gpt-4o", "messages": HELLO}).max_output_tokens == (
        16_384
    )
    assert reserve(
        "openai.chat", {"model": "gpt-4.1-mini", "messages": HELLO}
    ).max_output_tokens == (32_768)
    # 9 for the message; the tool by the cookbook's function formula: 7 + "get_weather:Get
    # the weather" + 3 + (3 + "city:string:The city") + (3 - 3 + 2 x (3 + 1) + "unit:string:")
    # + 12.
    with_tools = reserve(
        "openai.chat", {"model": "gpt-4o", "messages": HELLO, "tools": [WEATHER_TOOL]}
    )
    assert with_tools.input_tokens == 9 + 45


def test_openai_image_parts() -> None:
    # OpenAI's vision guide: 1024 x 1024 high detail is 765 tokens, 2048 x 4096 is 1105,
    # low detail 85 whatever the size.
    assert openai_image_tokens((1024, 1024), "high", mini=False) == 765
    assert openai_image_tokens((2048, 4096), "high", mini=False) == 1105
    assert openai_image_tokens((4096, 4096), "low", mini=False) == 85
    assert openai_image_tokens(None, "auto", mini=False) == 1445  # by URL: the largest bill
    assert openai_image_tokens((512, 512), "high", mini=True) == 2833 + 5667
    part = {
        "type": "image_url",
        "image_url": {"url": f"data:image/png;base64,{png_base64(1024, 1024)}"},
    }
    messages = [{"role": "user", "content": [{"type": "text", "text": "hello world"}, part]}]
    assert reserve("openai.chat", {"model": "gpt-4o", "messages": messages}).input_tokens == 9 + 765
    responses = {
        "model": "gpt-4o",
        "input": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "input_image",
                        "image_url": part["image_url"]["url"],  # type: ignore[index]
                        "detail": "low",
                    }
                ],
            }
        ],
    }
    assert reserve("openai.responses", responses).input_tokens == 3 + 1 + 85 + 3


def test_openai_responses_requests() -> None:
    # A string input is one user message: 3 + "user" + "hello world" + 3 priming.
    simple = {"model": "gpt-4o", "input": "hello world", "max_output_tokens": 5}
    assert reserve(None, simple) == Reservation("openai.responses", "gpt-4o", 9, 5)
    # Instructions are a developer message: 3 + "developer" (1) + "Be brief." (3).
    briefed = {**simple, "instructions": "Be brief."}
    assert reserve(None, briefed).input_tokens == 9 + 7
    flat_tool = {"type": "function", **WEATHER_TOOL["function"]}
    assert reserve(None, {**simple, "tools": [flat_tool]}).input_tokens == 9 + 45
    assert reserve(None, {"model": "o3", "input": "x"}).max_output_tokens == 100_000


def test_anthropic_requests() -> None:
    # cl100k_base counts (3 + "user" + "hello world" + 3 = 9) times 1.3, rounded up.
    request = {"model": "claude-sonnet-4-5", "messages": HELLO, "max_tokens": 5}
    assert reserve(None, request) == Reservation("anthropic.messages", "claude-sonnet-4-5", 12, 5)
    # system: a message's overhead and its text (3 + 3 = 6 more, 15 in all, 20 scaled).
    assert reserve(None, {**request, "system": "Be brief."}).input_tokens == 20
    blocks = [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]
    assert reserve(None, {**request, "system": blocks}).input_tokens == 20
    # tools: their JSON (scaled) and Anthropic's 346-token tool-use system prompt.
    tool = {
        "name": "get_weather",
        "description": "Get the weather.",
        "input_schema": {"type": "object"},
    }
    with_tool = reserve(None, {**request, "tools": [tool]}).input_tokens
    assert with_tool > 12 + 346
    # An image: width x height / 750, not scaled; by URL, the 1600-token bound.
    source = {"type": "base64", "media_type": "image/png", "data": png_base64(1092, 1092)}
    image = [{"role": "user", "content": [{"type": "image", "source": source}]}]
    # The text: 3 + "user" + 3 priming = 7, times 1.3 = 10.
    assert reserve(None, {**request, "messages": image}).input_tokens == 10 + 1590
    by_url = [
        {
            "role": "user",
            "content": [{"type": "image", "source": {"type": "url", "url": "https://x/a.png"}}],
        }
    ]
    assert reserve(None, {**request, "messages": by_url}).input_tokens == 10 + 1600
    assert anthropic_image_tokens((3000, 3000)) == 1600
    # tool_use and tool_result blocks count their content, not nothing.
    turn = [
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Paris"}}
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}],
        },
    ]
    assert reserve(None, {**request, "messages": turn}).input_tokens > 12


def test_unknown_and_claude_models_never_raise(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="admitd_client"):
        unknown = reserve("openai.chat", {"model": "my-finetune-2", "messages": HELLO})
    assert unknown.input_tokens == 9  # counted with o200k_base
    assert "no tokenizer known for model 'my-finetune-2'" in caplog.text
    assert (
        reserve("openai.chat", {"model": "claude-sonnet-4-5", "messages": HELLO}).input_tokens == 12
    )
    with pytest.raises(TypeError, match="needs the provider call's model="):
        reserve("openai.chat", {"messages": HELLO})
    with pytest.raises(TypeError, match="api= must be one of"):
        reserve("gemini", {"model": "x"})  # type: ignore[arg-type]


def test_which_api_a_request_is_for() -> None:
    assert api_of({"model": "gpt-4o", "messages": HELLO}) == "openai.chat"
    assert api_of({"model": "gpt-4o", "input": "hi"}) == "openai.responses"
    assert api_of({"model": "claude-opus-4-1", "messages": HELLO}) == "anthropic.messages"
    assert api_of({"model": "some-proxy-model", "system": "x", "messages": HELLO}) == (
        "anthropic.messages"
    )


def test_image_headers() -> None:
    assert image_size(png(3, 7)) == (3, 7)
    assert image_size(b"GIF89a" + struct.pack("<HH", 640, 480)) == (640, 480)
    jpeg = (
        b"\xff\xd8"
        + b"\xff\xe0"
        + struct.pack(">H", 4)
        + b"JF"
        + b"\xff\xc0"
        + struct.pack(">HBHH", 11, 8, 300, 200)
        + b"\0" * 8
    )
    assert image_size(jpeg) == (200, 300)
    vp8x = (
        b"RIFF"
        + b"\0" * 4
        + b"WEBPVP8X"
        + b"\0" * 8
        + (99).to_bytes(3, "little")
        + (49).to_bytes(3, "little")
    )
    assert image_size(vp8x) == (100, 50)
    assert image_size(b"not an image") is None
    assert image_size(base64.b64decode(png_base64(5, 5))) == (5, 5)


def test_pools_for_models() -> None:
    assert pool_for("openai.chat", "gpt-4o", None) == "openai/gpt-4o"
    assert pool_for("anthropic.messages", "claude-sonnet-4-5", {}) == "anthropic/claude-sonnet-4-5"
    assert pool_for("openai.responses", "gpt-4o", {"gpt-4o": "azure/gpt-4o"}) == "azure/gpt-4o"


async def test_a_lease_from_a_provider_request() -> None:
    async with serve() as h:
        channel, sent = aio_channel(target(h))
        request = {"model": "gpt-4o", "messages": COOKBOOK_MESSAGES, "max_tokens": 100}
        async with (
            AsyncAdmissionClient(channel, tenant="a") as client,
            client.lease(request=request) as lease,
        ):
            assert (lease.pool, lease.model, lease.api) == (GPT4O, "gpt-4o", "openai.chat")
            assert (lease.input_tokens, lease.max_output_tokens) == (124, 100)
            assert lease.reserved_tokens == 224
            lease.record(input_tokens=120, output_tokens=10)
        acquire = sent.last("Acquire").request
        assert (acquire.pool, acquire.input_tokens, acquire.max_output_tokens) == (GPT4O, 124, 100)
        # max_output_tokens given beside the request wins; model_pools names the pool.
        mapped = AsyncAdmissionClient(channel, tenant="a", model_pools={"gpt-4": GPT4O})
        async with mapped.lease(
            request={"model": "gpt-4", "messages": HELLO}, max_output_tokens=3
        ) as lease:
            assert (lease.pool, lease.input_tokens, lease.max_output_tokens) == (GPT4O, 9, 3)
        assert (await h.pool(GPT4O)).in_flight == 0
        await channel.close()


def _lease() -> Lease:
    return Lease(
        tenant="a", pool="p", input_tokens=100, max_output_tokens=50, proto=None, request_tenant="a"
    )


class FinishedStream:
    """Shaped like anthropic's MessageStream: a snapshot of the message once consumed."""

    def __init__(self, message: Any) -> None:
        self._message = message

    @property
    def current_message_snapshot(self) -> Any:
        if self._message is None:
            raise AssertionError("not started")  # as the SDK's assert does
        return self._message


class RawResponse:
    """Shaped like a ``with_raw_response`` object: ``parse()`` gives the body."""

    http_response = object()

    def __init__(self, body: Any) -> None:
        self._body = body

    def parse(self) -> Any:
        return self._body


class SomeStream:
    """An unconsumed SDK stream: no usage anywhere in it."""

    def __iter__(self) -> Any:
        return iter(())


def test_record_never_drops_usage_silently(caplog: pytest.LogCaptureFixture) -> None:
    anthropic_usage = {"input_tokens": 10, "cache_read_input_tokens": 80, "output_tokens": 5}
    with caplog.at_level(logging.WARNING, logger="admitd_client"):
        lease = _lease()
        assert lease.record(
            FinishedStream(SimpleNamespace(usage=SimpleNamespace(**anthropic_usage)))
        )
        assert lease.usage == Usage(90, 5, cached_input_tokens=80)
        lease = _lease()
        chat = {
            "usage": {
                "prompt_tokens": 30,
                "completion_tokens": 4,
                "prompt_tokens_details": {"cached_tokens": 16},
            }
        }
        assert lease.record(RawResponse(chat)) is True
        assert lease.usage == Usage(30, 4, cached_input_tokens=16)
        assert caplog.records == []
        # A stream chunk without usage is normal: ignored without a word.
        assert lease.record({"choices": [], "usage": None}) is False
        assert caplog.records == []
        lease = _lease()
        assert lease.record(SomeStream()) is False
        assert lease.record(FinishedStream(None)) is False
    assert [r.getMessage() for r in caplog.records] == [
        f"lease (unadmitted): record() found no usage in a {__name__}.{kind}, so nothing was "
        "recorded from it; unless usage is recorded, admitd charges the whole reservation "
        "(150 tokens). Record the final response or each stream event (OpenAI chat streams "
        "need stream_options={'include_usage': True}), or use admitd_client.wrap()."
        for kind in ("SomeStream", "FinishedStream")
    ]


def test_cache_tokens_in_every_shape() -> None:
    responses = {
        "usage": {
            "input_tokens": 40,
            "output_tokens": 3,
            "input_tokens_details": {"cached_tokens": 32},
        }
    }
    lease = _lease()
    lease.record(responses)
    assert lease.usage == Usage(40, 3, cached_input_tokens=32)
    # Anthropic streamed: message_start has the parts, message_delta the output so far.
    lease = _lease()
    start = {
        "type": "message_start",
        "message": {
            "usage": {
                "input_tokens": 5,
                "cache_creation_input_tokens": 2000,
                "cache_read_input_tokens": 0,
                "output_tokens": 1,
            }
        },
    }
    lease.record(start)
    lease.record({"type": "message_delta", "usage": {"output_tokens": 12}})
    assert lease.usage == Usage(2005, 12, cached_input_tokens=0, cache_write_input_tokens=2000)
    gemini = {
        "usageMetadata": {
            "promptTokenCount": 50,
            "candidatesTokenCount": 2,
            "cachedContentTokenCount": 40,
        }
    }
    lease = _lease()
    lease.record(gemini)
    assert lease.usage == Usage(50, 2, cached_input_tokens=40)
