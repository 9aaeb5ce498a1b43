"""lease.record(): usage read from provider responses (tests/client/data), whole or streamed."""

from __future__ import annotations

from typing import Any

import pytest

from admitd_client import Lease, Usage
from support.client import as_object, load


def new_lease(input_tokens: int = 100, max_output_tokens: int = 50) -> Lease:
    return Lease(
        tenant="a",
        pool="p",
        input_tokens=input_tokens,
        max_output_tokens=max_output_tokens,
        proto=None,
        request_tenant="a",
    )


WHOLE = [
    ("openai_chat_completion.json", Usage(124, 15)),
    ("openai_response.json", Usage(36, 87)),
    ("anthropic_message.json", Usage(2095, 503)),
    # Anthropic counts cached prompt tokens beside input_tokens: 21 + 188086 written + 0 read.
    ("anthropic_message_cached.json", Usage(188_107, 393, 0, 188_086)),
    # Gemini bills thinking as output: 7 candidates + 120 thoughts.
    ("gemini_response.json", Usage(8, 127)),
]


@pytest.mark.parametrize("shape", ["dict", "object"])
@pytest.mark.parametrize(("name", "expected"), WHOLE)
def test_whole_responses(name: str, expected: Usage, shape: str) -> None:
    response = load(name)
    lease = new_lease()
    assert lease.record(response if shape == "dict" else as_object(response)) is True
    assert lease.usage == expected


STREAMS = [
    # Only the last chunk (stream_options.include_usage) has usage; the others say null.
    ("openai_chat_stream.jsonl", Usage(124, 7), [False, False, False, False, True]),
    # response.created/in_progress carry a response whose usage is null; completed has it.
    ("openai_responses_stream.jsonl", Usage(37, 11), [False] * 9 + [True]),
    # message_start: input 25 and output 1 so far; message_delta: output 15 in all.
    ("anthropic_stream.jsonl", Usage(25, 15), [True, *[False] * 5, True, False]),
]


@pytest.mark.parametrize("shape", ["dict", "object"])
@pytest.mark.parametrize(("name", "expected", "found"), STREAMS)
def test_streamed_final_usage(name: str, expected: Usage, found: list[bool], shape: str) -> None:
    events: list[Any] = load(name)
    lease = new_lease()
    seen = [lease.record(e if shape == "dict" else as_object(e)) for e in events]
    assert seen == found
    assert lease.usage == expected


def test_anthropic_stream_usage_so_far() -> None:
    lease = new_lease()
    lease.record(load("anthropic_stream.jsonl")[0])
    assert lease.usage == Usage(25, 1)


def test_nothing_recorded_means_no_usage() -> None:
    lease = new_lease()
    assert lease.record({"choices": [], "usage": None}) is False
    assert lease.usage is None  # release then sends no usage: admitd charges the reservation


def test_explicit_counts_and_overrides() -> None:
    lease = new_lease()
    assert lease.record(input_tokens=12, output_tokens=34) is True
    assert lease.usage == Usage(12, 34)
    # A count passed with a response overrides the response's own.
    lease.record(load("openai_response.json"), output_tokens=80)
    assert lease.usage == Usage(36, 80)


def test_an_unrecorded_half_is_the_reservation() -> None:
    lease = new_lease(input_tokens=100, max_output_tokens=50)
    lease.record(output_tokens=7)
    assert lease.usage == Usage(100, 7)
    lease = new_lease(input_tokens=100, max_output_tokens=50)
    lease.record(input_tokens=90)
    assert lease.usage == Usage(90, 50)


def test_bad_record_calls() -> None:
    lease = new_lease()
    with pytest.raises(TypeError, match="needs a response"):
        lease.record()
    with pytest.raises(ValueError, match="output_tokens must not be negative, got -1"):
        lease.record(output_tokens=-1)
    # Counts that are not non-negative ints are a shape not understood: ignored.
    assert lease.record({"usage": {"prompt_tokens": True, "completion_tokens": -3}}) is False
    assert lease.usage is None
