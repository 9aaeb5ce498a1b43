"""The Lua scripts, as Redis runs them: each operation's file under ``lua/``, with the
library (``lua/_lib<n>_*.lua``, in order) in front of it, and in front of everything the
prologue written from Python (:func:`lua_prologue`).

The prologue declares what the scripts share with Python, from the Python that owns it
(``_model`` and the schema in ``codec.py``): constants, the positions of a limit's fields,
the values of kinds, units, scopes, outcomes and states, the ticket's keys (``T``), the
Redis key names Python reads, and the gate's stand-in limit (``gate_limit``).
"""

from __future__ import annotations

import enum
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
)


def load_scripts() -> dict[str, str]:
    """Each operation's script: the prologue, the library's parts, the operation's file."""
    folder = resources.files(__package__) / "lua"
    parts = sorted(f.name for f in folder.iterdir() if f.name.startswith("_lib"))
    lib = "\n".join([lua_prologue(), *((folder / name).read_text() for name in parts)])
    return {op: lib + "\n" + (folder / f"{op}.lua").read_text() for op in OPERATIONS}


def lua_prologue() -> str:
    """Lua declaring what the scripts share with Python, written from the Python that owns
    it; the loader puts it in front of the library and each operation's script."""
    lines = ["-- Written by admitd._backends.redis.scripts.lua_prologue(); change the Python."]

    def const(name: str, value: object) -> None:
        lines.append(f"local {name} = {_lua(value)}")

    for name in codec.SHARED_CONSTANTS:
        const(name, getattr(_model, name))
    for i, field in enumerate(codec.LIMIT_FIELDS, 1):
        const(f"L_{field.upper()}", i)
    for i, field in enumerate(codec.CONFIGURED_FIELDS, 1):
        const(f"C_{field.upper()}", i)
    for i, field in enumerate(codec.USAGE_FIELDS, 1):
        const(f"U_{field.upper()}", i)
    for kind in (Kind, Unit, Scope, Outcome, Unreported):
        for member in kind:
            const(f"{kind.__name__.upper()}_{member.name}", member.value)
    for prefix, literal in (("CIRCUIT", Circuit), ("CAUSE", Cause), ("END", EndKind)):
        for value in get_args(literal):
            const(f"{prefix}_{value.upper()}", value)
    for value in get_args(FullScope):
        const(f"FULL_{value.upper()}", value)
    for name in ("GRANTS", "GRANTED", "DEDUP_END"):
        const(name, getattr(codec, name))
    lines.append("local T = {")
    lines += [f"  {field} = {_lua(key)}," for field, key in codec.TICKET_KEYS.items()]
    lines.append("}")
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
