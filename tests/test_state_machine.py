"""Invariants of admission, checked step by step by a hypothesis state machine against the
reference model in ``support.model``, on both backends.

Rules: acquire (fail-fast and queued), release (with random usage, above the reservation
too, and of leases that already ended), renew, advance the clock (leases expire and are
reaped, waiters time out or are granted by refills and expiries), cancel a waiter.

At every step:

- in-flight calls never exceed a concurrency limit;
- tokens and requests reserved from a bucket within any window, net of refunds, never exceed
  its capacity plus its refill over the window; a daily quota is exceeded only by usage
  above a reservation (honest overuse);
- every lease ends exactly once: a second release says ``already_released``, a release or
  renew of an expired lease is NOT_FOUND with reason LEASE_EXPIRED for one TTL (the first
  release settles it: the daily quotas move to its usage, the buckets only by overuse),
  then NOT_FOUND alone;
- a refund never exceeds the reservation, and is exactly reservation - usage;
- the server agrees with the model: the same admit / queue / reject decision with the same
  reason, the same waiters granted by each dispatch, and the same levels, in-flight and
  queue counts afterwards.

The engine and backend are driven in-process (``EngineDriver``: Engine + MemoryBackend or
RedisBackend on a ManualClock, a fresh store per run), and once more through gRPC
(``GrpcDriver``: a real server on a socket): ``support.state_machine``. Settings and seeds:
``support.fuzzing``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from support.fuzzing import fuzz_settings, run_machine
from support.parts import BACKENDS
from support.redis_server import RedisServer
from support.state_machine.drivers import EngineDriver, GrpcDriver
from support.state_machine.machine import AdmissionMachine


def backend(kind: str, request: pytest.FixtureRequest) -> Callable[[], dict[str, Any]]:
    """A fresh store per run: memory, or a new key prefix in the shared Redis."""
    if kind == "memory":
        return lambda: {"kind": "memory"}
    server: RedisServer = request.getfixturevalue("shared_redis")
    # A generous store timeout: a slow reply on a loaded machine is not what this tests.
    prefix = "sm-{}"
    return lambda: {
        "kind": "redis",
        "url": server.url,
        "key_prefix": prefix.format(uuid.uuid4().hex),
        "timeout": 5,
    }


def machine(
    driver: type[EngineDriver | GrpcDriver], store: Callable[[], dict[str, Any]]
) -> type[AdmissionMachine]:
    class Machine(AdmissionMachine):
        make_driver = staticmethod(lambda: driver(store()))

    Machine.__name__ = f"{driver.__name__}Machine"
    return Machine


@pytest.mark.slow
@pytest.mark.parametrize("kind", BACKENDS)
def test_engine_and_backend_agree_with_the_model(kind: str, request: pytest.FixtureRequest) -> None:
    settings = fuzz_settings(max_examples=60 if kind == "memory" else 40, step_count=50)
    cls = machine(EngineDriver, backend(kind, request))
    run_machine(cls, settings)


@pytest.mark.slow
@pytest.mark.parametrize("kind", BACKENDS)
def test_grpc_server_agrees_with_the_model(kind: str, request: pytest.FixtureRequest) -> None:
    settings = fuzz_settings(max_examples=10, step_count=30)
    cls = machine(GrpcDriver, backend(kind, request))
    run_machine(cls, settings)
