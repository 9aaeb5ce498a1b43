"""Server-side token counting with real tiktoken encodings, one per pool.

When ``input_tokens`` is 0 and ``prompt`` is set, the server counts the prompt with the pool's
encoding; the lease reports the count and reserves it on top of ``max_output_tokens``.
"""

from __future__ import annotations

from typing import Any

import pytest
import tiktoken

from support.harness import MakeHarness

CL100K = "cl100k_base"
O200K = "o200k_base"

POOLS: dict[str, Any] = {
    "pools": [
        {"name": "cl", "encoding": CL100K, "tokens_per_minute": 100_000},
        {"name": "o2", "encoding": O200K, "tokens_per_minute": 100_000},
        {"name": "default-encoding"},  # the config default is o200k_base
    ]
}
ENCODING_OF = {"cl": CL100K, "o2": O200K, "default-encoding": O200K}

# Known facts of the encodings, counted once with tiktoken 0.14 and pinned here so that a
# server that counted with the wrong encoding, or with a tokenizer of its own, cannot agree
# with itself by accident. (text, cl100k_base tokens, o200k_base tokens)
KNOWN_COUNTS: list[tuple[str, int, int]] = [
    ("hello world", 2, 2),
    ("Hello, world!", 4, 4),
    ("The quick brown fox jumps over the lazy dog.", 10, 10),
    # The encodings differ most on non-Latin scripts: o200k_base has far more such tokens.
    ("안녕하세요 세계", 9, 3),
    ("こんにちは世界", 4, 2),
    ("Привет, мир!", 7, 5),
    ("héllo wörld 🚀", 9, 7),
    # Special-token text counted as plain text: 7 ordinary tokens, not the 1 special token.
    ("<|endoftext|>", 7, 7),
    ("hello <|endoftext|> world", 8, 9),
]

SAMPLES = [text for text, _, _ in KNOWN_COUNTS] + [
    "def f(x):\n    return x * 2\n\n\tprint(f(21))  # tab and newlines\n",
    "<|im_start|>user\nhi<|im_end|><|endofprompt|><|fim_prefix|>",
    "mixed: café ÷ 数学 🚀🚀 مرحبا بالعالم",
    "x" * 5000,
]


def tiktoken_count(encoding: str, text: str) -> int:
    return len(tiktoken.get_encoding(encoding).encode(text, disallowed_special=()))


def test_the_pinned_counts_are_what_tiktoken_says() -> None:
    for text, cl100k, o200k in KNOWN_COUNTS:
        assert (tiktoken_count(CL100K, text), tiktoken_count(O200K, text)) == (cl100k, o200k)


@pytest.mark.parametrize(("text", "cl100k", "o200k"), KNOWN_COUNTS)
async def test_prompt_is_counted_with_the_pools_encoding(
    make_harness: MakeHarness, text: str, cl100k: int, o200k: int
) -> None:
    h = await make_harness(POOLS)
    expected = {"cl": cl100k, "o2": o200k, "default-encoding": o200k}
    for pool, count in expected.items():
        lease = await h.acquire(pool=pool, prompt=text, max_output_tokens=50)
        assert lease.input_tokens == count, (pool, text)
        assert lease.reserved_tokens == count + 50, (pool, text)


@pytest.mark.parametrize("text", SAMPLES)
async def test_prompt_count_matches_tiktoken(make_harness: MakeHarness, text: str) -> None:
    h = await make_harness(POOLS)
    for pool, encoding in ENCODING_OF.items():
        lease = await h.acquire(pool=pool, prompt=text)
        assert lease.input_tokens == tiktoken_count(encoding, text), (pool, text)
        assert lease.reserved_tokens == lease.input_tokens


async def test_pools_with_different_encodings_count_the_same_text_differently(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness(POOLS)
    text = "안녕하세요 세계"
    cl = await h.acquire(pool="cl", prompt=text)
    o2 = await h.acquire(pool="o2", prompt=text)
    assert (cl.input_tokens, o2.input_tokens) == (9, 3)


async def test_special_token_text_is_plain_text(make_harness: MakeHarness) -> None:
    h = await make_harness(POOLS)
    text = "before <|endoftext|> after <|endofprompt|>"
    for pool, encoding in ENCODING_OF.items():
        lease = await h.acquire(pool=pool, prompt=text)
        assert lease.input_tokens == tiktoken_count(encoding, text)
        # Allowing the special tokens would have counted each as one token.
        special = tiktoken.get_encoding(encoding).encode(text, allowed_special="all")
        assert lease.input_tokens > len(special)


async def test_counted_tokens_are_reserved_from_the_bucket(make_harness: MakeHarness) -> None:
    h = await make_harness(POOLS)
    text = "The quick brown fox jumps over the lazy dog."
    lease = await h.acquire(pool="cl", prompt=text, max_output_tokens=90)
    assert lease.reserved_tokens == 100
    assert (await h.pool("cl")).tokens_per_minute.value == 100_000 - 100
    assert (await h.pool("o2")).tokens_per_minute.value == 100_000


@pytest.mark.parametrize("pool", ["cl", "o2"])
async def test_explicit_input_tokens_win_over_prompt(make_harness: MakeHarness, pool: str) -> None:
    h = await make_harness(POOLS)
    text = "hello world " * 100
    lease = await h.acquire(pool=pool, input_tokens=5, prompt=text, max_output_tokens=7)
    assert (lease.input_tokens, lease.reserved_tokens) == (5, 12)
    assert (await h.pool(pool)).tokens_per_minute.value == 100_000 - 12
