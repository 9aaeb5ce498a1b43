"""The Lua scripts, as Redis runs them: each operation's file under ``lua/``, with the
library (``lua/_lib<n>_*.lua``, in order) in front of it, and in front of everything the
prologue written from Python (:func:`lua_prologue`).

What the scripts share with Python is written from the Python that owns it (``_model`` and
the schema in ``codec.py``). The prologue declares the constants, the values of kinds,
units, scopes, outcomes and states, the Redis key names Python reads, and the gate's
stand-in limit (``gate_limit``). A field the scripts read by name in Lua source,
``t[T.max_queued_tenant]`` or ``l[L_KIND]``, the loader writes in place as the ticket's JSON
key or the limit field's position (:func:`inline_fields`), so reading a field costs the
scripts nothing more than a literal would, and a misspelt field fails at load time. The
prologue's constants are written in place the same way where the scripts use them
(:func:`inline_constants`).
"""

from __future__ import annotations

import enum
import re
from importlib import resources
from typing import Any, get_args

from ... import _model
from ..._model import Cause, Circuit, EndKind, FullScope, Kind, Outcome, Scope, Unit, gate_limit
from ..._usage import Unreported
from . import codec

OPERATIONS = (
    "acquire",
    "cancel",
    "claim",
    "release",
    "charge",
    "renew",
    "expire",
    "dispatch",
    "snapshot",
    "configure",
    "look",
    "usage",
    "dedup_end",
    "beat",
    "failover",
)


def load_scripts() -> dict[str, str]:
    """Each operation's script: the prologue, the library's parts, the operation's file,
    with their fields and the prologue's constants written in place."""
    folder = resources.files(__package__) / "lua"
    parts = sorted(f.name for f in folder.iterdir() if f.name.startswith("_lib"))
    prologue = lua_prologue()
    lib = "\n".join((folder / name).read_text() for name in parts)
    return {
        op: prologue
        + inline_constants(inline_fields(lib + "\n" + (folder / f"{op}.lua").read_text()), prologue)
        for op in OPERATIONS
    }


_CONSTANT = re.compile(r"^local ([A-Z][A-Z0-9_]*) = (.+)$", re.M)
# A comment, a string, or a name (not a field: ``x.NAME``), in Lua source.
_TOKEN = re.compile(
    r"--[^\n]*|'(?:[^'\\\n]|\\.)*'|\"(?:[^\"\\\n]|\\.)*\"|(?<![.:\w])[A-Z][A-Z0-9_]*\b"
)


def inline_constants(source: str, prologue: str) -> str:
    """``source`` with each use of a constant the prologue declares written as its value.

    Why: Redis runs the whole library on every script call, and each of its functions is
    a new closure then; Lua finds a closure's upvalues by walking the chain of the chunk's
    captured locals, so every constant a function read as a local made each call dearer
    (about a fifth of the library's cost per call, measured with callgrind). A literal
    costs nothing to capture. Comments and strings are left as written."""
    values = {name: value for name, value in _CONSTANT.findall(prologue)}

    def written(match: re.Match[str]) -> str:
        token = match[0]
        value = values.get(token)
        if value is None:
            return token
        return f"({value})" if value.startswith("-") else value

    return _TOKEN.sub(written, source)


_FIELD = re.compile(r"\[(?:T\.([a-z_]+)|L_([A-Z_]+)|C_([A-Z_]+)|U_([A-Z_]+))\]")


def inline_fields(source: str) -> str:
    """``source`` with each ``[T.<ticket field>]`` written as that field's JSON key
    (``codec.TICKET_KEYS``), and each ``[L_<FIELD>]``, ``[C_<FIELD>]`` or ``[U_<FIELD>]`` as
    the position of that field in a limit (``codec.LIMIT_FIELDS``), a configured limit
    (``codec.CONFIGURED_FIELDS``) or reported usage (``codec.USAGE_FIELDS``).

    Raises:
        ValueError: a field Python does not know.
    """

    def written(match: re.Match[str]) -> str:
        ticket, limit, configured, usage = match.groups()
        try:
            if ticket is not None:
                return f"[{_lua(codec.TICKET_KEYS[ticket])}]"
            if limit is not None:
                return f"[{codec.LIMIT_FIELDS.index(limit.lower()) + 1}]"
            if configured is not None:
                return f"[{codec.CONFIGURED_FIELDS.index(configured.lower()) + 1}]"
            return f"[{codec.USAGE_FIELDS.index(usage.lower()) + 1}]"
        except (KeyError, ValueError):
            raise ValueError(f"the scripts read a field Python does not know: {match[0]}") from None

    return _FIELD.sub(written, source)


def lua_prologue() -> str:
    """Lua declaring the values the scripts share with Python, written from the Python that
    owns them; the loader puts it in front of the library and each operation's script."""
    lines = ["-- Written by admitd._backends.redis.scripts.lua_prologue(); change the Python."]

    def const(name: str, value: object) -> None:
        lines.append(f"local {name} = {_lua(value)}")

    for name in codec.SHARED_CONSTANTS:
        const(name, getattr(_model, name))
    for kind in (Kind, Unit, Scope, Outcome, Unreported):
        for member in kind:
            const(f"{kind.__name__.upper()}_{member.name}", member.value)
    for prefix, literal in (("CIRCUIT", Circuit), ("CAUSE", Cause), ("END", EndKind)):
        for value in get_args(literal):
            const(f"{prefix}_{value.upper()}", value)
    for value in get_args(FullScope):
        const(f"FULL_{value.upper()}", value)
    for name in ("GRANTS", "GRANTED", "DEDUP_END", "REPLICAS", "PRIMARY", "LEARN", "LOST"):
        const(name, getattr(codec, name))
    lines.append("local function gate_limit(pool)")
    lines.append(f"  return {{{_lua_fields(codec.limit_json(gate_limit(_POOL)), _POOL, 'pool')}}}")
    lines.append("end")
    return "\n".join(lines) + "\n"


_POOL = "\x00pool\x00"  # stands for the argument when a function is written from a sample


def _lua(value: object) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str) and value.isprintable() and not set(value) & set("'\\"):
        return f"'{value}'"
    raise ValueError(f"no Lua literal for {value!r}")


def _lua_fields(values: tuple[Any, ...], placeholder: str, argument: str) -> str:
    """``values`` as Lua expressions; ``placeholder`` within a string becomes ``argument``."""
    out = []
    for value in values:
        if isinstance(value, str) and placeholder in value:
            exprs: list[str] = []
            for i, piece in enumerate(value.split(placeholder)):
                exprs += [argument] if i else []
                exprs += [_lua(piece)] if piece else []
            out.append(" .. ".join(exprs))
        else:
            out.append(_lua(value))
    return ", ".join(out)
