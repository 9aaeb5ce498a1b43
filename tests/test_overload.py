"""A replica past its capacity refuses new work explicitly (SERVER_OVERLOADED with a
RetryInfo, nothing reserved) and keeps serving Release; gRPC core never sheds calls.

The gate's measure (the wait a probe call has before the replica looks at it) is injected
here as explicit times: nothing in these tests depends on how fast the machine is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from admitd import AdmitdServer, ManualClock, parse_config
from admitd._api.server import MAX_PENDING, SERVER_OPTIONS
from admitd._config import Settings
from admitd._errors import Reason, Rejected
from admitd._overload import Gate
from admitd._refusals import MIN_OVERLOAD_RETRY
from admitd.v1 import admission_pb2 as pb
from support.certs import CertificateAuthority
from support.harness import DEFAULT_CONFIG, Harness, MakeHarness
from support.metrics import scrape, value
from support.polling import until

GATED = {"overload": {"max_queue_delay": 0.2}}


def gate_for(settings: Settings, refused: list[str] | None = None) -> Gate:
    counted = refused if refused is not None else []
    return Gate(lambda: settings, counted.append, lambda _: None)


def test_the_gate_refuses_while_the_measured_wait_is_past_the_limit() -> None:
    gate = gate_for(parse_config(GATED, "<test>"))
    gate.check(100.0, None)  # nothing measured yet: open
    gate.probe_sent(100.0)
    gate.probe_answered(100.35)
    assert gate.queue_delay(101.0) == pytest.approx(0.35)
    with pytest.raises(Rejected) as refused:
        gate.check(101.0, 5.0)
    assert refused.value.reason is Reason.SERVER_OVERLOADED
    assert refused.value.retry_after == pytest.approx(0.35)  # wait what it measured
    assert refused.value.metadata == {"cause": "queue_delay", "delay_seconds": "0.350"}
    assert "nothing was reserved" in refused.value.message
    gate.probe_sent(101.0)
    gate.probe_answered(101.01)
    gate.check(101.1, 5.0)  # back under the limit: open again
    assert gate.probes == 2


def test_an_outstanding_probe_counts_with_what_it_has_waited_so_far() -> None:
    gate = gate_for(parse_config(GATED, "<test>"))
    gate.probe_sent(100.0)
    gate.check(100.1, None)
    with pytest.raises(Rejected):  # not answered yet, but already 0.3 s
        gate.check(100.3, None)


def test_a_call_whose_deadline_passed_while_it_waited_is_refused_without_work() -> None:
    refused: list[str] = []
    gate = gate_for(parse_config(GATED, "<test>"), refused)
    with pytest.raises(Rejected) as refusal:
        gate.check(100.0, 0.0)
    assert refusal.value.metadata["cause"] == "deadline"
    assert refusal.value.retry_after == MIN_OVERLOAD_RETRY
    assert refused == ["deadline"]


def test_without_a_limit_nothing_is_refused_for_load() -> None:
    gate = gate_for(parse_config({"overload": {"max_queue_delay": None}}, "<test>"))
    gate.probe_sent(100.0)
    gate.check(1000.0, None)


def test_grpc_core_never_sheds_calls_it_holds_for_the_event_loop() -> None:
    # Past grpc.server.max_pending_requests (default 1,000) gRPC core drops new calls as
    # CANCELLED; admitd refuses for itself, so the limits are out of reach.
    options = dict(SERVER_OPTIONS)
    assert options["grpc.server.max_pending_requests"] == MAX_PENDING
    assert options["grpc.server.max_pending_requests_hard_limit"] == MAX_PENDING
    assert MAX_PENDING >= 1 << 30


async def overloaded(h: Harness) -> Gate:
    """Make ``h`` measure a 0.5 s wait (its limit is 0.2 s); its own probe stops."""
    await h.server.probe.stop()
    gate: Gate = h.server.gate
    gate.probe_sent(0.0)
    gate.probe_answered(0.5)
    return gate


async def test_an_overloaded_replica_refuses_new_work_reserves_nothing_and_still_releases(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness(
        {
            **GATED,
            "pools": [{"name": "p", "max_concurrency": 5}],
            "observability": {"metrics_listen": "127.0.0.1:0"},
        }
    )
    held = await h.acquire(input_tokens=10)
    gate = await overloaded(h)
    enqueue = pb.EnqueueRequest(acquire=pb.AcquireRequest(pool="p", input_tokens=10))
    for call in (
        h.acquire(input_tokens=10),
        h.acquire(input_tokens=10, wait_timeout=5.0),
        h.stub.Enqueue(enqueue, timeout=5),
    ):
        failure = await h.fail(call)
        assert failure.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert failure.reason == "SERVER_OVERLOADED"
        assert failure.retry_after == pytest.approx(0.5)
        assert failure.metadata["cause"] == "queue_delay"
    pool = await h.pool("p")
    assert (pool.in_flight, pool.queued) == (1, 0)  # nothing reserved or queued
    released = await h.release(held.lease_id, usage=(5, 0))  # settling is never refused
    assert released.charged_tokens == 5
    text = await scrape(h)
    assert value(text, "admitd_overload_refusals_total", cause="queue_delay") == 3
    assert value(text, "admitd_queue_delay_seconds") == 0.5
    gate.probe_sent(1.0)
    gate.probe_answered(1.01)
    lease = await h.acquire(input_tokens=10)  # back under the limit
    await h.release(lease.lease_id)


async def test_the_probe_is_answered_at_once_and_reserves_nothing(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness({**GATED, "pools": [{"name": "p", "max_concurrency": 1}]})
    probe = pb.AcquireRequest(pool=h.server.gate.probe_pool)
    assert await h.stub.Acquire(probe, timeout=10) == pb.Lease()
    pool = await h.pool("p")
    assert (pool.in_flight, pool.queued) == (0, 0)

    async def probed() -> bool:
        return bool(h.server.gate.probes > 0)

    await until(probed, 10.0, "the server's own probe answered")


async def test_the_probe_reaches_a_tls_server_through_a_local_port(tmp_path: Path) -> None:
    ca = CertificateAuthority()
    cert, key = ca.issue("admitd", server=True).write(tmp_path, "server")
    config: dict[str, Any] = {
        **DEFAULT_CONFIG,
        **GATED,
        "tls": {"cert_file": str(cert), "key_file": str(key)},
    }
    server = AdmitdServer(parse_config(config, "<test>"), clock=ManualClock())
    await server.start("127.0.0.1:0")
    try:

        async def probed() -> bool:
            return server.gate.probes > 0

        await until(probed, 10.0, "the probe answered over the local port")
    finally:
        await server.stop(grace=0)
