#!/usr/bin/env python3
"""Check that the lock pins a version of everything the two pyproject.toml files ask for.

    python scripts/check_lock.py      # scripts/install runs it before it installs anything

``requirements/dev.txt`` must pin, for CPython 3.11 on Linux, a version accepted by every
requirement of admitd (its dependencies and every extra), of admitd-client (the same), of both
``build-system.requires`` and of ``requirements/build.in``; ``requirements/runtime.txt`` the
same for admitd's own dependencies and the build requirements, each at the version dev.txt
pins, so the image and ``scripts/serve`` run what the tests ran. Extras locked apart
(``APART``) are not in dev.txt but in their own lock: ``requirements/litellm.txt`` pins
admitd-client's ``litellm`` extra, ``requirements/litellm.in`` and admitd-client's own
dependencies, these at dev.txt's versions. Exit 1 naming every requirement the lock misses,
with the fix: ``scripts/lock``. What those packages need in turn is checked once they are
installed, by ``pip check``.

    python scripts/check_lock.py --client-pins   # admitd-client's dependencies as dev.txt
                                                  # pins them (scripts/lock constrains
                                                  # litellm.txt with them)

It runs before anything is installed, with the interpreter of a new virtualenv: pip's own copy
of ``packaging`` is the one library certain to be there.
"""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path

from pip._vendor.packaging.requirements import InvalidRequirement, Requirement
from pip._vendor.packaging.utils import NormalizedName, canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ROOT / "requirements"
PACKAGES = {
    "admitd": ROOT / "pyproject.toml",
    "admitd-client": ROOT / "clients/python/pyproject.toml",
}
# Extras locked in a lock of their own (package, extra) -> the lock, which also pins the
# requirements of its .in file. requirements/dev-overrides.txt leaves them out of dev.txt.
APART = {("admitd-client", "litellm"): "litellm"}


def pins(lock: Path) -> dict[NormalizedName, str]:
    """Return the ``name==version`` lines of a lock written by ``uv pip compile``."""
    found: dict[NormalizedName, str] = {}
    for line in lock.read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith(("#", "-")):
            name, _, version = line.split(" ")[0].partition("==")
            found[canonicalize_name(name)] = version
    return found


def wanted(*, extras: bool) -> Iterator[tuple[str, Requirement]]:
    """Yield (where it is asked for, requirement) from the pyproject files and build.in."""
    for package, path in PACKAGES.items():
        meta = tomllib.loads(path.read_text())
        if package == "admitd" or extras:
            for text in meta["project"].get("dependencies", []):
                yield f"{package} dependencies", Requirement(text)
            if extras:
                for extra, texts in meta["project"].get("optional-dependencies", {}).items():
                    if (package, extra) in APART:
                        continue
                    for text in texts:
                        yield f"{package} [{extra}]", Requirement(text)
        for text in meta["build-system"]["requires"]:
            yield f"{package} build-system.requires", Requirement(text)
    for line in (LOCKS / "build.in").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            yield "requirements/build.in", Requirement(line.strip())


def client_dependencies() -> list[Requirement]:
    meta = tomllib.loads(PACKAGES["admitd-client"].read_text())
    return [Requirement(text) for text in meta["project"]["dependencies"]]


def apart(lock: str) -> Iterator[tuple[str, Requirement]]:
    """Yield what a lock of its own must pin: its extras, its .in file, the client's
    dependencies and the build requirements."""
    for (package, extra), name in APART.items():
        if name == lock:
            meta = tomllib.loads(PACKAGES[package].read_text())
            for text in meta["project"]["optional-dependencies"][extra]:
                yield f"{package} [{extra}]", Requirement(text)
    for line in (LOCKS / f"{lock}.in").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            yield f"requirements/{lock}.in", Requirement(line.strip())
    for req in client_dependencies():
        yield "admitd-client dependencies", req


def missing(lock: Path, requirements: Iterable[tuple[str, Requirement]]) -> Iterator[str]:
    """Yield one line per requirement that the lock does not satisfy."""
    pinned = pins(lock)
    for where, req in requirements:
        if req.marker is not None and not req.marker.evaluate():
            continue  # not for CPython 3.11 on Linux, where the lock applies
        version = pinned.get(canonicalize_name(req.name))
        if version is None:
            yield f"{lock.name}: pins nothing for {req} ({where})"
        elif not req.specifier.contains(version, prereleases=True):
            yield f"{lock.name}: pins {req.name}=={version}, but {where} wants {req}"


def main() -> int:
    if sys.version_info[:2] != (3, 11):
        print("check_lock: the lock is resolved for Python 3.11", file=sys.stderr)
        return 1
    dev = pins(LOCKS / "dev.txt")
    if sys.argv[1:] == ["--client-pins"]:
        for req in client_dependencies():
            print(f"{req.name}=={dev[canonicalize_name(req.name)]}")
        return 0
    try:
        problems = [*missing(LOCKS / "dev.txt", wanted(extras=True))]
        problems += missing(LOCKS / "runtime.txt", wanted(extras=False))
        for lock in sorted(set(APART.values())):
            problems += missing(LOCKS / f"{lock}.txt", apart(lock))
    except InvalidRequirement as error:
        problems = [f"pyproject.toml: {error}"]
    problems += [
        f"runtime.txt pins {name}=={version}, dev.txt {dev.get(name)}"
        for name, version in pins(LOCKS / "runtime.txt").items()
        if dev.get(name) != version
    ]
    for lock in sorted(set(APART.values())):
        theirs = pins(LOCKS / f"{lock}.txt")
        problems += [
            f"{lock}.txt pins {req.name}=={theirs.get(name)}, dev.txt {dev.get(name)}"
            for req in client_dependencies()
            if theirs.get(name := canonicalize_name(req.name)) != dev.get(name)
        ]
    for problem in problems:
        print(f"check_lock: {problem}", file=sys.stderr)
    if problems:
        print("check_lock: the lock is out of date: run scripts/lock", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
