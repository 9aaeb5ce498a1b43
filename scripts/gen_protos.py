#!/usr/bin/env python3
"""Generate the Python stubs of protos/ into server/ (one generator for the whole repo).

    python scripts/gen_protos.py           # regenerate server/admitd/v1/*_pb2*.py(i)
    python scripts/gen_protos.py --check   # fail when the committed stubs are stale

protoc comes from grpcio-tools, the .pyi stubs from mypy-protobuf, so the output depends
only on the pinned versions of those two packages.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_ROOT = ROOT / "server"
GENERATED_PACKAGE = Path("admitd") / "v1"  # mirrors the proto package admitd.v1
INIT_TEXT = '"""Generated from protos/admitd/v1 by scripts/gen_protos.py; do not edit."""\n'


def generate(out_root: Path) -> list[Path]:
    """Run protoc for every .proto under protos/ and return the files written."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    (out_root / GENERATED_PACKAGE / "__init__.py").write_text(INIT_TEXT)
    return sorted(p for p in (out_root / GENERATED_PACKAGE).iterdir() if p.is_file())


def check() -> int:
    """Regenerate into a scratch folder and compare with the committed stubs."""
    with tempfile.TemporaryDirectory() as scratch:
        fresh = generate(Path(scratch))
        stale = []
        for path in fresh:
            committed = OUT_ROOT / path.relative_to(scratch)
            if not committed.exists() or not filecmp.cmp(path, committed, shallow=False):
                stale.append(str(committed.relative_to(ROOT)))
        committed_names = {p.name for p in (OUT_ROOT / GENERATED_PACKAGE).glob("*_pb2*")}
        extra = committed_names - {p.name for p in fresh}
        stale.extend(str(GENERATED_PACKAGE / name) for name in sorted(extra))
    if stale:
        print("generated stubs are stale; run: python scripts/gen_protos.py", file=sys.stderr)
        for name in stale:
            print(f"  {name}", file=sys.stderr)
        return 1
    print("generated stubs are up to date")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the stubs are stale")
    if parser.parse_args().check:
        return check()
    for path in generate(OUT_ROOT):
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
