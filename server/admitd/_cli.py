"""``admitd`` command line: serve, check-config, status, usage, health, hash-key.

``status``, ``usage`` and ``health`` reach a TLS server with ``--ca-file`` (and ``--cert-file`` /
``--key-file`` for mutual TLS) and send the API key in ``ADMITD_API_KEY``, if set.

Exit codes: 0 success, 1 a bad config file, a port that cannot be bound or a server that
cannot be reached, 2 a usage error (argparse).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
from collections.abc import Callable, Coroutine, Sequence
from functools import partial
from typing import Any

import grpc
from google.protobuf.message import Message

from ._api.auth import hash_key
from ._collector import Collector
from ._config import EMBEDDED_DEFAULT, ConfigError, Settings, load_config, validate_listen
from ._logging import configure_logging
from .v1 import admission_pb2 as pb
from .v1 import admission_pb2_grpc as pb_grpc


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``admitd`` command line and return its exit code."""
    parser = argparse.ArgumentParser(prog="admitd", description="Admission control for LLM calls.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gRPC server")
    serve.add_argument("--config", help="YAML config (default: embedded memory setup)")
    serve.add_argument(
        "--listen", type=_listen_arg, help="HOST:PORT, overrides the config's listen"
    )
    check = commands.add_parser("check-config", help="validate a config file")
    check.add_argument("file")
    status = commands.add_parser("status", help="print pools, tenants, queues and budgets")
    usage = commands.add_parser(
        "usage", help="print tokens and USD charged per day, tenant and pool (the cost ledger)"
    )
    usage.add_argument("--from", dest="first", default="", help="first UTC day (default today)")
    usage.add_argument("--to", dest="last", default="", help="last UTC day (default --from)")
    usage.add_argument("--tenant", default="", help="only this tenant")
    usage.add_argument("--pool", default="", help="only this pool")
    health = commands.add_parser(
        "health", help="exit 0 if a server reports SERVING (for container health checks)"
    )
    for command, timeout in ((status, 5.0), (usage, 10.0), (health, 2.0)):
        command.add_argument("--target", default="localhost:50051", help="HOST:PORT of a server")
        command.add_argument(
            "--timeout", type=float, default=timeout, help=f"seconds (default {timeout:g})"
        )
        command.add_argument("--ca-file", help="PEM CA of a TLS server (default: plaintext)")
        command.add_argument("--cert-file", help="PEM client certificate, for mutual TLS")
        command.add_argument("--key-file", help="PEM client key, for mutual TLS")
    hash_key = commands.add_parser(
        "hash-key", help="print the api_key_sha256 of a key read from standard input"
    )
    hash_key.add_argument(
        "--new", action="store_true", help="make a new random key; print it, then its hash"
    )
    args = parser.parse_args(argv)

    if args.command == "check-config":
        return _check_config(args.file)
    if args.command == "hash-key":
        return _hash_key(args.new)
    if args.command in ("health", "status", "usage"):
        try:
            channel = _channel(args.target, args.ca_file, args.cert_file, args.key_file)
        except OSError as error:
            print(f"admitd {args.command}: {error}", file=sys.stderr)
            return 2
        with channel:
            if args.command == "health":
                return _health(channel, args.target, args.timeout)
            stub = pb_grpc.AdmissionStub(channel)
            if args.command == "usage":
                request = pb.GetUsageRequest(
                    from_day=args.first, to_day=args.last, tenant=args.tenant, pool=args.pool
                )
                by_day = partial(stub.GetUsage, request)
                return _show(by_day, args.target, args.timeout, "usage", render_usage)
            now = partial(stub.GetStatus, pb.GetStatusRequest())
            return _show(now, args.target, args.timeout, "status", render_status)
    return _serve(args.config, args.listen)


def _channel(
    target: str, ca_file: str | None, cert_file: str | None, key_file: str | None
) -> grpc.Channel:
    if ca_file is None and cert_file is None:
        return grpc.insecure_channel(target)
    if (cert_file is None) != (key_file is None):
        raise OSError("--cert-file and --key-file go together")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(ca_file),
        private_key=_read(key_file),
        certificate_chain=_read(cert_file),
    )
    return grpc.secure_channel(target, credentials)


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as handle:
        return handle.read()


def _metadata() -> tuple[tuple[str, str | bytes], ...]:
    key = os.environ.get("ADMITD_API_KEY")
    return (("authorization", f"Bearer {key}"),) if key else ()


def _hash_key(new: bool) -> int:
    if new:
        key = "admitd-" + secrets.token_urlsafe(32)
        print(key)
    else:
        key = sys.stdin.readline().strip()
        if not key:
            print("admitd hash-key: no key on standard input", file=sys.stderr)
            return 1
    print(hash_key(key))
    return 0


def _listen_arg(value: str) -> str:
    try:
        return validate_listen(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _check_config(path: str) -> int:
    try:
        settings = load_config(path)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 1
    pools, tenants = len(settings.pools), len(settings.tenants)
    print(f"{path}: OK ({_count(pools, 'pool')}, {_count(tenants, 'tenant')})")
    return 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _serve(config: str | None, listen: str | None) -> int:
    from ._api.server import serve  # imports grpc server machinery only when serving

    try:
        settings: Settings = load_config(config) if config else EMBEDDED_DEFAULT
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 1
    configure_logging(settings.observability.log_format)
    try:
        with asyncio.Runner(loop_factory=_loop_factory(settings.event_loop)) as runner:
            runner.run(_collected(serve(settings, listen, config)))
    except OSError as error:
        print(f"admitd serve: {error}", file=sys.stderr)
        return 1
    return 0


async def _collected(serving: Coroutine[Any, Any, None]) -> None:
    """Serve with the garbage collector kept from stalling the event loop (``_collector``)."""
    collector = Collector()
    collector.start()
    try:
        await serving
    finally:
        await collector.stop()


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The configured event loop (``event_loop``); None: the standard library's."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


def _health(channel: grpc.Channel, target: str, timeout: float) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(  # type: ignore[attr-defined]  # the stubs omit its methods
            health_pb2.HealthCheckRequest(), timeout=timeout
        )
    except grpc.RpcError as error:
        print(f"admitd health: {target}: {error.code().name}", file=sys.stderr)
        return 1
    state = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(f"{target}: {state}")
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


def _show(
    call: Callable[..., Any],
    target: str,
    timeout: float,
    what: str,
    render: Callable[[Any], str],
) -> int:
    """Make one RPC and print its rendered reply, or say why it failed (exit 1)."""
    try:
        reply = call(timeout=timeout, metadata=_metadata())
    except grpc.RpcError as error:
        # The sync stub's RpcError is also a grpc.Call carrying code and details.
        code = error.code().name if isinstance(error, grpc.Call) else "ERROR"
        details = error.details() if isinstance(error, grpc.Call) else str(error)
        print(f"admitd {what}: cannot get {what} from {target}: {code}: {details}", file=sys.stderr)
        return 1
    print(render(reply))
    return 0


_USAGE_COLUMNS = {
    "CALLS": "calls",
    "INPUT": "input_tokens",
    "CACHE READ": "cached_input_tokens",  # parts of INPUT
    "CACHE WRITE": "cache_write_input_tokens",
    "OUTPUT": "output_tokens",
}


def render_usage(usage: pb.GetUsageResponse) -> str:
    """The cost ledger as a table, with totals."""
    rows: list[tuple[str, ...]] = [("DAY", "TENANT", "POOL", *_USAGE_COLUMNS, "USD")]
    for r in usage.rows:
        numbers = [getattr(r, f) for f in _USAGE_COLUMNS.values()]
        rows.append((r.day, r.tenant, r.pool, *(f"{n:,}" for n in numbers), f"${r.usd:,.4f}"))
    totals = [sum(getattr(r, f) for r in usage.rows) for f in _USAGE_COLUMNS.values()]
    usd = sum(r.usd for r in usage.rows)
    rows.append(("total", "", "", *(f"{n:,}" for n in totals), f"${usd:,.4f}"))
    return _table(rows, left=3)


_LIMITS = (
    "concurrency",
    "tokens_per_minute",
    "requests_per_minute",
    "tokens_per_day",
    "usd_per_day",
)
_LIMIT_HEADINGS = ("CONCURRENCY", "TPM LEFT", "RPM LEFT", "TOKENS TODAY", "USD TODAY")


def render_status(status: pb.StatusResponse) -> str:
    """Render a status as aligned tables: pools, tenants, then the global budget.

    Rate buckets (TPM, RPM) show tokens left/capacity; concurrency and daily quotas show
    used/limit; ``-`` means no limit. A pool's STATE is ``ok``, or why it admits less or
    nothing: paused by its provider, its circuit open or half-open, its adaptive limits
    scaled down.
    """
    pools: list[tuple[str, ...]] = [("POOL", "STATE", "IN-FLIGHT", "QUEUED", *_LIMIT_HEADINGS)]
    for p in status.pools:
        limits = (_limit(p, f) for f in _LIMITS)
        pools.append((p.name, _pool_state(p), str(p.in_flight), str(p.queued), *limits))
    tenants: list[tuple[str, ...]] = [("TENANT", "WEIGHT", "IN-FLIGHT", "QUEUED", *_LIMIT_HEADINGS)]
    for t in status.tenants:
        limits = (_limit(t, f) for f in _LIMITS)
        tenants.append((t.name, f"{t.weight:g}", str(t.in_flight), str(t.queued), *limits))
    budget: list[tuple[str, ...]] = [
        ("BUDGET", "TOKENS TODAY", "USD TODAY"),
        ("global", _limit(status.budget, "tokens_per_day"), _limit(status.budget, "usd_per_day")),
    ]
    parts = [_table(pools, left=2), _table(tenants), _table(budget)]
    if status.draining:
        parts.insert(0, "DRAINING: admitting nothing")
    return "\n\n".join(parts)


def _pool_state(pool: pb.PoolStatus) -> str:
    paused = pool.paused_for.ToTimedelta().total_seconds()
    states = [f"paused:{paused:.0f}s"] if paused > 0 else []
    if pool.circuit in ("open", "half_open"):
        states.append(pool.circuit.replace("_", "-"))
    if 0 < pool.limit_factor < 1:
        states.append(f"limits:{pool.limit_factor:.2f}x")
    return ",".join(states) or "ok"


def _limit(parent: Message, field: str) -> str:
    """``value/limit`` of the ``LimitStatus`` in ``parent.<field>``; ``-`` when it is unset."""
    if not parent.HasField(field):
        return "-"
    limit: pb.LimitStatus = getattr(parent, field)
    if field.startswith("usd"):
        return f"${limit.value:,.2f}/${limit.limit:,.2f}"
    return f"{limit.value:,.0f}/{limit.limit:,.0f}"


def _table(rows: list[tuple[str, ...]], left: int = 1) -> str:
    """The first ``left`` columns (names) left-aligned, numbers right-aligned, two spaces
    between columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            cell.ljust(width) if i < left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    )
