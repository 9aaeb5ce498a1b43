#!/usr/bin/env python3
"""Generate every Python stub of the repository (one generator for the whole repo).

    python scripts/gen_protos.py           # regenerate all stubs
    python scripts/gen_protos.py --check   # fail when any committed stub is stale

Three targets:

- the server, ``server/admitd/v1/`` (import ``admitd.v1``), from ``protos/`` (admitd's own
  contract; ``protos/third_party`` is a separate include root);
- the server's copy of Envoy's rate limit service, ``server/admitd/_third_party/`` (import
  ``admitd._third_party.envoy.service.ratelimit.v3``), from the unmodified Envoy, xDS and
  protoc-gen-validate files vendored in ``protos/third_party`` (see its README.md). Their
  proto packages (``envoy.*``, ``udpa.*``, ``xds.*``, ``validate``) are generic top-level
  names other distributions also use, so the modules keep their folders *under*
  ``admitd._third_party`` and every import of one of them is prefixed with it; the
  serialized descriptors keep the proto names (``envoy.service.ratelimit.v3...``), which
  is what Envoy speaks on the wire;
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
THIRD_PARTY_ROOT = PROTO_ROOT / "third_party"
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
    nested: bool = False  # modules keep their proto folders under ``out`` (see above)


def _protos_under(root: Path, *, skip: Path | None = None) -> tuple[str, ...]:
    found = (p for p in root.rglob("*.proto") if skip is None or skip not in p.parents)
    return tuple(sorted(str(p.relative_to(root)) for p in found))


ENVOY_RLS = "envoy/service/ratelimit/v3/rls.proto"


TARGETS = (
    Target(
        out=ROOT / "server" / "admitd" / "v1",
        package="admitd.v1",  # mirrors the proto package admitd.v1: nothing to rewrite
        units=(Unit(PROTO_ROOT, _protos_under(PROTO_ROOT, skip=THIRD_PARTY_ROOT), grpc=True),),
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
    Target(
        out=ROOT / "server" / "admitd" / "_third_party",
        package="admitd._third_party",
        units=(
            # gRPC stubs only for the service; the rest are its messages and annotations.
            Unit(THIRD_PARTY_ROOT, (ENVOY_RLS,), grpc=True),
            Unit(
                THIRD_PARTY_ROOT,
                tuple(p for p in _protos_under(THIRD_PARTY_ROOT) if p != ENVOY_RLS),
                grpc=False,
            ),
        ),
        init_text=(
            '"""Generated from the Envoy protos vendored in protos/third_party by\n'
            'scripts/gen_protos.py; do not edit."""\n'
        ),
        nested=True,
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


def _prefix(text: str, top: str, package: str) -> str:
    """Put ``package`` in front of imports of the top-level proto package ``top`` (and of the
    module names handed to the descriptor builder), for a nested target."""
    text = re.sub(rf"^from {top}( |\.)", rf"from {package}.{top}\1", text, flags=re.M)
    return re.sub(rf"'{top}\.([\w.]+_pb2)'", rf"'{package}.{top}.\1'", text)


def generate(target: Target) -> dict[str, str]:
    """Generate ``target`` in memory: file path (relative to ``target.out``) -> content."""
    protos = [proto for unit in target.units for proto in unit.protos]
    files = {"__init__.py": target.init_text}
    with tempfile.TemporaryDirectory() as scratch:
        for unit in target.units:
            _protoc(unit, Path(scratch))
        for path in sorted(Path(scratch).rglob("*.py*")):
            text = path.read_text()
            if target.nested:
                for top in sorted({Path(proto).parts[0] for proto in protos}):
                    text = _prefix(text, top, target.package)
                name = str(path.relative_to(scratch))
                for folder in path.relative_to(scratch).parents:
                    if folder != Path("."):
                        files.setdefault(str(folder / "__init__.py"), "")
            else:
                # Every module of a flat target lands in one folder, so an import of any of
                # the target's protos (by its proto path, "from admitd.v1 import") is rewritten.
                for source in sorted({".".join(Path(proto).parent.parts) for proto in protos}):
                    text = _rewrite(text, source, target.package)
                name = path.name
            files[name] = text
    return files


def _stale(target: Target, fresh: dict[str, str]) -> list[Path]:
    stale = [
        target.out / name
        for name, text in fresh.items()
        if not (target.out / name).is_file() or (target.out / name).read_text() != text
    ]
    pattern = "**/*_pb2*" if target.nested else "*_pb2*"
    extra = {str(p.relative_to(target.out)) for p in target.out.glob(pattern)} - set(fresh)
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
            name = str(path.relative_to(target.out))
            if name in fresh:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(fresh[name])
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
