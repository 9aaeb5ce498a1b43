"""Live configuration: changes apply without a restart and without losing leases or waiters."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from admitd import Unavailable, parse_config
from admitd._api.watch import ConfigWatcher
from admitd.v1 import admission_pb2 as pb
from support.harness import DEFAULT_CONFIG, Harness, MakeHarness, Replicas, start_harness
from support.redis_server import RedisServer


def settings_for(h: Harness, **changes: Any) -> Any:
    """The harness's config with ``changes`` (same backend, so the store is shared)."""
    current = h.engine.settings.model_dump(mode="json")
    return parse_config({**current, **changes})


async def test_raising_a_limit_admits_queued_waiters_at_once(make_harness: MakeHarness) -> None:
    h = await make_harness({"pools": [{"name": "p", "max_concurrency": 1}]})
    await h.acquire(input_tokens=1)
    waiting = h.acquire_later(input_tokens=1, wait_timeout=60)
    await h.until_queued("p", 1)
    await h.engine.apply(settings_for(h, pools=[{"name": "p", "max_concurrency": 2}]))
    lease = await waiting
    assert lease.reserved_tokens == 1
    assert (await h.pool("p")).concurrency.limit == 2


async def test_lowering_a_limit_revokes_nothing_and_applies_to_queued_calls(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness({"pools": [{"name": "p", "max_concurrency": 3}]})
    leases = [await h.acquire(input_tokens=1) for _ in range(2)]
    blocker = await h.acquire(input_tokens=1)  # 3 of 3: the waiter queues
    waiting = h.acquire_later(input_tokens=1, wait_timeout=60)
    await h.until_queued("p", 1)
    await h.engine.apply(settings_for(h, pools=[{"name": "p", "max_concurrency": 1}]))
    assert (await h.pool("p")).in_flight == 3  # nothing revoked
    await h.release(blocker.lease_id)
    # 2 in flight against a limit of 1 now: the waiter queued under the old limit must wait.
    assert not waiting.done()
    assert (await h.fail(h.acquire(input_tokens=1))).reason == "CONCURRENCY_LIMIT"
    for lease in leases:
        await h.release(lease.lease_id)
    assert (await waiting).reserved_tokens == 1


async def test_restart_only_settings_keep_their_values(make_harness: MakeHarness) -> None:
    h = await make_harness()
    changed = await h.engine.apply(settings_for(h, listen="127.0.0.1:1", queue={"aging": "1s"}))
    assert changed == ["listen", "queue.aging"]
    assert h.engine.settings.listen == DEFAULT_CONFIG.get("listen", "0.0.0.0:50051")
    assert h.engine.settings.queue.aging == 10


async def test_new_pools_and_tenants_appear(make_harness: MakeHarness) -> None:
    h = await make_harness()
    await h.engine.apply(
        settings_for(
            h,
            pools=[{"name": "p"}, {"name": "q", "encoding": "cl100k_base"}],
            tenants=[{"name": "a"}, {"name": "z"}],
        )
    )
    lease = await h.acquire(tenant="z", pool="q", prompt="hello world")
    assert lease.input_tokens == 2


def write(path: Path, config: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(config))


async def test_the_watched_file_applies_valid_changes_and_refuses_invalid_ones(
    make_harness: MakeHarness, tmp_path: Path
) -> None:
    h = await make_harness({"pools": [{"name": "p", "max_concurrency": 1}]})
    config = h.engine.settings.model_dump(mode="json")
    path = tmp_path / "admitd.yaml"
    write(path, config)
    watcher = ConfigWatcher(path, h.engine)
    assert await watcher.check() == "unchanged"

    write(path, {**config, "pools": [{"name": "p", "max_concurrency": -5}]})
    assert await watcher.check() == "invalid"
    assert await watcher.check() == "unchanged"  # reported once
    assert (await h.pool("p")).concurrency.limit == 1  # the last good config stays

    write(path, {**config, "pools": [{"name": "p", "max_concurrency": 4}]})
    assert await watcher.check() == "applied"
    assert (await h.pool("p")).concurrency.limit == 4


async def test_a_configmap_symlink_swap_is_seen(make_harness: MakeHarness, tmp_path: Path) -> None:
    """Kubernetes mounts admitd.yaml -> ..data/admitd.yaml, ..data -> ..<timestamp>/, and
    updates by pointing ..data at a new folder (the file itself is never written)."""
    h = await make_harness({"pools": [{"name": "p", "max_concurrency": 1}]})
    config = h.engine.settings.model_dump(mode="json")
    for version, limit in (("..v1", 1), ("..v2", 7)):
        (tmp_path / version).mkdir()
        write(
            tmp_path / version / "admitd.yaml",
            {**config, "pools": [{"name": "p", "max_concurrency": limit}]},
        )
    (tmp_path / "..data").symlink_to("..v1")
    (tmp_path / "admitd.yaml").symlink_to("..data/admitd.yaml")
    watcher = ConfigWatcher(tmp_path / "admitd.yaml", h.engine)
    (tmp_path / "..data_tmp").symlink_to("..v2")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")  # atomic, as the kubelet does
    assert await watcher.check() == "applied"
    assert (await h.pool("p")).concurrency.limit == 7


# -- with several replicas sharing Redis ----------------------------------------------------


async def test_a_change_applied_by_one_replica_binds_the_others(replicas: Replicas) -> None:
    """Capacities are read from the store, so a replica that has not seen the new file yet
    already admits by the new limits (the files of all replicas are the same ConfigMap)."""
    a, b = await replicas(2, {"pools": [{"name": "p", "max_concurrency": 1}]})
    await a.acquire(input_tokens=1)
    await a.engine.apply(settings_for(a, pools=[{"name": "p", "max_concurrency": 2}]))
    assert (await b.acquire(input_tokens=1)).reserved_tokens == 1  # through b's old config
    assert (await b.fail(b.acquire(input_tokens=1))).reason == "CONCURRENCY_LIMIT"


async def test_a_change_the_store_could_not_take_is_applied_once_it_answers(
    replicas: Replicas, redis_server: RedisServer, tmp_path: Path
) -> None:
    (h,) = await replicas(1, {"pools": [{"name": "p", "max_concurrency": 1}]})
    config = h.engine.settings.model_dump(mode="json")
    path = tmp_path / "admitd.yaml"
    write(path, config)
    watcher = ConfigWatcher(path, h.engine)
    write(path, {**config, "pools": [{"name": "p", "max_concurrency": 3}]})
    redis_server.kill()
    with pytest.raises(Unavailable):
        await watcher.check()
    assert h.engine.settings.pool("p").max_concurrency == 1  # nothing half-applied
    redis_server.start()
    assert await watcher.check() == "applied"
    assert (await h.pool("p")).concurrency.limit == 3


async def test_limits_reach_a_store_that_was_down_at_start(
    redis_server: RedisServer,
) -> None:
    """A replica starting while Redis is down publishes its limits once Redis answers, so
    stale definitions left in the store by an older config do not stay in force."""
    backend = {"kind": "redis", "url": redis_server.url, "key_prefix": "late"}
    old = await start_harness({"backend": backend, "pools": [{"name": "p", "max_concurrency": 9}]})
    await old.close()  # leaves max_concurrency 9 in the store
    redis_server.kill()
    h = await start_harness({"backend": backend, "pools": [{"name": "p", "max_concurrency": 1}]})
    try:
        assert not h.engine.limits_published
        redis_server.start()
        await h.server.housekeeping()
        assert h.engine.limits_published
        await h.acquire(input_tokens=1)
        assert (await h.fail(h.acquire(input_tokens=1))).reason == "CONCURRENCY_LIMIT"
    finally:
        await h.close()


async def test_gates_come_back_after_redis_restarts_empty(
    replicas: Replicas, redis_server: RedisServer
) -> None:
    """A restarted Redis keeps nothing: the replica notices the outage and publishes its
    limits and pool gates again, so a circuit breaker still works afterwards."""
    breaker = {"min_calls": 1, "failure_rate": 1, "open_for": "60s"}
    (h,) = await replicas(1, {"pools": [{"name": "p", "breaker": breaker}]})
    redis_server.kill()
    assert not await h.server.check_store()
    redis_server.start()  # empty
    await h.server.housekeeping()
    lease = await h.acquire(input_tokens=1)
    error = pb.Outcome.OUTCOME_PROVIDER_ERROR
    await h.stub.Release(pb.ReleaseRequest(lease_id=lease.lease_id, outcome=error), timeout=10)
    assert (await h.fail(h.acquire(input_tokens=1))).reason == "POOL_UNAVAILABLE"


async def test_a_breaker_added_or_removed_binds_at_once(make_harness: MakeHarness) -> None:
    """A pool gate's settings change with the config, even in a store that kept the ones it
    read before (Redis keeps them by the config's version)."""
    h = await make_harness({"pools": [{"name": "p"}]})
    error = pb.Outcome.OUTCOME_PROVIDER_ERROR

    async def fails() -> None:
        lease = await h.acquire(input_tokens=1)
        await h.stub.Release(pb.ReleaseRequest(lease_id=lease.lease_id, outcome=error), timeout=10)

    await fails()  # no breaker: nothing opens
    breaker = {"min_calls": 1, "failure_rate": 1, "open_for": "60s"}
    await h.engine.apply(settings_for(h, pools=[{"name": "p", "breaker": breaker}]))
    await fails()
    failure = await h.fail(h.acquire(input_tokens=1))
    assert (failure.reason, failure.metadata["cause"]) == ("POOL_UNAVAILABLE", "open")
    await h.engine.apply(settings_for(h, pools=[{"name": "p"}]))
    await h.acquire(input_tokens=1)  # no breaker any more: its open circuit stops nothing
