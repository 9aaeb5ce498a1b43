"""What refusing an Acquire costs admitd, against what answering an RPC costs the echo: CPU
instructions per RPC of the server process (all its threads: the event loop's and gRPC
core's), counted by valgrind's callgrind, so that a busy machine does not move the figure.

    .venv/bin/python -m bench.refusal_cost          # about 3 minutes

Each server runs under callgrind and the Go generator (8 callers) drives it for the same
time: the echo (Acquire+Release pairs, two RPCs each); admitd on the memory backend,
serving pairs; admitd with ``overload.max_queue_delay: 1ms``, which, slowed down by
valgrind, refuses every Acquire SERVER_OVERLOADED (the run fails if one is not). admitd's
overload probe calls the replica itself ten times a second with or without load, so an
idle run of the same length is subtracted from each of admitd's figures.

Why: past capacity a replica must refuse every call it cannot serve before the caller's
deadline, so refusing must cost much less than serving; the overload scenario's loads
(``bench/scenarios/overload.py``) are chosen from these ratios. Measured at 2026-12-08:
a refusal 1.00x the echo's instructions per RPC, a served pair 1.87x the echo's pair (at
valgrind's pace, ~20 pairs/s: under real load, batching makes a pair ~1.3x the echo's
CPU time, and a refusal ~1.0-1.25x an echo RPC's).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import generator, procs
from bench.scenarios._common import UNLIMITED_POOL

CONFIG: dict[str, Any] = {"pools": [UNLIMITED_POOL], "tenants": [{"name": "default"}]}
CONFIGS = {  # never refusing for load (valgrind's pace would), and always
    "pairs": {**CONFIG, "overload": {"max_queue_delay": None}},
    "refusals": {**CONFIG, "overload": {"max_queue_delay": "1ms"}},
}
CALLERS = 8


def counted(workdir: Path, name: str, seconds: float, *, load: bool) -> dict[str, Any]:
    """One server (``name``: echo, or admitd configured as ``CONFIGS[name]``) under
    callgrind for ``seconds``: the instructions it executed meanwhile and what the
    generator saw (``load``; else idle)."""
    out = workdir / f"{name}-{'load' if load else 'idle'}.callgrind"
    under = procs.callgrind(out)
    if name == "echo":
        server = procs.echo(workdir, name=name, under=under)
    else:
        server = procs.admitd(CONFIGS[name], workdir, name, under=under)
    try:
        time.sleep(3.0)  # its start-up (imports, first calls) done, under valgrind's pace
        procs.collect(server.pid, True)
        if load:
            spec = generator.Load([server.target], seconds, CALLERS, warmup=0.0, timeout=60.0)
            result = generator.pairs(spec, workdir, name)
        else:
            time.sleep(seconds)
            result = {}
        procs.collect(server.pid, False)
    finally:
        server.stop(timeout=120.0)
    return {"instructions": procs.instructions(out), **result}


def measure(seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        echo = counted(workdir, "echo", seconds, load=True)
        pairs = counted(workdir, "pairs", seconds, load=True)
        refusals = counted(workdir, "refusals", seconds, load=True)
        idle = {
            name: counted(workdir, name, seconds, load=False)["instructions"] for name in CONFIGS
        }
    refused = refusals["refusals"].get("SERVER_OVERLOADED", 0)
    failed = sum(refusals["errors"].values())
    if refusals["pairs"] or not refused or refused != failed or pairs["errors"]:
        raise RuntimeError(
            f"expected only pairs served, then only SERVER_OVERLOADED: {pairs['errors']}, "
            f"{refusals['pairs']} pairs and {refusals['errors']} in the refusing run"
        )
    echo_rpc = echo["instructions"] / (2 * echo["pairs"])
    pair = (pairs["instructions"] - idle["pairs"]) / pairs["pairs"]
    refusal = (refusals["instructions"] - idle["refusals"]) / refused
    return {
        "echo_instructions_per_rpc": echo_rpc,
        "pair_instructions": pair,
        "refusal_instructions": refusal,
        "pair_to_echo_pair": pair / (2 * echo_rpc),
        "refusal_to_echo_rpc": refusal / echo_rpc,
        "refusal_to_pair": refusal / pair,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.refusal_cost", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="each run's length")
    args = parser.parse_args(argv)
    shown = {k: round(v, 3 if v < 100 else None) for k, v in measure(args.seconds).items()}
    print(json.dumps(shown))


if __name__ == "__main__":
    main()
