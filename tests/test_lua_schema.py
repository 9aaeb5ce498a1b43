"""What the Redis scripts share with Python is written once, in Python.

The loader puts a prologue in front of every script (``scripts.lua_prologue``): constants,
the values of kinds, units, scopes, outcomes and states, the Redis key names Python reads,
the gate's stand-in limit; and it writes each field the scripts read by name
(``t[T.<field>]``, ``l[L_<FIELD>]``) as the ticket's JSON key or the field's position.
These tests check that Lua sees exactly Python's values, and that no script types one of
them again.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import redis

from admitd import _model
from admitd._backends.redis import codec
from admitd._backends.redis.scripts import (
    FUNCTIONS,
    IDLE_FUNCTION,
    OPERATIONS,
    function_library,
    inline_constants,
    inline_fields,
    load_scripts,
    lua_prologue,
)
from support.redis_server import RedisServer

LUA = Path(codec.__file__).parent / "lua"

# Declared by the prologue: ``local NAME = value`` and ``local function NAME``.
DECLARED = re.compile(r"^local (?:function )?([A-Za-z_][A-Za-z_0-9]*)", re.M)
STRING = re.compile(r"'([^'\\]*)'|\"([^\"\\]*)\"")
INDEX = re.compile(r"\[\d+\]")  # an argument's or a reply's position: ARGV[3], v[1]
NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?(?:e-?\d+)?)(?![\w.])")
KEY_NAME = re.compile(r"\bkey(?:_of)?\('([^']*)'")
# Lua-only numbers: 0, 1 and 2, and the unit conversions of Redis (PX milliseconds, TIME
# microseconds). Any other number is a named local (its own, or the prologue's).
PLAIN_NUMBERS = {"0", "1", "2", "1000", "1000000"}
# The Redis key names Python reads; every other key name is the scripts' own.
PYTHON_KEYS = {codec.LEASE, codec.GRANTS, codec.GRANTED, codec.UNCLAIMED, codec.DEDUP_END}


def _code(path: Path) -> list[tuple[int, str]]:
    """The lines of a script without their comments (no script has ``--`` in a string)."""
    return [(n, line.split("--")[0]) for n, line in enumerate(path.read_text().splitlines(), 1)]


def _prologue_values() -> set[str]:
    """The string values the prologue declares for kinds, units, scopes, states and the
    dedup end prefix (not key names: a script may name its own key ``gate``)."""
    values = set()
    for line in lua_prologue().splitlines():
        match = re.match(r"^local [A-Z_]+ = '([^']*)'$", line)
        if match:
            values.add(match.group(1))
    return values - PYTHON_KEYS


SCRIPTS = sorted(LUA.glob("*.lua"))


def test_the_prologue_is_valid_lua_every_script_has_it_and_names_are_not_declared_twice() -> None:
    prologue = lua_prologue()
    shared = set(DECLARED.findall(prologue))
    assert {"RATE_WINDOW", "MAX_EXAMINED", "KIND_DAILY", "gate_limit"} <= shared
    for op, script in load_scripts().items():
        assert script.startswith(prologue), op
        unwritten = re.search(r"\[(T\.[a-z_]+|L_[A-Z_]+|C_[A-Z_]+|U_[A-Z_]+)\]", script)
        assert unwritten is None, f"{op}: {unwritten and unwritten[0]} not written in place"
    assert set(load_scripts()) == set(OPERATIONS)
    for path in SCRIPTS:
        again = shared & set(DECLARED.findall(path.read_text()))
        assert not again, f"{path.name} declares again what the prologue declares: {again}"


def test_the_loader_writes_the_prologues_constants_in_place_outside_comments_and_strings() -> None:
    prologue = "local MAX_EXAMINED = 1024\nlocal LOW = -1\n"
    source = "x = MAX_EXAMINED - LOW -- MAX_EXAMINED\ny = 'MAX_EXAMINED' .. t.MAX_EXAMINED"
    assert inline_constants(source, prologue) == (
        "x = 1024 - (-1) -- MAX_EXAMINED\ny = 'MAX_EXAMINED' .. t.MAX_EXAMINED"
    )
    prologue = lua_prologue()
    constants = set(re.findall(r"^local ([A-Z][A-Z0-9_]*) = ", prologue, re.M))
    for op, script in load_scripts().items():
        code = "\n".join(line.split("--")[0] for line in script[len(prologue) :].splitlines())
        used = constants & set(re.findall(r"\b[A-Z][A-Z0-9_]*\b", STRING.sub("", code)))
        assert not used, f"{op} reads {used} as locals, not written in place"


def test_the_loader_refuses_a_field_python_does_not_know() -> None:
    written = inline_fields("t[T.max_queued_tenant] l[L_KIND] c[C_RATE] u[U_OUTPUT_TOKENS]")
    assert written == "t['mqt'] l[2] c[2] u[2]"
    for unknown in ("t[T.max_queued]", "l[L_KINDS]", "c[C_KEY]", "u[U_TOKENS]"):
        with pytest.raises(ValueError, match="does not know"):
            inline_fields(unknown)


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_a_script_names_what_python_owns_instead_of_copying_it(path: Path) -> None:
    owned = _prologue_values()
    ticket_keys = "|".join(re.escape(key) for key in codec.TICKET_KEYS.values())
    ticket_field = re.compile(rf"\b(?:t|lease\.t)(?:\.({ticket_keys})\b|\['({ticket_keys})'\])")
    positional = re.compile(r"\b[lcsd]\[\d")
    own_constant = re.compile(r"^local [A-Z][A-Z_0-9]* = ")
    problems = []
    for n, code in _code(path):
        where = f"{path.name}:{n}: {code.strip()}"
        if ticket_field.search(code):
            problems.append(f"{where}  (a ticket field: t[T.<field>])")
        if positional.search(code):
            problems.append(f"{where}  (a limit field by position: l[L_<FIELD>])")
        for name in KEY_NAME.findall(code):
            if name in PYTHON_KEYS:
                problems.append(f"{where}  (the key name {name!r} is the prologue's)")
        for single, double in STRING.findall(KEY_NAME.sub("key(", code)):
            if (single or double) in owned:
                problems.append(f"{where}  ({single or double!r} is the prologue's)")
        if not own_constant.match(code):
            numbers = set(NUMBER.findall(INDEX.sub("", STRING.sub("", code)))) - PLAIN_NUMBERS
            if numbers:
                problems.append(f"{where}  (name the number: {', '.join(sorted(numbers))})")
    assert not problems, "\n".join(problems)


def test_acquire_and_release_load_as_functions_of_a_library_named_after_its_code(
    shared_redis: RedisServer,
) -> None:
    code, library, names = function_library()
    assert code.split("\n", 1)[0] == f"#!lua name={library}"
    assert re.fullmatch(r"admitd_[0-9a-f]{16}", library)
    assert names == {op: f"{library}_{op}" for op in FUNCTIONS}
    assert function_library() == (code, library, names)  # the same code, the same name
    client = redis.Redis.from_url(shared_redis.url, decode_responses=True)
    try:
        assert client.function_load(code, replace=True) == library
        (listed,) = client.function_list(library)
        functions = dict(zip(listed[::2], listed[1::2], strict=True))["functions"]
        registered = {dict(zip(f[::2], f[1::2], strict=True))["name"] for f in functions}
        assert registered == {*names.values(), f"{library}_{IDLE_FUNCTION}"}
    finally:
        client.close()


def test_lua_sees_what_python_owns(shared_redis: RedisServer) -> None:
    client = redis.Redis.from_url(shared_redis.url)
    names = [*codec.SHARED_CONSTANTS, "KIND_GATE", "UNIT_NANO_USD", "OUTCOME_CANCELLED"]
    script = lua_prologue() + inline_fields(
        "local t, l = cjson.decode(ARGV[1]), cjson.decode(ARGV[2])\n"
        "return cjson.encode({values = {"
        + ", ".join(f"{name} = {name}" for name in names)
        + "}, gate = gate_limit('p'), tenant = t[T.tenant], mqt = t[T.max_queued_tenant],"
        " kind = l[L_KIND], shadow = l[L_SHADOW]})"
    )
    limit = _model.gate_limit("q")
    ticket = _ticket(limit)
    arguments = codec.ticket_json(ticket), json.dumps(limit_json(limit))
    seen = json.loads(client.eval(script, 0, *arguments))
    for name in codec.SHARED_CONSTANTS:
        assert seen["values"][name] == pytest.approx(getattr(_model, name)), name
    assert seen["values"]["KIND_GATE"] == _model.Kind.GATE.value
    assert seen["values"]["UNIT_NANO_USD"] == _model.Unit.NANO_USD.value
    assert seen["values"]["OUTCOME_CANCELLED"] == _model.Outcome.CANCELLED
    assert codec.limit(seen["gate"]) == _model.gate_limit("p")
    assert (seen["tenant"], seen["mqt"]) == (ticket.tenant, ticket.max_queued_tenant)
    assert (seen["kind"], seen["shadow"]) == (limit.kind.value, limit.shadow)
    client.close()


def limit_json(limit: _model.Limit) -> list[object]:
    return list(codec.limit_json(limit))


def _rpm(capacity: float = 60.0, shadow: bool = False) -> _model.Limit:
    """A pool's requests-per-minute bucket, as the policy makes it."""
    return _model.Limit(
        "pool:p:rpm",
        _model.Kind.BUCKET,
        _model.Unit.REQUEST,
        _model.Scope.POOL,
        "requests_per_minute",
        "p",
        capacity,
        1.0,
        shadow,
    )


def _ticket(limit: _model.Limit) -> _model.Ticket:
    return _model.Ticket(
        lease_id="x",
        tenant="a",
        pool="p",
        input_tokens=3,
        max_output_tokens=4,
        nano_usd=5,
        price_in=0.5,
        price_out=1.5,
        price_cached=0.25,
        price_write=0.75,
        priority=2,
        cost=7.0,
        limits=(limit,),
        ttl=9.0,
        max_queued_tenant=11,
    )


def test_a_ticket_goes_to_the_scripts_under_the_schema_s_keys() -> None:
    limit = _rpm(shadow=True)
    ticket = _ticket(limit)
    doc = json.loads(codec.ticket_json(ticket))
    assert set(doc) == set(codec.TICKET_KEYS.values())
    for field, key in codec.TICKET_KEYS.items():
        if field != "limits":
            assert doc[key] == getattr(ticket, field), field
    (raw,) = doc[codec.TICKET_KEYS["limits"]]
    assert raw == [
        getattr(limit, f).value if f in ("kind", "unit", "scope") else getattr(limit, f)
        for f in codec.LIMIT_FIELDS
    ]
    assert codec.limit(raw) == limit


def test_a_ticket_reads_the_same_split_where_its_shared_part_starts_or_whole(
    shared_redis: RedisServer,
) -> None:
    """The scripts split a ticket's JSON where the part every call of a tenant in a pool
    carries alike starts (``codec.TICKET_SHARED``) and decode that part once for every ticket
    carrying the same; a waiter or lease an older admitd wrote during a rolling upgrade holds
    JSON split elsewhere (its limits last, the tenant second) or spaced JSON, decoded whole."""
    limit = _rpm()
    ticket = _ticket(limit)
    compact = codec.ticket_json(ticket)
    shared = compact[compact.index(codec.TICKET_SHARED) :]
    assert shared.startswith(',"tenant":"a","pool":"p",')
    assert shared.endswith(',"limits":' + json.dumps([limit_json(limit)]).replace(" ", "") + "}")
    whole = json.loads(compact)
    older = {"id": whole["id"], "tenant": whole["tenant"], **whole}  # the tenant second
    assert list(older) != list(whole)
    spaced = json.dumps(whole)
    assert codec.TICKET_SHARED not in spaced
    lib = "\n".join(path.read_text() for path in sorted(LUA.glob("_lib*.lua")))
    # Every field read as the scripts read them (a ticket is not encoded whole: its shared
    # fields are read through its metatable).
    code = lib + "\nlocal keys = cjson.decode(ARGV[4])\n"
    code += "local function fields(t) local o = {} for _, k in ipairs(keys) do o[k] = t[k] end"
    code += " return o end\nreturn cjson.encode({fields(decode_ticket(ARGV[1])),"
    code += " fields(decode_ticket(ARGV[1])), fields(decode_ticket(ARGV[2])),"
    code += " fields(decode_ticket(ARGV[3]))})"
    code = f"local function body()\n{code}\nend\nreturn body()\n"  # as the loader runs it
    prologue = lua_prologue()
    client = redis.Redis.from_url(shared_redis.url)
    try:
        first, again, split_elsewhere, decoded_whole = json.loads(
            client.eval(
                prologue + inline_constants(inline_fields(code), prologue),
                0,
                compact,
                json.dumps(older, separators=(",", ":")),
                spaced,
                json.dumps(list(codec.TICKET_KEYS.values())),
            )
        )
    finally:
        client.close()
    assert first == again == split_elsewhere == decoded_whole == whole


def test_a_ticket_s_limits_encoded_once_per_tuple_are_the_text_of_the_whole_ticket() -> None:
    """codec keeps the text of each tuple of limits it encoded (the policy hands every ticket
    of a pool and tenant the same tuple): a ticket reads as encoding it whole would, and a
    tuple with other limits, even one made where an older one was, gets its own text."""
    limits = [_rpm(capacity) for capacity in (60.0, 120.0)]
    for limit in limits * 2:  # each tuple new, the second time around too
        ticket = _ticket(limit)
        whole = {
            key: [list(limit_json(x)) for x in ticket.limits]
            if field == "limits"
            else getattr(ticket, field)
            for field, key in codec.TICKET_KEYS.items()
        }
        for _ in range(2):  # encoded, then kept
            assert json.loads(codec.ticket_json(ticket)) == whole
            assert codec.ticket_json(ticket) == json.dumps(whole, separators=(",", ":"))
