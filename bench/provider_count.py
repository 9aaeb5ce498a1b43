"""How the simulated provider counts and caches a request's input tokens.

Written from the providers' public documentation, apart from the client's own counting (the
tests compare the two, so neither may borrow from the other):

- OpenAI (chat and Responses): tiktoken with the model's encoding (o200k_base for gpt-4o
  and later, cl100k_base before); 3 tokens per message plus its fields' text, 1 more for a
  ``name``, 3 priming the reply (cookbook "How to count tokens with tiktoken"); functions
  by the same cookbook's formula; images by the vision guide's 512 px tiles (85 + 170 per
  tile; low detail 85). Prompt caching: a prefix of whole messages seen before, at least
  1024 tokens, is read from the cache in 128-token steps (``cached_tokens``).
- Anthropic: no public tokenizer, so this simulation *defines* Claude's count as cl100k_base
  with the same message overhead; tools as their JSON plus the documented 346-token tool
  prompt; images width x height / 750 (at most 1600). Prompt caching: the prefix up to the
  last block marked ``cache_control`` is written the first time (``cache_creation``) and
  read afterwards (``cache_read``); ``input_tokens`` is what follows it.

Only PNG images carried as base64 are sized; any other image is billed at the largest
size (OpenAI 8 tiles, Anthropic 1600).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import tiktoken

PER_MESSAGE, PER_NAME, PRIMING = 3, 1, 3
TOOL_PROMPT = 346
CACHE_MIN, CACHE_STEP = 1024, 128


@dataclass
class Segment:
    """A run of input tokens; ``key`` identifies its content for prompt caching."""

    tokens: int
    key: str
    breakpoint: bool = False


@dataclass
class Counted:
    """A request's input: all of it, and the part read from or written to the cache."""

    total: int
    cache_read: int = 0
    cache_write: int = 0


@dataclass
class PromptCache:
    """Prefixes seen, by content hash (one cache per provider process, cleared on reset)."""

    seen: set[str] = field(default_factory=set)

    def openai(self, segments: list[Segment]) -> Counted:
        total = sum(s.tokens for s in segments) + PRIMING
        digest, running, cached = hashlib.sha256(), 0, 0
        prefixes = []
        for segment in segments:
            digest.update(segment.key.encode())
            running += segment.tokens
            prefixes.append((digest.hexdigest(), running))
        for key, tokens in prefixes:
            if key in self.seen and tokens >= CACHE_MIN:
                cached = tokens // CACHE_STEP * CACHE_STEP
        self.seen.update(key for key, _ in prefixes)
        return Counted(total, cache_read=cached)

    def anthropic(self, segments: list[Segment]) -> Counted:
        total = sum(s.tokens for s in segments) + PRIMING
        marks = [i for i, s in enumerate(segments) if s.breakpoint]
        if not marks:
            return Counted(total)
        prefix = segments[: marks[-1] + 1]
        key = "anthropic:" + hashlib.sha256("".join(s.key for s in prefix).encode()).hexdigest()
        tokens = sum(s.tokens for s in prefix)
        if key in self.seen:
            return Counted(total, cache_read=tokens)
        self.seen.add(key)
        return Counted(total, cache_write=tokens)


def encoding_for(model: str) -> tiktoken.Encoding:
    if model.startswith("claude"):
        return tiktoken.get_encoding("cl100k_base")
    try:
        return tiktoken.encoding_for_model(model)
    except KeyError:
        return tiktoken.get_encoding("o200k_base")


def _text(enc: tiktoken.Encoding, text: str) -> int:
    return len(enc.encode(text, disallowed_special=()))


def _png_size(data: str) -> tuple[int, int] | None:
    raw = base64.b64decode(data[:64])
    if raw[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    width, height = struct.unpack(">II", raw[16:24])
    return width, height


def _openai_image(url: str, detail: str) -> int:
    if detail == "low":
        return 85
    size = _png_size(url.partition(",")[2]) if url.startswith("data:image/png;base64,") else None
    width, height = size or (768, 2048)
    if max(width, height) > 2048:
        scale = 2048 / max(width, height)
        width, height = math.floor(width * scale), math.floor(height * scale)
    if min(width, height) > 768:
        scale = 768 / min(width, height)
        width, height = math.floor(width * scale), math.floor(height * scale)
    return 85 + 170 * math.ceil(width / 512) * math.ceil(height / 512)


def _openai_value(enc: tiktoken.Encoding, key: str, value: Any) -> int:
    if isinstance(value, str):
        return _text(enc, value)
    if key == "content" and isinstance(value, list):
        total = 0
        for part in value:
            if part.get("type") == "image_url":
                image = part["image_url"]
                total += _openai_image(image.get("url", ""), image.get("detail", "auto"))
            elif part.get("type") == "input_image":
                total += _openai_image(part.get("image_url", ""), part.get("detail", "auto"))
            elif isinstance(part.get("text"), str):
                total += _text(enc, part["text"])
        return total
    return 0 if value is None else _text(enc, json.dumps(value, separators=(",", ":")))


def openai_segments(model: str, messages: list[dict[str, Any]]) -> list[Segment]:
    """One segment per message (Responses input items and instructions as messages)."""
    enc = encoding_for(model)
    segments = []
    for message in messages:
        tokens = PER_MESSAGE
        for key, value in message.items():
            tokens += _openai_value(enc, key, value) + (PER_NAME if key == "name" else 0)
        segments.append(Segment(tokens, json.dumps(message, sort_keys=True)))
    return segments


def openai_tools(model: str, tools: list[dict[str, Any]]) -> int:
    """The cookbook's function formula (7 per function on o200k_base models, 10 before)."""
    if not tools:
        return 0
    enc = encoding_for(model)
    total = 12
    for tool in tools:
        function = tool.get("function", tool)
        if "name" not in function:
            total += _text(enc, json.dumps(tool, separators=(",", ":")))
            continue
        total += 7 if enc.name == "o200k_base" else 10
        description = (function.get("description") or "").removesuffix(".")
        total += _text(enc, f"{function['name']}:{description}")
        properties = (function.get("parameters") or {}).get("properties") or {}
        total += 3 if properties else 0
        for key, schema in properties.items():
            total += 3
            if "enum" in schema:
                total += -3 + sum(3 + _text(enc, str(item)) for item in schema["enum"])
            description = (schema.get("description") or "").removesuffix(".")
            total += _text(enc, f"{key}:{schema.get('type', '')}:{description}")
            rest = {k: v for k, v in schema.items() if k not in ("type", "description", "enum")}
            total += _text(enc, json.dumps(rest, separators=(",", ":"))) if rest else 0
    return total


def _anthropic_block(enc: tiktoken.Encoding, block: dict[str, Any]) -> int:
    kind = block.get("type")
    if kind == "text":
        return _text(enc, block["text"])
    if kind == "image":
        source = block.get("source", {})
        size = _png_size(source["data"]) if source.get("type") == "base64" else None
        return 1600 if size is None else min(1600, math.ceil(size[0] * size[1] / 750))
    if kind == "tool_use":
        return _text(enc, block["name"]) + _text(enc, json.dumps(block.get("input", {})))
    if kind == "tool_result":
        content = block.get("content", "")
        if isinstance(content, str):
            return _text(enc, content)
        return sum(_anthropic_block(enc, inner) for inner in content)
    return _text(enc, json.dumps(block))


def anthropic_segments(request: dict[str, Any]) -> list[Segment]:
    """Tools, system and each message in that order (the order of Anthropic's cache)."""
    enc = tiktoken.get_encoding("cl100k_base")
    segments = []
    tools = request.get("tools") or []
    for tool in tools:
        definition = {k: v for k, v in tool.items() if k != "cache_control"}
        tokens = _text(enc, json.dumps(definition, separators=(",", ":")))
        segments.append(Segment(tokens, json.dumps(tool), "cache_control" in tool))
    if tools:
        segments.append(Segment(TOOL_PROMPT, "tool-prompt"))
    system = request.get("system")
    if isinstance(system, str):
        system = [{"type": "text", "text": system}]
    if system:
        segments.append(Segment(PER_MESSAGE, "system"))
        for block in system:
            segments.append(
                Segment(_text(enc, block["text"]), json.dumps(block), "cache_control" in block)
            )
    for message in request.get("messages") or []:
        segments.append(Segment(PER_MESSAGE + _text(enc, message["role"]), message["role"]))
        content = message["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        for block in content:
            tokens = _anthropic_block(enc, block)
            segments.append(Segment(tokens, json.dumps(block), "cache_control" in block))
    return segments
