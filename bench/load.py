"""Load generators, each run as its own process: ``python -m bench.load SPEC.json``.

Prints one JSON document (the measurements) on stdout. Every loop is bounded by the spec's
``duration`` (and counts), so a load process always ends by itself. The stubs are the Python
client's copy (``admitd_client._proto``), so a load process never imports the server.

Acquire+Release pairs at full speed come from the Go generator (:mod:`bench.generator`),
which a Python client would limit. Modes:
- ``provider``: callers of the simulated provider (see :mod:`bench.callers`).
- ``gateway``: callers of LiteLLM proxies (see :mod:`bench.gateway_load`).
- ``hold``: park ``count`` Acquires in admitd's queue until ``duration`` ends.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import grpc

from admitd_client._proto import admission_pb2 as pb
from admitd_client._proto import admission_pb2_grpc as pb_grpc


def stubs(targets: list[str], channels: int = 1) -> list[pb_grpc.AdmissionAsyncStub]:
    out: list[pb_grpc.AdmissionAsyncStub] = []
    for target in targets:
        for i in range(channels):
            # A distinct option per channel keeps grpc from sharing one subchannel.
            options = [("grpc.channel_id", i), ("grpc.use_local_subchannel_pool", 1)]
            out.append(pb_grpc.AdmissionStub(grpc.aio.insecure_channel(target, options)))
    return out


def acquire_request(
    tenant: str, pool: str, input_tokens: int, max_output: int, wait: float, priority: int = 0
) -> pb.AcquireRequest:
    request = pb.AcquireRequest(
        tenant=tenant,
        pool=pool,
        input_tokens=input_tokens,
        max_output_tokens=max_output,
        priority=priority,  # type: ignore[arg-type]
    )
    if wait:
        request.wait_timeout.FromNanoseconds(round(wait * 1e9))
    return request


def release_request(lease_id: str, input_tokens: int, output_tokens: int) -> pb.ReleaseRequest:
    request = pb.ReleaseRequest(lease_id=lease_id)
    request.usage.input_tokens, request.usage.output_tokens = input_tokens, output_tokens
    return request


# -- hold ----------------------------------------------------------------------------------


async def hold(spec: dict[str, Any]) -> dict[str, Any]:
    """Park ``count`` waiting Acquires and keep them until ``duration`` ends (or, with
    ``tickets``, Enqueue that many deferred tickets, which wait in the same queue with no
    RPC held, and return). They are sent in batches at ``rate`` per second: a burst of
    thousands at once would measure how admitd copes with the burst, not with the queue."""
    stub_list = stubs(spec["targets"], channels=int(spec.get("channels", 8)))
    count, pool = int(spec["count"]), spec["pool"]
    tenants: list[str] = spec.get("tenants") or ["default"]
    end = time.monotonic() + float(spec["duration"])
    outcome: dict[str, int] = {}

    tickets = bool(spec.get("tickets"))  # Enqueue (no RPC held) instead of Acquire

    async def one(i: int) -> None:
        left = end - time.monotonic()
        request = acquire_request(tenants[i % len(tenants)], pool, 10, 10, left)
        stub = stub_list[i % len(stub_list)]
        try:
            if tickets:
                ticket = await stub.Enqueue(pb.EnqueueRequest(acquire=request), timeout=30)
                name = pb.TicketState.Name(ticket.state)
            else:
                await stub.Acquire(request, timeout=left + 2)
                name = "granted"
        except grpc.aio.AioRpcError as error:
            name = error.code().name
        outcome[name] = outcome.get(name, 0) + 1

    tasks = []
    batch = int(spec.get("batch", 100))
    pause = batch / float(spec.get("rate", 1000))
    for start in range(0, count, batch):
        if time.monotonic() >= end:
            break
        tasks += [asyncio.ensure_future(one(i)) for i in range(start, min(count, start + batch))]
        await asyncio.sleep(pause)
    await asyncio.gather(*tasks)
    return {"started": len(tasks), "outcome": outcome}


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    if spec["mode"] == "provider":
        from bench.callers import provider_load

        result = asyncio.run(provider_load(spec))
    elif spec["mode"] == "gateway":
        from bench.gateway_load import gateway_load

        result = asyncio.run(gateway_load(spec))
    else:
        result = asyncio.run(hold(spec))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
