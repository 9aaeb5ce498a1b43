"""Client-side token counting with tiktoken, against counts known from elsewhere."""

from __future__ import annotations

import logging

import pytest
import tiktoken

from admitd_client import DEFAULT_ENCODING, count_tokens
from admitd_client._tokens import encoding_name
from support.client import COOKBOOK_MESSAGES, COOKBOOK_TOKENS


@pytest.mark.parametrize("encoding", ["cl100k_base", "o200k_base"])
def test_plain_text(encoding: str) -> None:
    assert count_tokens(prompt="hello world", encoding=encoding) == 2
    # The cookbook's example: [83, 1609, 5963, 374, 2294, 0] in cl100k_base.
    assert count_tokens(prompt="tiktoken is great!", encoding=encoding) == 6
    assert count_tokens(prompt="", encoding=encoding) == 0


def test_cookbook_token_ids() -> None:
    enc = tiktoken.get_encoding("cl100k_base")
    assert enc.encode("tiktoken is great!") == [83, 1609, 5963, 374, 2294, 0]


@pytest.mark.parametrize(("encoding", "expected"), sorted(COOKBOOK_TOKENS.items()))
def test_chat_messages_as_the_api_counts_them(encoding: str, expected: int) -> None:
    # 129 (gpt-4, cl100k_base) and 124 (gpt-4o, o200k_base) are what the OpenAI API itself
    # reported as prompt_tokens for these messages, per the cookbook.
    assert count_tokens(messages=COOKBOOK_MESSAGES, encoding=encoding) == expected


def test_message_overhead() -> None:
    # 3 per message + role "user" (1) + "hello world" (2) + 3 priming the reply.
    assert count_tokens(messages=[{"role": "user", "content": "hello world"}]) == 9
    # A name costs its tokens plus one.
    named = [{"role": "user", "name": "bob", "content": "hello world"}]
    assert count_tokens(messages=named) == 9 + 1 + 1
    # Text parts are counted; an image by URL at the largest bill of OpenAI's tile
    # formula (85 + 170 x 8 tiles of 512 px, for a 768 x 2048 image).
    parts = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hello world"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            ],
        }
    ]
    assert count_tokens(messages=parts) == 9 + 1445
    # Prompt and messages together add up.
    assert count_tokens(prompt="hello world", messages=[{"role": "user", "content": ""}]) == 2 + 7


def test_special_token_text_is_plain_text() -> None:
    # Users' text may contain "<|endoftext|>"; it is billed as text, never refused.
    ordinary = tiktoken.get_encoding("cl100k_base").encode_ordinary("<|endoftext|>")
    assert len(ordinary) > 1  # as a special token it would be 1
    assert count_tokens(prompt="<|endoftext|>", encoding="cl100k_base") == len(ordinary)


def test_encoding_for_a_pool() -> None:
    assert DEFAULT_ENCODING == "o200k_base"
    assert encoding_name("openai/gpt-4o") == "o200k_base"
    assert encoding_name("openai/gpt-4") == "cl100k_base"
    assert encoding_name("default") == "o200k_base"  # not a model: the default
    # Claude has no public tokenizer: cl100k_base, scaled up where a count is reserved.
    assert encoding_name("anthropic/claude-sonnet-4") == "cl100k_base"
    assert encoding_name("x", pool_encodings={"x": "cl100k_base"}) == "cl100k_base"
    assert encoding_name("openai/gpt-4o", model="gpt-4") == "cl100k_base"
    assert encoding_name("openai/gpt-4", encoding="o200k_base", model="gpt-4") == "o200k_base"


def test_an_unknown_model_is_counted_with_the_default_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="admitd_client"):
        assert encoding_name("p", model="no-such-model-1") == "o200k_base"
        assert encoding_name("p", model="no-such-model-1") == "o200k_base"
        assert encoding_name("p", model="no-such-model-1", default="cl100k_base") == "cl100k_base"
    assert [r.getMessage() for r in caplog.records] == [
        "no tokenizer known for model 'no-such-model-1': counting with o200k_base"
    ]
