"""The Prometheus endpoint, scraped over HTTP like Prometheus would."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from prometheus_client import generate_latest

from admitd import Unavailable, parse_config
from admitd._backends.redis.backend import RedisBackend
from admitd._store import Store
from admitd._telemetry import Telemetry
from support.harness import DEFAULT_CONFIG, MakeHarness
from support.metrics import scrape, value
from support.polling import until
from support.redis_server import free_port


async def test_decisions_tokens_and_gauges_are_exported(make_harness: MakeHarness) -> None:
    h = await make_harness(
        {
            "observability": {"metrics_listen": "127.0.0.1:0"},
            "pools": [{"name": "p", "max_concurrency": 1, "tokens_per_minute": 6000}],
            "budget": {"tokens_per_day": 100_000},
        }
    )
    lease = await h.acquire(input_tokens=300, max_output_tokens=200)
    await h.fail(h.acquire(input_tokens=1))
    await h.release(lease.lease_id, (300, 50))
    await h.status()  # refreshes the gauges' snapshot
    text = await scrape(h)
    admitted = {"pool": "p", "tenant": "a", "priority": "normal", "decision": "admitted"}
    assert value(text, "admitd_decisions_total", **admitted) == 1
    assert (
        value(text, "admitd_decisions_total", decision="rejected", reason="CONCURRENCY_LIMIT") == 1
    )
    assert value(text, "admitd_tokens_reserved_total", pool="p", tenant="a") == 500
    assert value(text, "admitd_tokens_charged_total", pool="p", tenant="a") == 350
    assert value(text, "admitd_tokens_refunded_total", pool="p", tenant="a") == 150
    assert value(text, "admitd_queue_wait_seconds_count", pool="p", priority="normal") == 1
    # Not queued: 0 s, which the first bucket holds (a value on a bound counts in it).
    waited = {"pool": "p", "priority": "normal"}
    assert value(text, "admitd_queue_wait_seconds_bucket", **waited, le="0.0") == 1
    assert value(text, "admitd_pool_limit", pool="p", limit="max_concurrency") == 1
    assert value(text, "admitd_pool_limit", pool="p", limit="tokens_per_minute") == 6000
    assert value(text, "admitd_leases_in_flight", pool="p") == 0
    assert value(text, "admitd_budget_remaining", scope="global", unit="tokens") == 100_000 - 350


async def test_tenant_labels_are_capped(make_harness: MakeHarness) -> None:
    h = await make_harness(
        {"observability": {"metrics_listen": "127.0.0.1:0", "max_tenant_labels": 2}}
    )
    for tenant in ("a", "b", "c", "c"):
        await h.acquire(tenant=tenant, input_tokens=1)
    text = await scrape(h)
    assert value(text, "admitd_decisions_total", tenant="a") == 1
    assert value(text, "admitd_decisions_total", tenant="b") == 1
    assert value(text, "admitd_decisions_total", tenant="_other") == 2
    assert 'tenant="c"' not in text


async def test_lease_expiries_are_counted(make_harness: MakeHarness) -> None:
    h = await make_harness(
        {"observability": {"metrics_listen": "127.0.0.1:0"}, "lease": {"ttl": "5s"}}
    )
    await h.acquire(input_tokens=1)
    await h.advance(5)
    assert value(await scrape(h), "admitd_lease_expiries_total", pool="p") == 1


async def test_store_errors_are_counted_the_grant_listeners_too() -> None:
    """Nothing listens on the port: the grant listener's failed subscription is counted
    (it retries only after its poll interval, an hour here), then a call's."""
    telemetry = Telemetry(parse_config(DEFAULT_CONFIG, "<test>"))
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}", socket_timeout=1)
    backend = RedisBackend(client, key_prefix="t", aging=1.0, poll_interval=3600.0)
    store = Store(backend, telemetry, lambda progress: None)

    def errors() -> float:
        text = generate_latest(telemetry.registry).decode()
        return value(text, "admitd_store_errors_total") if "errors_total{" in text else 0.0

    async def counted() -> bool:
        return errors() == 1

    try:
        store.subscribe(lambda: (), lambda lease: None, lambda end: None)
        await until(counted, 10, "the listener's error counted")
        with pytest.raises(Unavailable, match=r"^state store unreachable: "):
            await store.call(backend.ping)
        assert errors() == 2
    finally:
        await backend.close()


async def test_overuse_is_recorded_as_an_under_estimate(make_harness: MakeHarness) -> None:
    """Histograms take no negative values: usage above the reservation is recorded by its
    size with direction "under" instead of being dropped."""
    h = await make_harness({"observability": {"metrics_listen": "127.0.0.1:0"}})
    for used in ((60, 0), (90, 0), (100, 25)):  # 40 and 10 reserved too many, 25 too few
        lease = await h.acquire(input_tokens=100)
        await h.release(lease.lease_id, used)
    text = await scrape(h)
    over = {"pool": "p", "direction": "over"}
    assert value(text, "admitd_estimate_error_tokens_sum", **over) == 50
    assert value(text, "admitd_estimate_error_tokens_sum", pool="p", direction="under") == 25
    # Buckets count cumulatively, a value on a bound in that bucket.
    assert value(text, "admitd_estimate_error_tokens_bucket", **over, le="0") == 0
    assert value(text, "admitd_estimate_error_tokens_bucket", **over, le="10") == 1
    assert value(text, "admitd_estimate_error_tokens_bucket", **over, le="100") == 2
    assert value(text, "admitd_estimate_error_tokens_bucket", **over, le="+Inf") == 2
    assert value(text, "admitd_estimate_error_tokens_count", **over) == 2


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace collector on a real socket: keeps every span it is sent.

    A thread-pool server, not grpc.aio: admitd flushes its spans at shutdown from the event
    loop's thread, and a collector on that loop could not answer until it returned."""

    def __init__(self) -> None:
        self.spans: list[Any] = []

    def Export(  # noqa: N802 (the OTLP service's method name)
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                self.spans.extend(scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def _attributes(span: Any) -> dict[str, str]:
    return {a.key: a.value.string_value for a in span.attributes}


async def test_acquire_and_release_are_traced_to_the_otlp_endpoint(
    make_harness: MakeHarness,
) -> None:
    collector = _Collector()
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    # opentelemetry-proto's generated gRPC module has no type annotations.
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        h = await make_harness(
            {
                "observability": {"otlp_endpoint": f"http://127.0.0.1:{port}"},
                "pools": [{"name": "p", "max_concurrency": 1}],
            }
        )
        lease = await h.acquire(tenant="b", input_tokens=10)
        await h.fail(h.acquire(tenant="b", input_tokens=10))
        await h.release(lease.lease_id, (10, 0))
        await h.close()  # shutting down flushes the batch of spans
    finally:
        server.stop(grace=None)
    by_name: dict[str, list[dict[str, str]]] = {}
    for span in collector.spans:
        by_name.setdefault(span.name, []).append(_attributes(span))
    acquired, refused = by_name["admitd.Acquire"]
    assert acquired == {"admitd.tenant": "b", "admitd.pool": "p", "admitd.lease_id": lease.lease_id}
    assert refused == {
        "admitd.tenant": "b",
        "admitd.pool": "p",
        "admitd.rejected": "CONCURRENCY_LIMIT",
    }
    assert by_name["admitd.Release"] == [{"admitd.lease_id": lease.lease_id}]
