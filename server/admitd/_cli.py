"""``admitd`` command line: serve, check-config, status."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

import grpc

from ._config import EMBEDDED_DEFAULT, ConfigError, Settings, load_config
from .v1 import admission_pb2 as pb
from .v1 import admission_pb2_grpc as pb_grpc


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="admitd", description="Admission control for LLM calls.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gRPC server")
    serve.add_argument("--config", help="YAML config (default: embedded memory setup)")
    serve.add_argument("--listen", help="HOST:PORT, overrides the config's listen")
    check = commands.add_parser("check-config", help="validate a config file")
    check.add_argument("file")
    status = commands.add_parser("status", help="print pools, tenants, queues and budgets")
    status.add_argument("--target", default="localhost:50051", help="HOST:PORT of a server")
    status.add_argument("--timeout", type=float, default=5.0, help="seconds")
    args = parser.parse_args(argv)

    if args.command == "check-config":
        try:
            settings = load_config(args.file)
        except ConfigError as error:
            print(error, file=sys.stderr)
            return 1
        print(f"{args.file}: OK ({len(settings.pools)} pools, {len(settings.tenants)} tenants)")
        return 0
    if args.command == "status":
        return _status(args.target, args.timeout)
    return _serve(args.config, args.listen)


def _serve(config: str | None, listen: str | None) -> int:
    from ._server import serve  # imports grpc server machinery only when serving

    try:
        settings: Settings = load_config(config) if config else EMBEDDED_DEFAULT
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(serve(settings, listen))
    return 0


def _status(target: str, timeout: float) -> int:
    with grpc.insecure_channel(target) as channel:
        try:
            status = pb_grpc.AdmissionStub(channel).GetStatus(pb.GetStatusRequest(), timeout=timeout)
        except grpc.RpcError as error:
            print(f"admitd status: {target}: {error.code().name}: {error.details()}",
                  file=sys.stderr)
            return 1
    print(render_status(status))
    return 0


def _limit(status: pb.LimitStatus, field: str, parent: object) -> str:
    if not parent.HasField(field):  # type: ignore[attr-defined]
        return "-"
    return f"{status.value:,.0f}/{status.limit:,.0f}"


def _usd(status: pb.LimitStatus, field: str, parent: object) -> str:
    if not parent.HasField(field):  # type: ignore[attr-defined]
        return "-"
    return f"${status.value:,.2f}/${status.limit:,.2f}"


def render_status(status: pb.StatusResponse) -> str:
    """A readable table. Buckets show tokens left/capacity; the rest used/limit."""
    pools = [("POOL", "IN-FLIGHT", "QUEUED", "CONCURRENCY", "TPM LEFT", "RPM LEFT",
              "TOKENS TODAY", "USD TODAY")]
    for p in status.pools:
        pools.append((p.name, str(p.in_flight), str(p.queued),
                      _limit(p.concurrency, "concurrency", p),
                      _limit(p.tokens_per_minute, "tokens_per_minute", p),
                      _limit(p.requests_per_minute, "requests_per_minute", p),
                      _limit(p.tokens_per_day, "tokens_per_day", p),
                      _usd(p.usd_per_day, "usd_per_day", p)))
    tenants = [("TENANT", "WEIGHT", "IN-FLIGHT", "QUEUED", "CONCURRENCY", "TPM LEFT",
                "RPM LEFT", "TOKENS TODAY", "USD TODAY")]
    for t in status.tenants:
        tenants.append((t.name, f"{t.weight:g}", str(t.in_flight), str(t.queued),
                        _limit(t.concurrency, "concurrency", t),
                        _limit(t.tokens_per_minute, "tokens_per_minute", t),
                        _limit(t.requests_per_minute, "requests_per_minute", t),
                        _limit(t.tokens_per_day, "tokens_per_day", t),
                        _usd(t.usd_per_day, "usd_per_day", t)))
    b = status.budget
    budget = [("BUDGET", "TOKENS TODAY", "USD TODAY"),
              ("global", _limit(b.tokens_per_day, "tokens_per_day", b),
               _usd(b.usd_per_day, "usd_per_day", b))]
    parts = [_table(pools), _table(tenants), _table(budget)]
    if status.draining:
        parts.insert(0, "DRAINING: admitting nothing")
    return "\n\n".join(parts)


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in rows)
