"""Run the benchmarks.

``python -m bench.run`` runs every scenario at full size (about 35 min on 2 cores) and writes
``bench/results/*.json``, the PNG plots and the tables of ``BENCHMARKS.md``.
``python -m bench.run --smoke`` runs them tiny (about a minute), writes the JSON to a
temporary folder, and exits 1 if a sanity check fails (what CI runs).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import generator, goals, procs, report
from bench.scenarios import SCENARIOS, Ctx
from bench.scenarios._common import FULL_WAITERS, SMOKE_WAITERS

RESULTS = procs.ROOT / "bench" / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--smoke", action="store_true", help="tiny and fast; checks sanity")
    parser.add_argument(
        "--out",
        type=Path,
        help="results folder (default: bench/results; a temporary one with --smoke)",
    )
    parser.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--waiters",
        type=int,
        help=f"held-open waiters the scale scenario parks (default {FULL_WAITERS:,}; "
        f"{SMOKE_WAITERS} with --smoke)",
    )
    parser.add_argument(
        "--list", action="store_true", help="print the scenario names, one a line, and exit"
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="run nothing: redraw the plots and BENCHMARKS.md from the results folder",
    )
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(SCENARIOS))
        return 0
    if args.report:
        out = args.out or RESULTS
        markdown = _markdown(out)
        report.render(out, markdown, report.load_all(out))
        print(f"wrote {markdown}")
        return 0
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if any(SCENARIOS[name].go for name in chosen):
        try:
            print(f"load generator: {generator.binary()}", flush=True)
        except generator.GoMissing as missing:
            print(f"error: {missing}", file=sys.stderr)
            return 2
    temporary = args.out is None and args.smoke
    out = Path(tempfile.mkdtemp(prefix="admitd-bench-")) if temporary else args.out or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    workdir = out / "tmp"  # configs and logs of every process (gitignored)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir()
    waiters = args.waiters or (SMOKE_WAITERS if args.smoke else FULL_WAITERS)
    ctx = Ctx(smoke=args.smoke, workdir=workdir, out=out, waiters=waiters)
    environment = conditions()
    failures: list[str] = []
    results: dict[str, dict[str, Any]] = {}
    started_all = time.monotonic()
    print(f"results in {out}", flush=True)
    try:
        for name in chosen:
            started = time.monotonic()
            print(f"== {name}", flush=True)
            results[name] = SCENARIOS[name].run(ctx)
            results[name]["meta"] = {
                "smoke": args.smoke,
                "seconds": round(time.monotonic() - started, 1),
                **environment,
                "load_after": os.getloadavg(),
            }
            problems = SCENARIOS[name].check(results[name])
            results[name]["meta"]["problems"] = problems
            report.write_json(out, name, results[name])
            failures += [f"{name}: {p}" for p in problems]
            print(
                f"   {name} done in {time.monotonic() - started:.0f}s"
                + (f"; PROBLEMS: {problems}" if problems else ""),
                flush=True,
            )
    finally:
        ctx.close()
    # A smoke run writes its tables next to its JSON, without plots (no matplotlib needed).
    markdown = out / "BENCHMARKS.md" if args.smoke else _markdown(out)
    report.render(out, markdown, report.load_all(out), with_plots=not args.smoke)
    print(f"wrote {markdown}")
    for goal in goals.evaluate(results):
        verdict = {True: "pass", False: "FAIL", None: "-"}[goal["met"]]
        print(f"goal {verdict:4} {goal['goal']}: {goal['measured']}")
    if args.smoke and not failures:  # on failure the logs stay for a look
        shutil.rmtree(out if temporary else workdir, ignore_errors=True)
    print(f"total {time.monotonic() - started_all:.0f}s")
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if failures else 0


def _markdown(out: Path) -> Path:
    """BENCHMARKS.md at the repository root for bench/results, else next to the results."""
    return procs.ROOT / "BENCHMARKS.md" if out.resolve() == RESULTS else out / "BENCHMARKS.md"


def conditions() -> dict[str, Any]:
    """What the numbers were measured on: code version, machine, and how busy it was."""
    commit_file = procs.ROOT / ".commit"  # a snapshot made with ``git archive``
    if commit_file.exists():
        commit, dirty = commit_file.read_text().strip(), False
    else:
        commit = _git("rev-parse", "HEAD")
        dirty = bool(_git("status", "--porcelain", "--", "server"))
    return {
        "commit": commit,
        "server_tree_dirty": dirty,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "load_before": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(procs.ROOT), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
