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
import hashlib
import re
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any, NamedTuple, get_args

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


FUNCTIONS = ("acquire", "release")
"""The operations the backend calls as functions of a library Redis keeps (``FCALL``), not as
scripts: the two every admission makes. A script runs the whole library before its own code
on every call (each of the library's functions a new closure), about 150k instructions of
redis-server per call, as much as a fifth of an Acquire; a function library runs it once,
when loaded."""
IDLE_FUNCTION = "idle"
"""The library's read-only function that says how long ago its operations last ran
(``libraries.py``), registered beside those of :data:`FUNCTIONS`."""


def load_scripts() -> dict[str, str]:
    """Each operation's script: the prologue, the library's parts, ``begin(KEYS, ARGV)``,
    the operation's file, with their fields and the prologue's constants written in place
    (all but the prologue in a function of its own: :func:`_own_function`)."""
    prologue, lib, ops = _sources()
    return {
        op: prologue
        + _own_function(_written(lib + "\nbegin(KEYS, ARGV)\n" + ops[op], prologue), "return ")
        for op in ops
    }


class Library(NamedTuple):
    """A Redis function library of admitd's (:func:`function_library`)."""

    code: str
    """Its source, for ``FUNCTION LOAD``."""
    name: str
    """``admitd_`` and a digest of its code."""
    functions: dict[str, str]
    """The name of each operation's function, by operation."""


def function_library() -> Library:
    """The library and the operations of :data:`FUNCTIONS` as a Redis function library,
    with :data:`IDLE_FUNCTION`. The library's name is a digest of its code, so that
    libraries of two versions loaded in one Redis each call their own code (sharing a key
    prefix, though, takes the same version: the keys' layout changes; README, Data
    model)."""
    prologue, lib, ops = _sources()
    registered = "".join(
        f"\nredis.register_function('{_NAME}_{op}', function(KEYS, ARGV)\n"
        f"begin(KEYS, ARGV)\n{ops[op]}\nend)\n"
        for op in FUNCTIONS
    )
    # Read-only, so FCALL_RO may call it (libraries.py asks it of other versions' libraries).
    registered += (
        f"\nredis.register_function{{function_name = '{_NAME}_{IDLE_FUNCTION}',"
        " flags = {'no-writes'}, callback = function(KEYS, ARGV)\n"
        f"{_folder().joinpath(f'{IDLE_FUNCTION}.lua').read_text()}\nend}}\n"
    )
    code = prologue + _own_function(_written(lib + registered, prologue), "")
    name = f"admitd_{hashlib.sha1(code.encode()).hexdigest()[:16]}"
    code = f"#!lua name={name}\n" + code.replace(_NAME, name)
    return Library(code, name, {op: f"{name}_{op}" for op in FUNCTIONS})


_NAME = "ADMITD_LIBRARY"  # stands for the library's name until its digest is known


def _own_function(code: str, result: str) -> str:
    """``code`` as the body of a function called at once (``result``: ``"return "`` to give
    back what it returns). Lua allows a function at most 200 local variables, and the
    prologue's constants (written in place, so never read as locals) took a quarter of
    them: in a function of its own, the library's are counted apart from those."""
    return f"local function body()\n{code}\nend\n{result}body()\n"


def _sources() -> tuple[str, str, dict[str, str]]:
    """The prologue, the library's parts (in the order of their names), each operation's file."""
    folder = _folder()
    parts = sorted(f.name for f in folder.iterdir() if f.name.startswith("_lib"))
    lib = "\n".join((folder / name).read_text() for name in parts)
    return lua_prologue(), lib, {op: (folder / f"{op}.lua").read_text() for op in OPERATIONS}


def _folder() -> Traversable:
    return resources.files(__package__) / "lua"


def _written(source: str, prologue: str) -> str:
    return inline_constants(inline_fields(source), prologue)


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
    keys = ("LEASE", "GRANTS", "GRANTED", "UNCLAIMED", "DEDUP_END", "REPLICAS", "PRIMARY")
    for name in (*keys, "LEARN", "LOST"):
        const(name, getattr(codec, name))
    const("TICKET_SHARED", codec.TICKET_SHARED)
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
