#!/usr/bin/env python3
"""Check that the lock pins a version of everything the two pyproject.toml files ask for.

    python scripts/check_lock.py      # scripts/install runs it before it installs anything

``requirements/dev.txt`` must pin, for CPython 3.11 on Linux, a version accepted by every
requirement of admitd (its dependencies and every extra), of admitd-client (the same), of both
``build-system.requires`` and of ``requirements/build.in``; ``requirements/runtime.txt`` the
same for admitd's own dependencies and the build requirements, each at the version dev.txt
pins, so the image and ``scripts/serve`` run what the tests ran. Exit 1 naming every
requirement the lock misses, with the fix: ``scripts/lock``. What those packages need in turn
is checked once they are installed, by ``pip check``.

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
                    for text in texts:
                        yield f"{package} [{extra}]", Requirement(text)
        for text in meta["build-system"]["requires"]:
            yield f"{package} build-system.requires", Requirement(text)
    for line in (LOCKS / "build.in").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            yield "requirements/build.in", Requirement(line.strip())


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
    try:
        problems = [*missing(LOCKS / "dev.txt", wanted(extras=True))]
        problems += missing(LOCKS / "runtime.txt", wanted(extras=False))
    except InvalidRequirement as error:
        problems = [f"pyproject.toml: {error}"]
    dev = pins(LOCKS / "dev.txt")
    problems += [
        f"runtime.txt pins {name}=={version}, dev.txt {dev.get(name)}"
        for name, version in pins(LOCKS / "runtime.txt").items()
        if dev.get(name) != version
    ]
    for problem in problems:
        print(f"check_lock: {problem}", file=sys.stderr)
    if problems:
        print("check_lock: the lock is out of date: run scripts/lock", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
