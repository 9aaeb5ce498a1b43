"""Input tokens of an image, as OpenAI and Anthropic document them.

The size is read from the image itself when the request carries its bytes (a base64
``data:`` URL or an Anthropic ``base64`` source: PNG, GIF, JPEG and WebP headers); an image
given by URL is not fetched, and is counted at the largest size the provider bills.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct

# OpenAI (vision guide): "low" detail costs a flat base; otherwise the image is fitted in a
# 2048 px square, its short side scaled to 768 px, and each 512 px tile costs the tile
# price on top of the base. gpt-4o-mini bills the same tiles at other prices.
OPENAI_TILE = (85, 170)
OPENAI_MINI_TILE = (2833, 5667)
# Anthropic (vision guide): about width * height / 750 tokens, after scaling the image so
# its long edge is at most 1568 px and it costs at most about 1600 tokens.
ANTHROPIC_MAX_EDGE = 1568
ANTHROPIC_MAX_IMAGE_TOKENS = 1600
ANTHROPIC_PIXELS_PER_TOKEN = 750
# The decoded prefix that holds the size of every format read here (JPEG's SOF marker
# may follow EXIF data, so keep a generous window).
_HEADER_BYTES = 64 * 1024


def openai_image_tokens(size: tuple[int, int] | None, detail: str, mini: bool) -> int:
    """Tokens OpenAI bills for one image (``size`` None: the largest bill for ``detail``)."""
    base, tile = OPENAI_MINI_TILE if mini else OPENAI_TILE
    if detail == "low":
        return base
    if size is None:
        size = (768, 2048)  # the most tiles any image can cover: 2 x 4
    width, height = (float(side) for side in size)
    if max(width, height) > 2048:
        width, height = _scaled(width, height, 2048 / max(width, height))
    if min(width, height) > 768:
        width, height = _scaled(width, height, 768 / min(width, height))
    tiles = math.ceil(width / 512) * math.ceil(height / 512)
    return base + tile * tiles


def anthropic_image_tokens(size: tuple[int, int] | None) -> int:
    """Tokens Anthropic bills for one image (``size`` None: the largest bill)."""
    if size is None:
        return ANTHROPIC_MAX_IMAGE_TOKENS
    width, height = (float(side) for side in size)
    if max(width, height) > ANTHROPIC_MAX_EDGE:
        width, height = _scaled(width, height, ANTHROPIC_MAX_EDGE / max(width, height))
    tokens = math.ceil(width * height / ANTHROPIC_PIXELS_PER_TOKEN)
    return min(tokens, ANTHROPIC_MAX_IMAGE_TOKENS)


def _scaled(width: float, height: float, factor: float) -> tuple[float, float]:
    return math.floor(width * factor), math.floor(height * factor)


def data_url_size(url: str) -> tuple[int, int] | None:
    """The size of an image in a ``data:image/...;base64,`` URL (None for any other URL)."""
    head, _, payload = url.partition(",")
    if not head.startswith("data:") or not head.endswith(";base64"):
        return None
    return base64_size(payload)


def base64_size(payload: str) -> tuple[int, int] | None:
    """The size of a base64-encoded image, or None when its format is not recognised."""
    prefix = payload[: _HEADER_BYTES * 4 // 3]
    prefix = prefix[: len(prefix) - len(prefix) % 4]
    try:
        return image_size(base64.b64decode(prefix, validate=False))
    except (binascii.Error, ValueError):
        return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, GIF, JPEG or WebP header; None when not recognised."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    at = 2
    while at + 9 < len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            at += 2
            continue
        length = int.from_bytes(data[at + 2 : at + 4], "big")
        # Start-of-frame markers (baseline, progressive, ...), not DHT/JPG/DAC.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return width, height
        at += 2 + length
    return None
