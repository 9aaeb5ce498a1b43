"""The settings' own field types: durations, listen addresses, tiktoken encodings, readable
files and API key hashes, each with the message a wrong value gets."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any

import tiktoken
from pydantic import AfterValidator, BeforeValidator, Field

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$", re.ASCII)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_DURATION_HINT = "expected a duration like 120s, 1.5m, 250ms or 2h"


def _parse_duration(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    raise ValueError(f"{_DURATION_HINT}, got {show(value)}")


def _known_encoding(name: str) -> str:
    known = tiktoken.list_encoding_names()
    if name not in known:
        raise ValueError(f"unknown tiktoken encoding {name!r} (known: {', '.join(sorted(known))})")
    return name


def validate_listen(listen: str) -> str:
    """Return ``listen`` if it is ``host:port`` (port 0-65535), else raise ``ValueError``."""
    host, sep, port = listen.rpartition(":")
    if not (sep and host and port.isascii() and port.isdigit() and int(port) <= 65535):
        raise ValueError(f"expected host:port, got {listen!r}")
    return listen


Seconds = Annotated[float, BeforeValidator(_parse_duration)]
"""A duration in seconds, written in the file as ``120s``, ``2m``, ``250ms`` or a number."""

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


def _readable(path: str) -> str:
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        raise ValueError(f"cannot read {path!r}: {error.strerror or error}") from None
    return path


ReadableFile = Annotated[str, AfterValidator(_readable)]
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def _sha256_hex(value: str) -> str:
    if not _SHA256_HEX.match(value):
        # The value is not echoed: it may be the secret key itself, pasted by mistake.
        raise ValueError(
            "expected the SHA-256 of the API key, 64 lowercase hex digits"
            " (admitd hash-key computes it)"
        )
    return value


KeyHash = Annotated[str, AfterValidator(_sha256_hex)]
"""The SHA-256 of an API key, 64 lowercase hex digits."""
KnownEncoding = Annotated[str, AfterValidator(_known_encoding)]
"""The name of a tiktoken encoding."""


def show(value: Any) -> str:
    """A value as the YAML author wrote it, so a quoted number or a ``yes`` is recognisable."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        return repr(value)
    return str(value)
