"""The server around the engine: health checking, reflection, graceful drain."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from admitd._api import server  # noqa: F401 (loads every service's descriptor)
from admitd._api.registry import HOT
from support.harness import MakeHarness
from support.health import health
from support.polling import until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_health_is_serving_for_the_server_and_the_admission_service(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness()
    assert await health(h.channel) == SERVING
    assert await health(h.channel, "admitd.v1.Admission") == SERVING


async def test_reflection_lists_the_services(make_harness: MakeHarness) -> None:
    h = await make_harness()
    # types-grpcio-reflection types the stub for blocking channels only.
    stub: Any = reflection_pb2_grpc.ServerReflectionStub(h.channel)  # type: ignore[arg-type]
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    names = set()
    async for response in stub.ServerReflectionInfo(iter([request]), timeout=5):
        names |= {s.name for s in response.list_services_response.service}
    assert {"admitd.v1.Admission", "grpc.health.v1.Health"} <= names


def test_the_methods_registered_with_grpc_core_exist() -> None:
    """``HOT`` names methods by their path: a misspelt one would register nothing."""
    for path in HOT:
        service, method = path[1:].rsplit("/", 1)
        assert method in descriptor_pool.Default().FindServiceByName(service).methods_by_name


async def test_drain_tells_waiters_and_new_callers_unavailable_and_lets_releases_finish(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness({"pools": [{"name": "p", "max_concurrency": 1}]})
    holder = await h.acquire(input_tokens=1)
    waiting = h.acquire_later(input_tokens=1, wait_timeout=60)
    await h.until_queued("p", 1)

    await h.server.drain()
    failure = await h.fail(waiting)
    assert failure.code == grpc.StatusCode.UNAVAILABLE
    assert "draining" in failure.message
    assert await health(h.channel) == NOT_SERVING
    failure = await h.fail(h.acquire(input_tokens=1))
    assert failure.code == grpc.StatusCode.UNAVAILABLE
    assert (await h.status()).draining

    async def left_the_queue() -> bool:  # after its answer, not before it (Waits.for_grant)
        return (await h.status()).pools[0].queued == 0

    await until(left_the_queue, 10.0, "the drained waiter out of the queue")
    # In-flight work may still settle while the server drains.
    assert not (await h.release(holder.lease_id)).already_released


async def test_stop_lets_an_in_flight_rpc_finish(make_harness: MakeHarness) -> None:
    h = await make_harness({"pools": [{"name": "p", "max_concurrency": 1}]})
    await h.acquire(input_tokens=1)
    waiting = h.acquire_later(input_tokens=1, wait_timeout=60)
    await h.until_queued("p", 1)
    await h.server.stop(grace=5)
    # The waiter's RPC was answered (UNAVAILABLE: go elsewhere), not cut off.
    failure = await h.fail(waiting)
    assert failure.code == grpc.StatusCode.UNAVAILABLE
    assert "draining" in failure.message


async def test_an_unexpected_error_is_internal_and_tells_nothing_of_its_insides(
    make_harness: MakeHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug must not leak its message to callers (grpc would answer UNKNOWN with the
    exception's text); it is INTERNAL with an incident id the log shares."""
    h = await make_harness()

    async def broken() -> None:
        raise RuntimeError("secret internals: redis://user:pw@host")

    h.engine.snapshot = broken  # the one way to reach a bug on purpose
    failure = await h.fail(h.status())
    assert failure.code is grpc.StatusCode.INTERNAL
    assert "secret" not in failure.message
    incident = failure.message.split()[2].rstrip(";")
    assert any(incident in r.getMessage() and r.exc_info for r in caplog.records)
