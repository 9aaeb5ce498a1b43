#!/usr/bin/env python3
"""Check that the Python client installs alone, as its users install it.

    python clients/python/check_install.py    # CI: after the tests (needs PyPI or pip's cache)

In a fresh virtual environment, ``pip install clients/python`` must bring admitd-client with
exactly grpcio, protobuf and tiktoken as its requirements, and nothing beyond what those
three need in turn: not the server package (admitd), not googleapis-common-protos. pip
resolves the client's own ranges, as a user's pip would, within the versions the lock pins
(requirements/dev.txt, given as constraints), so the check installs what the tests ran. Then
``import admitd_client`` must work there without importing either, and the wheel must ship
``py.typed`` and the generated ``.pyi`` stubs. Exit 1 with every problem found.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

CLIENT = Path(__file__).resolve().parent
LOCK = CLIENT.parent.parent / "requirements" / "dev.txt"
REQUIRED = ["grpcio", "protobuf", "tiktoken"]
NEVER = ["admitd", "googleapis-common-protos", "grpcio-status"]

# Runs inside the fresh environment; prints what it finds as JSON.
PROBE = r"""
import importlib.metadata as md, json, sys
from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.utils import canonicalize_name as canon

import admitd_client
from admitd_client import AdmissionClient, AsyncAdmissionClient, Rejected  # noqa: F401

def needs(dist):
    reqs = [Requirement(text) for text in md.requires(dist) or []]
    return {canon(r.name) for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})}

direct = needs("admitd-client")
closure, todo = set(), list(direct)
while todo:
    name = todo.pop()
    if name not in closure:
        closure.add(name)
        todo.extend(needs(name))
files = {str(f) for f in md.files("admitd-client") or ()}
print(json.dumps({
    "direct": sorted(direct),
    "closure": sorted(closure),
    "installed": sorted(canon(d.metadata["Name"]) for d in md.distributions()),
    "imported": sorted(m for m in sys.modules
                       if m == "admitd" or m.startswith(("admitd.", "google.rpc"))),
    "typed": "admitd_client/py.typed" in files,
    "stubs": sorted(f for f in files if f.endswith(".pyi")),
    "version": admitd_client.__version__,
}))
"""


def pip_names(python: Path) -> set[str]:
    out = subprocess.run(
        [python, "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {entry["name"].lower().replace("_", "-") for entry in json.loads(out)}


def lock_constraints(scratch: Path) -> Path:
    """Write the lock's ``name==version`` lines without their hashes, as a constraints file.

    A hash in a constraints file would put pip in hash-checking mode, which cannot install a
    source folder; the versions alone keep this install on what the tests ran with.
    """
    pins = [
        line.split(" ")[0]
        for line in LOCK.read_text().splitlines()
        if line and not line[0].isspace() and not line.startswith(("#", "-"))
    ]
    path = scratch / "constraints.txt"
    path.write_text("\n".join(pins) + "\n")
    return path


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="admitd-client-install-") as scratch:
        env_dir = Path(scratch) / "venv"
        venv.EnvBuilder(with_pip=True).create(env_dir)
        python = env_dir / "bin" / "python"
        baseline = pip_names(python)  # pip (and setuptools on older Pythons)
        # Built from a clean copy: setuptools builds in the source folder, and a stale
        # build/ there could slip removed modules into the wheel.
        source = Path(scratch) / "admitd-client"
        shutil.copytree(CLIENT, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
        # PIP_CONSTRAINT, not --constraint: it reaches the isolated build environment too, so
        # the locked setuptools builds the wheel.
        constraints = lock_constraints(Path(scratch))
        subprocess.run(
            [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", source],
            check=True,
            env={**os.environ, "PIP_CONSTRAINT": str(constraints)},
        )
        found = json.loads(
            subprocess.run(
                [python, "-c", PROBE], check=True, capture_output=True, text=True, cwd=scratch
            ).stdout
        )
    problems = []
    if found["direct"] != REQUIRED:
        problems.append(f"admitd-client requires {found['direct']}, expected {REQUIRED}")
    extra = set(found["installed"]) - baseline - set(found["closure"]) - {"admitd-client"}
    if extra:
        problems.append(f"installed beyond the requirements' closure: {sorted(extra)}")
    if leaked := sorted(set(found["installed"]) & set(NEVER)):
        problems.append(f"installed packages the client must not need: {leaked}")
    if found["imported"]:
        problems.append(f"import admitd_client imported {found['imported']}")
    if not found["typed"]:
        problems.append("the wheel lacks admitd_client/py.typed")
    if "admitd_client/_proto/admission_pb2.pyi" not in found["stubs"]:
        problems.append(f"the wheel lacks the generated .pyi stubs: {found['stubs']}")
    for problem in problems:
        print(f"check_install: {problem}", file=sys.stderr)
    if problems:
        return 1
    added = sorted(set(found["installed"]) - baseline)
    print(f"admitd-client {found['version']} installs alone: {', '.join(added)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
