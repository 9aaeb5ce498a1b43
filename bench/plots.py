"""PNG plots of a full run, one function per scenario (each takes the scenario's results and
returns a figure); :mod:`bench.scenarios` registers them. matplotlib is imported here and
nowhere else, and only when a plot is drawn: smoke runs and checks need none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DPI = 90


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)


def overhead(r: dict[str, Any]) -> Any:
    fig, (ax1, ax2, ax3) = _pyplot().subplots(1, 3, figsize=(13, 4))
    for server in ("echo", "memory", "redis"):
        rows = [row for row in r["rows"] if row["server"] == server]
        xs = [row["concurrency"] for row in rows]
        ax1.plot(xs, [row["pairs_per_s"] for row in rows], marker="o", label=server)
        ax3.plot(xs, [row["acquire_p99_ms"] for row in rows], marker="o", label=server)
        if server != "echo":
            ax2.plot(xs, [row["ratio_to_echo"] for row in rows], marker="o", label=server)
    titles = ("Acquire+Release pairs/s (median)", "ratio to echo (same run)", "Acquire p99 ms")
    for ax, title in zip((ax1, ax2, ax3), titles, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("client concurrency")
        ax.set_title(title)
        ax.legend()
    ax2.set_ylim(0, 1.05)
    ax3.set_yscale("log")
    return fig


def replicas(r: dict[str, Any]) -> Any:
    fig, (ax1, ax2) = _pyplot().subplots(1, 2, figsize=(10, 4))
    for kind, label in (("echo", "echo"), ("redis", "admitd on one Redis")):
        rows = [row for row in r["rows"] if row["kind"] == kind]
        xs = [row["processes"] for row in rows]
        ax1.plot(xs, [row["pairs_per_s"] for row in rows], marker="o", label=label)
        if kind == "redis":
            ax2.plot(xs, [row["redis_cpu_us_per_pair"] for row in rows], marker="o", label=label)
    ax2.axhline(100, linestyle="--", color="grey", label="goal (100 us)")
    for ax, title in ((ax1, "pairs/s"), (ax2, "redis-server CPU us per pair")):
        ax.set_xlabel("processes")
        ax.set_xticks([1, 2, 3])
        ax.set_ylim(bottom=0)
        ax.set_title(title)
        ax.legend(fontsize=7)
    return fig


def fairness(r: dict[str, Any]) -> Any:
    runs = r["runs"]
    fig, axes = _pyplot().subplots(1, len(runs), figsize=(4 * len(runs), 3.8), squeeze=False)
    for ax, run in zip(axes[0], runs, strict=True):
        for tenant, points in run["series"].items():
            ax.plot([p[0] for p in points], [p[1] / 1000 for p in points], label=tenant)
        ax.set_title(f"{run['case']}, {run['replicas']} replica(s)", fontsize=9)
        ax.set_xlabel("s")
        ax.set_ylabel("tokens used / weight (k)")
        ax.legend(fontsize=6, ncol=2)
    return fig


def limits(r: dict[str, Any]) -> Any:
    rows = r["rows"]
    fig, (ax1, ax2) = _pyplot().subplots(1, 2, figsize=(10, 4))
    for client in dict.fromkeys(row["client"] for row in rows):
        mine = [row for row in rows if row["client"] == client]
        xs = [row["concurrency"] for row in mine]
        ax1.plot(xs, [row["goodput_share"] for row in mine], marker="o", label=client)
        ax2.plot(xs, [max(row["provider_429"], 0.5) for row in mine], marker="o", label=client)
    ax1.set_ylim(0, 1.05)
    ax2.set_yscale("log")
    for ax, title in ((ax1, "goodput / provider limit"), (ax2, "provider 429s (0 drawn at 0.5)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("client concurrency")
        ax.set_title(title)
        ax.legend(fontsize=7)
    return fig


def scale(r: dict[str, Any]) -> Any:
    rows = r["rows"]
    fig, ax = _pyplot().subplots(figsize=(9, 4))
    labels = [f"{row['what']}={row['n']:,}\n{row['backend']}" for row in rows]
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [row["acquire_p50_ms"] for row in rows], 0.4, label="p50")
    ax.bar([x + 0.2 for x in xs], [row["acquire_p99_ms"] for row in rows], 0.4, label="p99")
    ax.set_xticks(list(xs), labels, fontsize=7)
    ax.set_ylabel("Acquire latency, concurrency 1 (ms)")
    ax.legend()
    return fig
