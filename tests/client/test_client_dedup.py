"""Fallback pools and in-flight deduplication (dedup_key) through the Python client, against
a real admitd on a socket (ManualClock: no time passes)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from admitd_client import (
    AdmissionClient,
    AdmitdError,
    AsyncAdmissionClient,
    DedupRole,
    Lease,
    Outcome,
    Reason,
    Rejected,
)
from support.client import (
    CONFIG,
    COOKBOOK_MESSAGES,
    GPT4,
    GPT4O,
    AioRecorder,
    Sent,
    aio_channel,
    serve,
    sync_channel,
    target,
)

ANSWER = {"answer": 42}
SHARING: dict[str, Any] = {
    "share": lambda result: json.dumps(result).encode(),
    "unshare": json.loads,
}
# Followers wait for the leader's call at most this long (no time passes: it never runs out).
ASK: dict[str, Any] = {
    "pool": GPT4O, "input_tokens": 10, "max_output_tokens": 5, "dedup_key": "q:42",
    "wait_timeout": 30,
}  # fmt: skip


class Provider:
    """A fake provider call for ``run``: records who called, waits until ``finish``, then
    returns ``ANSWER`` (or raises ``error``)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[Lease] = []
        self.started = asyncio.Event()
        self.finish = asyncio.Event()
        self.error = error

    async def __call__(self, lease: Lease) -> dict[str, int]:
        self.calls.append(lease)
        self.started.set()
        await self.finish.wait()
        if self.error is not None:
            raise self.error
        lease.record(input_tokens=10, output_tokens=3)
        return ANSWER


def acquires(sent: list[Sent]) -> list[Any]:
    return [s.request for s in sent if s.method == "Acquire"]


# -- fallback pools -------------------------------------------------------------------------


async def test_a_lease_falls_back_on_the_next_pool() -> None:
    async with serve() as h:
        channel, sent = aio_channel(target(h))
        client = AsyncAdmissionClient(channel, tenant="a")
        holder = await client.acquire(pool=GPT4O, input_tokens=1)  # GPT4O's one slot
        async with client.lease(
            pool=GPT4O, fallback_pools=[GPT4], messages=COOKBOOK_MESSAGES, max_output_tokens=10
        ) as lease:
            assert lease.pool == GPT4
            assert (await h.pool(GPT4)).in_flight == 1
        request = sent.last("Acquire").request
        assert (request.pool, list(request.fallback_pools)) == (GPT4O, [GPT4])
        # One count for both candidates: the larger, gpt-4's cl100k_base (129, not 124).
        assert request.input_tokens == lease.input_tokens == 129
        assert lease.reserved_tokens == 139
        assert sent.last("Release").request.lease_id == lease.lease_id
        assert (await h.pool(GPT4)).in_flight == 0
        # When the first candidate fits, it grants.
        await client.release(holder)
        async with client.lease(pool=GPT4O, fallback_pools=[GPT4], input_tokens=1) as lease:
            assert lease.pool == GPT4O
        await channel.close()


async def test_when_no_candidate_fits_the_refusal_names_them() -> None:
    async with serve() as h, AsyncAdmissionClient(target(h), tenant="a") as client:
        await client.acquire(pool=GPT4O, input_tokens=1)
        with pytest.raises(Rejected) as caught:  # more than gpt-4's 600-token bucket
            await client.acquire(pool=GPT4O, fallback_pools=[GPT4], input_tokens=1000)
        assert caught.value.reason is Reason.CONCURRENCY_LIMIT  # the hopeful one: GPT4O's
        assert caught.value.metadata["candidates"] == f"{GPT4O},{GPT4}"
        with pytest.raises(AdmitdError) as unknown:
            await client.acquire(pool=GPT4O, fallback_pools=["nope"], input_tokens=1)
        assert unknown.value.code is grpc.StatusCode.NOT_FOUND
        assert "fallback_pools[0]" in unknown.value.message


def test_counts_with_every_candidates_encoding_or_the_one_given() -> None:
    from admitd_client._core import Core

    core = Core()

    def args(**more: Any) -> Any:  # the lease arguments (LeaseArgs)
        return {"pool": GPT4O, "messages": COOKBOOK_MESSAGES, **more}

    assert core._count(args()) == 124
    assert core._count(args(fallback_pools=[GPT4])) == 129
    assert core._count(args(fallback_pools=[GPT4], encoding="o200k_base")) == 124
    core = Core(pool_encodings={GPT4: "o200k_base"})
    assert core._count(args(fallback_pools=[GPT4])) == 124


# -- dedup ----------------------------------------------------------------------------------


async def test_followers_get_the_leaders_result_from_one_provider_call() -> None:
    async with serve() as h:
        channel, sent = aio_channel(target(h))
        leader_client = AsyncAdmissionClient(channel, tenant="a")
        other = AsyncAdmissionClient(target(h), tenant="a")  # as if another process
        provider = Provider()
        leading = asyncio.ensure_future(leader_client.run(provider, **ASK, **SHARING))
        await provider.started.wait()
        leader = provider.calls[0]
        assert (leader.role, leader.dedup_leader_id) == (DedupRole.LEADER, leader.lease_id)
        following = [asyncio.ensure_future(other.run(provider, **ASK, **SHARING)) for _ in "ab"]
        await h.until_following(leader.lease_id, 2)
        assert (await h.pool(GPT4O)).in_flight == 1  # the followers reserve nothing
        provider.finish.set()
        assert await asyncio.gather(leading, *following) == [ANSWER] * 3
        assert len(provider.calls) == 1  # one provider call for three callers
        release = sent.last("Release").request
        assert (release.result, release.outcome) == (b'{"answer": 42}', Outcome.OK)
        assert (release.usage.input_tokens, release.usage.output_tokens) == (10, 3)
        assert (await h.pool(GPT4O)).in_flight == 0
        # Nothing in flight any more: the next identical call leads a call of its own.
        provider.finish.set()
        assert await other.run(provider, **ASK, **SHARING) == ANSWER
        assert len(provider.calls) == 2
        await other.close()
        await channel.close()


async def test_a_follower_lease_block_has_the_result_and_nothing_to_release() -> None:
    async with serve() as h:
        channel, sent = aio_channel(target(h))
        client = AsyncAdmissionClient(channel, tenant="a")
        leader = await client.acquire(**ASK)
        assert leader.role is DedupRole.LEADER
        joining = asyncio.ensure_future(following_block(client))
        await h.until_following(leader.lease_id)
        leader.share(b"the answer")
        await client.release(leader)
        follower = await joining
        assert (follower.role, follower.shared_result) == (DedupRole.FOLLOWER, b"the answer")
        assert (follower.lease_id, follower.dedup_leader_id) == ("", leader.lease_id)
        assert follower.admitted
        assert "following=" in repr(follower)
        assert await client.release(follower) is None  # nothing reserved: no RPC
        assert sent.methods() == ["Acquire", "Acquire", "Release"]
        assert follower.settlement is None
        await channel.close()


async def following_block(client: AsyncAdmissionClient) -> Lease:
    async with client.lease(**ASK) as lease:
        return lease


async def test_a_failed_leader_sends_its_follower_back_to_lead() -> None:
    async with serve() as h:
        leader_client = AsyncAdmissionClient(target(h), tenant="a")
        channel, sent = aio_channel(target(h))
        client = AsyncAdmissionClient(channel, tenant="a")
        failing = Provider(error=ValueError("provider error"))
        leading = asyncio.ensure_future(leader_client.run(failing, **ASK, **SHARING))
        await failing.started.wait()
        provider = Provider()
        following = asyncio.ensure_future(client.run(provider, **ASK, **SHARING))
        await h.until_following(failing.calls[0].lease_id)
        failing.finish.set()
        with pytest.raises(ValueError, match="provider error"):
            await leading
        await provider.started.wait()  # the follower asked again, and leads
        assert provider.calls[0].role is DedupRole.LEADER
        provider.finish.set()
        assert await following == ANSWER
        first, second = acquires(sent.sent)
        assert first is second  # the same request, asked again
        release = sent.last("Release").request
        assert (release.lease_id, release.result) == (provider.calls[0].lease_id, b'{"answer": 42}')
        await leader_client.close()
        await channel.close()


class Meanwhile(grpc.aio.UnaryUnaryClientInterceptor):
    """Runs ``before`` ahead of the Nth Acquire this channel sends."""

    def __init__(self, nth: int, before: Callable[[], Awaitable[None]]) -> None:
        self.nth, self.before, self.seen = nth, before, 0

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        method = client_call_details.method
        if (method.decode() if isinstance(method, bytes) else method).endswith("/Acquire"):
            self.seen += 1
            if self.seen == self.nth:
                await self.before()
        return await continuation(client_call_details, request)


async def test_a_follower_asks_again_once_only() -> None:
    async with serve() as h:
        leaders = AsyncAdmissionClient(target(h), tenant="a")
        first, second = Provider(ValueError("first")), Provider(ValueError("second"))
        later: list[asyncio.Future[Any]] = []

        async def second_leader() -> None:  # before the follower asks again: it follows this
            later.append(asyncio.ensure_future(leaders.run(second, **ASK, **SHARING)))
            await second.started.wait()

        meanwhile = Meanwhile(2, second_leader)
        recorder = AioRecorder()
        channel = grpc.aio.insecure_channel(target(h), interceptors=[meanwhile, recorder])
        client = AsyncAdmissionClient(channel, tenant="a")
        leading = asyncio.ensure_future(leaders.run(first, **ASK, **SHARING))
        await first.started.wait()
        never = Provider()
        following = asyncio.ensure_future(client.run(never, **ASK, **SHARING))
        await h.until_following(first.calls[0].lease_id)
        first.finish.set()
        await h.until_following(await leader_id(second))
        second.finish.set()
        with pytest.raises(Rejected) as caught:
            await following
        assert caught.value.code is grpc.StatusCode.ABORTED
        assert caught.value.reason is Reason.DEDUP_LEADER_FAILED
        assert caught.value.metadata["dedup_leader"] == second.calls[0].lease_id
        assert never.calls == []
        assert recorder.methods() == ["Acquire", "Acquire"]
        for failed in (leading, *later):
            with pytest.raises(ValueError, match=r"^(first|second)$"):
                await failed
        await leaders.close()
        await channel.close()


async def leader_id(provider: Provider) -> str:
    await provider.started.wait()
    return provider.calls[0].lease_id


async def test_refusals_of_a_follower_are_rejections_with_code_aborted() -> None:
    async with serve() as h, AsyncAdmissionClient(target(h), tenant="a") as client:
        leader = await client.acquire(**ASK)
        with pytest.raises(Rejected) as caught:  # may not wait: told at once
            await client.acquire(**{**ASK, "wait_timeout": 0})
        assert caught.value.code is grpc.StatusCode.ABORTED
        assert caught.value.reason is Reason.DEDUP_IN_FLIGHT
        assert caught.value.metadata["dedup_leader"] == leader.lease_id
        assert caught.value.retry_after is not None
        # A manual acquire does not ask again: the caller decides.
        joining = asyncio.ensure_future(client.acquire(**ASK))
        await h.until_following(leader.lease_id)
        await client.release(leader, Outcome.PROVIDER_ERROR)
        with pytest.raises(Rejected) as failed:
            await joining
        assert (failed.value.code, failed.value.reason) == (
            grpc.StatusCode.ABORTED,
            Reason.DEDUP_LEADER_FAILED,
        )


async def test_a_result_too_big_to_share_is_dropped_and_the_lease_released() -> None:
    async with serve({**CONFIG, "lease": {"ttl": "30s", "max_shared_result": 8}}) as h:
        channel, sent = aio_channel(target(h))
        client = AsyncAdmissionClient(channel, tenant="a")
        leader = await client.acquire(**ASK)
        joining = asyncio.ensure_future(client.acquire(**ASK))
        await h.until_following(leader.lease_id)
        leader.share(b"more than eight bytes")
        settlement = await client.release(leader)
        assert settlement is not None
        assert not settlement.already_released
        first, second = [s.request for s in sent.sent if s.method == "Release"]
        assert (first.result, second.result) == (b"more than eight bytes", b"")
        assert (await h.pool(GPT4O)).in_flight == 0
        with pytest.raises(Rejected) as failed:  # the follower hears at once: retry
            await joining
        assert failed.value.reason is Reason.DEDUP_LEADER_FAILED
        await channel.close()


async def test_run_with_a_dedup_key_needs_share_and_unshare() -> None:
    async with serve() as h, AsyncAdmissionClient(target(h), tenant="a") as client:
        provider = Provider()
        with pytest.raises(TypeError, match=r"needs share= \(result -> bytes\) and unshare="):
            await client.run(provider, **ASK)
        with pytest.raises(TypeError, match="together"):
            await client.run(provider, pool=GPT4O, input_tokens=1, share=bytes)  # type: ignore[misc]
        with pytest.raises(TypeError, match="bytes"):
            (await client.acquire(pool=GPT4O, input_tokens=1)).share("text")  # type: ignore[arg-type]
        assert provider.calls == []


async def test_a_leader_whose_result_cannot_be_encoded_reports_ok_and_shares_nothing() -> None:
    async with serve() as h:
        channel, sent = aio_channel(target(h))
        client = AsyncAdmissionClient(channel, tenant="a")
        provider = Provider()
        provider.finish.set()

        def broken(result: Any) -> bytes:
            raise RuntimeError("cannot encode")

        with pytest.raises(RuntimeError, match="cannot encode"):
            await client.run(provider, share=broken, unshare=json.loads, **ASK)
        release = sent.last("Release").request
        assert (release.outcome, release.result) == (Outcome.OK, b"")
        await channel.close()


# -- the blocking client ----------------------------------------------------------------------


async def test_blocking_fallback_and_dedup_run() -> None:
    async with serve() as h:
        loop = asyncio.get_running_loop()

        def follower_joined(leader: str) -> None:
            asyncio.run_coroutine_threadsafe(h.until_following(leader), loop).result()

        def scenario() -> tuple[list[Any], list[str]]:
            channel, _ = sync_channel(target(h))
            client = AdmissionClient(channel, tenant="a")
            other = AdmissionClient(target(h), tenant="a")
            holder = client.acquire(pool=GPT4O, input_tokens=1)
            with client.lease(pool=GPT4O, fallback_pools=[GPT4], input_tokens=5) as lease:
                assert lease.pool == GPT4
            client.release(holder)

            calls: list[str] = []
            finish = threading.Event()
            started = threading.Event()

            def ask(lease: Lease) -> dict[str, int]:
                calls.append(lease.lease_id)
                started.set()
                assert finish.wait(timeout=30)
                return ANSWER

            results: list[Any] = []
            leading = threading.Thread(
                target=lambda: results.append(client.run(ask, **ASK, **SHARING))
            )
            leading.start()
            assert started.wait(timeout=30)
            following = threading.Thread(
                target=lambda: results.append(other.run(ask, **ASK, **SHARING))
            )
            following.start()
            follower_joined(calls[0])
            finish.set()
            leading.join(timeout=30)
            following.join(timeout=30)
            other.close()
            channel.close()
            return results, calls

        results, calls = await asyncio.to_thread(scenario)
        assert results == [ANSWER, ANSWER]
        assert len(calls) == 1
        assert (await h.pool(GPT4O)).in_flight == 0
