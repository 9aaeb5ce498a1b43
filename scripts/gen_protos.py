#!/usr/bin/env python3
"""Generate every Python stub of the repository (one generator for the whole repo).

    python scripts/gen_protos.py           # regenerate all stubs
    python scripts/gen_protos.py --check   # fail when any committed stub is stale

Two targets:

- the server, ``server/admitd/v1/`` (import ``admitd.v1``), from ``protos/``;
- the Python client, ``clients/python/admitd_client/_proto/`` (import
  ``admitd_client._proto``), from the same ``protos/admitd/v1/admission.proto`` plus the
  client's private ``clients/python/protos/admitd_client/rpc_status.proto``. The client must
  not import the server package, so it gets its own copy; protoc writes imports for the
  proto's own path (``from admitd.v1 import ...``), which are rewritten to the client's
  package.

Both copies of admission_pb2 register the file ``admitd/v1/admission.proto`` in protobuf's
default descriptor pool. That is sound only because they are byte-identical: the pool
ignores an identical second registration (and hands back the first descriptor and message
classes) but raises "duplicate file name" for a different one. ``--check`` therefore covers
both targets, and tests/client/test_client_protos.py imports both in one process.

protoc comes from grpcio-tools, the .pyi stubs from mypy-protobuf, so the output depends
only on the pinned versions of those two packages.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
CLIENT_PROTO_ROOT = ROOT / "clients" / "python" / "protos"
WELL_KNOWN = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto


@dataclass(frozen=True)
class Unit:
    """Some .proto files under one include root, compiled with or without gRPC stubs."""

    root: Path
    protos: tuple[str, ...]
    grpc: bool


@dataclass(frozen=True)
class Target:
    """One folder of generated modules, importable as ``package``."""

    out: Path
    package: str
    units: tuple[Unit, ...]
    init_text: str


def _all_protos() -> tuple[str, ...]:
    return tuple(sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto")))


TARGETS = (
    Target(
        out=ROOT / "server" / "admitd" / "v1",
        package="admitd.v1",  # mirrors the proto package admitd.v1: nothing to rewrite
        units=(Unit(PROTO_ROOT, _all_protos(), grpc=True),),
        init_text='"""Generated from protos/admitd/v1 by scripts/gen_protos.py; do not edit."""\n',
    ),
    Target(
        out=ROOT / "clients" / "python" / "admitd_client" / "_proto",
        package="admitd_client._proto",
        units=(
            Unit(PROTO_ROOT, ("admitd/v1/admission.proto",), grpc=True),
            Unit(CLIENT_PROTO_ROOT, ("admitd_client/rpc_status.proto",), grpc=False),
        ),
        init_text=(
            '"""Generated from protos/admitd/v1/admission.proto and\n'
            "clients/python/protos/admitd_client/rpc_status.proto by scripts/gen_protos.py;\n"
            'do not edit."""\n'
        ),
    ),
)


def _protoc(unit: Unit, out: Path) -> None:
    plugins = ["python", "mypy"] + (["grpc_python", "mypy_grpc"] if unit.grpc else [])
    args = [
        "protoc",
        f"-I{unit.root}",
        f"-I{WELL_KNOWN}",
        *(f"--{plugin}_out={out}" for plugin in plugins),
        *unit.protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {', '.join(unit.protos)}")


def _rewrite(text: str, old_package: str, new_package: str) -> str:
    """Point protoc's imports (and module names) at the package the files really live in.

    Only import statements and the module-name string handed to the descriptor builder are
    touched: the serialized descriptor must keep the proto package (``.admitd.v1.Lease``).
    """
    if old_package == new_package:
        return text
    old = re.escape(old_package)
    text = re.sub(rf"^from {old} import ", f"from {new_package} import ", text, flags=re.M)
    text = re.sub(rf"^import {old}\.", f"import {new_package}.", text, flags=re.M)
    return re.sub(rf"'{old}\.(\w+_pb2)'", rf"'{new_package}.\1'", text)


def generate(target: Target) -> dict[str, str]:
    """Generate ``target`` in memory: file name -> content."""
    # Every module of a target lands in one flat folder, so an import of any of the
    # target's protos (by its proto path, e.g. "from admitd.v1 import") is rewritten.
    sources = {".".join(Path(proto).parent.parts) for unit in target.units for proto in unit.protos}
    files = {"__init__.py": target.init_text}
    with tempfile.TemporaryDirectory() as scratch:
        for unit in target.units:
            _protoc(unit, Path(scratch))
        for path in sorted(Path(scratch).rglob("*.py*")):
            text = path.read_text()
            for source in sorted(sources):
                text = _rewrite(text, source, target.package)
            files[path.name] = text
    return files


def _stale(target: Target, fresh: dict[str, str]) -> list[Path]:
    stale = [
        target.out / name
        for name, text in fresh.items()
        if not (target.out / name).is_file() or (target.out / name).read_text() != text
    ]
    extra = {p.name for p in target.out.glob("*_pb2*")} - set(fresh)
    return stale + [target.out / name for name in sorted(extra)]


def check() -> int:
    """Regenerate every target in memory and compare with the committed stubs."""
    stale = [path for target in TARGETS for path in _stale(target, generate(target))]
    if stale:
        print("generated stubs are stale; run: python scripts/gen_protos.py", file=sys.stderr)
        for path in stale:
            print(f"  {path.relative_to(ROOT)}", file=sys.stderr)
        return 1
    print("generated stubs are up to date")
    return 0


def write() -> None:
    for target in TARGETS:
        fresh = generate(target)
        target.out.mkdir(parents=True, exist_ok=True)
        for path in _stale(target, fresh):
            if path.name in fresh:
                path.write_text(fresh[path.name])
            else:
                path.unlink()  # a proto was removed: its stubs go too
        for name in sorted(fresh):
            print((target.out / name).relative_to(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the stubs are stale")
    if parser.parse_args().check:
        return check()
    write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
