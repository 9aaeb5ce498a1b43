"""Acquire+Release load from the independent Go generator (``bench/loadgen``, grpc-go).

The generator is built on first use with Debian's Go and grpc-go in GOPATH mode (nothing is
downloaded), cached under ``bench/results/build/`` by a hash of its sources and the Go
version, and run as its own process with one core for Go (``GOMAXPROCS=1``), so a Python
client's cost never limits or blurs what the servers can do. It needs no generated code:
the requests are encoded here, from the Python client's stubs, and handed to it.

Without Go, :func:`binary` raises :class:`GoMissing` saying what to install
(``scripts/install`` does it, through ``scripts/setup_system.sh``); there is no slower
fallback that would flatter the servers by saturating first.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from admitd_client._proto import admission_pb2 as pb
from bench import procs
from bench.load import acquire_request, release_request

SOURCE = procs.ROOT / "bench" / "loadgen"
BUILD = procs.ROOT / "bench" / "results" / "build"  # gitignored
GOCODE = Path("/usr/share/gocode")  # where Debian's golang-*-dev packages put their sources
GRPC_GO = GOCODE / "src" / "google.golang.org" / "grpc"
SERVICE = pb.DESCRIPTOR.services_by_name["Admission"].full_name


class GoMissing(RuntimeError):
    """Go or grpc-go is not installed; the message says how to install them."""


@dataclass
class Load:
    """One run of the generator against ``targets`` (callers spread evenly over them).

    Closed loop by default (``concurrency`` callers); open loop when ``rate`` (pairs
    started per second) is set. Counted is what completes inside ``duration`` seconds after
    a ``warmup``, with the CPU time the processes in ``cpu_pids`` (name: pid) used meanwhile.
    ``reject_pool``: after each pair, also time a fail-fast Acquire there (meant to be
    turned away). ``timeout``: every RPC's deadline, seconds.
    """

    targets: list[str]
    duration: float
    concurrency: int = 1
    rate: float | None = None
    warmup: float = 0.5
    tenants: list[str] = field(default_factory=lambda: ["default"])
    pool: str = "default"
    reject_pool: str | None = None
    cpu_pids: dict[str, int] = field(default_factory=dict)
    seed: int = 1
    timeout: float = 10.0
    connections: int = 1  # HTTP/2 connections per target

    def spec(self) -> dict[str, Any]:
        """The generator's JSON spec (requests encoded; bytes as base64)."""

        def encoded(pool: str) -> list[str]:
            requests = [acquire_request(t, pool, 10, 10, 0) for t in self.tenants]
            return [_b64(r.SerializeToString()) for r in requests]

        return {
            "targets": self.targets,
            "connections": self.connections,
            "concurrency": self.concurrency,
            "rate": self.rate or 0,
            "duration": self.duration,
            "warmup": self.warmup,
            "timeout": self.timeout,
            "acquire": encoded(self.pool),
            "reject": encoded(self.reject_pool) if self.reject_pool else [],
            # Without a lease id (proto3 leaves an empty string out): the generator puts
            # each lease's id in front.
            "release_tail": _b64(release_request("", 10, 5).SerializeToString()),
            "lease_id_field": pb.Lease.DESCRIPTOR.fields_by_name["lease_id"].number,
            "release_lease_id_field": pb.ReleaseRequest.DESCRIPTOR.fields_by_name[
                "lease_id"
            ].number,
            "acquire_method": f"/{SERVICE}/Acquire",
            "release_method": f"/{SERVICE}/Release",
            "cpu_pids": self.cpu_pids,
            "clock_ticks": os.sysconf("SC_CLK_TCK"),
            "seed": self.seed,
        }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def go_missing() -> str | None:
    """Why the generator cannot be built here (None: it can)."""
    missing = []
    if shutil.which("go") is None:
        missing.append("golang-go")
    if not GRPC_GO.is_dir():
        missing.append("golang-google-grpc-dev")
    if not missing:
        return None
    return (
        f"the bench's load generator needs Go and grpc-go: missing {' and '.join(missing)}. "
        "Run `bash scripts/setup_system.sh` as root (it installs them with apt-get), or "
        f"`sudo apt-get install {' '.join(missing)}`."
    )


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GO111MODULE="off",  # GOPATH mode: Debian's packaged sources, no module downloads
        GOPATH=f"{BUILD / 'gopath'}{os.pathsep}{GOCODE}",
        GOCACHE=str(BUILD / "gocache"),
        GOFLAGS="",
    )
    return env


@functools.cache
def binary() -> Path:
    """The generator's executable, built now if its sources or Go changed since the last
    build."""
    reason = go_missing()
    if reason is not None:
        raise GoMissing(reason)
    version = subprocess.run(
        ["go", "version"], capture_output=True, text=True, check=True, env=_go_env()
    ).stdout
    digest = hashlib.sha256(version.encode())
    for source in sorted(SOURCE.glob("*.go")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    path = BUILD / f"loadgen-{digest.hexdigest()[:16]}"
    if path.exists():
        return path
    BUILD.mkdir(parents=True, exist_ok=True)
    print(f"building the Go load generator into {path} (once)", file=sys.stderr, flush=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.part")
    done = subprocess.run(
        ["go", "build", "-o", str(partial), "."],
        cwd=SOURCE,
        capture_output=True,
        text=True,
        env=_go_env(),
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"building the Go load generator failed:\n{done.stderr}")
    os.replace(partial, path)  # whole or absent, even with two runs building at once
    for old in BUILD.glob("loadgen-*"):
        if old != path and not old.name.endswith(".part"):
            old.unlink(missing_ok=True)
    return path


def start(load: Load, workdir: Path, name: str) -> subprocess.Popen[bytes]:
    """The generator running ``load`` in its own process; collect it with :func:`finish`."""
    spec_path = workdir / f"load-{name}.json"  # apart from the servers' files of that name
    spec_path.write_text(json.dumps(load.spec()))
    # One core for the client; a lazier garbage collector (its heap is a few MB) costs it
    # less of that core.
    env = {**os.environ, "GOMAXPROCS": "1", "GOGC": "400"}
    with (workdir / f"load-{name}.log").open("wb") as log:
        return subprocess.Popen(
            [str(binary()), str(spec_path)], stdout=subprocess.PIPE, stderr=log, env=env
        )


def finish(process: subprocess.Popen[bytes], load: Load) -> dict[str, Any]:
    """The generator's result, once it ends (within its run time and a margin)."""
    return procs.finish_load(process, load.warmup + load.duration + 2 * load.timeout + 30)


def pairs(load: Load, workdir: Path, name: str) -> dict[str, Any]:
    """Run ``load`` to its end: pairs/s, latency percentiles (ms), CPU per pair (us) and
    in cores of each process in ``cpu_pids`` and of the generator (``load``), errors by
    gRPC code, refusals by reason."""
    return finish(start(load, workdir, name), load)
