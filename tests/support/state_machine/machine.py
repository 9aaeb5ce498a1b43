"""``AdmissionMachine``: hypothesis rules that call the server through a driver and the model
side by side, and fail, with the last steps, where they disagree. A test subclasses it with
``make_driver`` set (``tests/test_state_machine.py``)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any, NoReturn

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from support.model import EPS, Model
from support.state_machine.config import CONFIG
from support.state_machine.drivers import Answer, UsageDraw

TENANTS = ("a", "b", "c")
# Mostly small calls, so that buckets admit several at once; sometimes a call bigger than a
# bucket (never fits) or than the pool's remaining minute.
INPUT = st.one_of(*[st.integers(1, 150)] * 4, st.sampled_from([700, 2500]))
WAITS = (2.1, 4.6, 9.1)  # 9.1 is cut to max_wait
STEPS = (0.25, 0.5, 1.0, 2.5, 5.0, 12.0)
# Mostly OK; every outcome that changes what a release without usage is charged.
OUTCOMES = st.sampled_from(
    ["OK"] * 3 + ["PROVIDER_RATE_LIMITED", "PROVIDER_ERROR", "TIMEOUT", "CANCELLED"]
)


def same_delay(server: float | None, model: float | None) -> bool:
    """Retry delays agree to the microsecond the server rounds them to (Lua's JSON keeps 14
    digits of what they are computed from)."""
    if server is None or model is None:
        return server is model
    return abs(server - model) <= 2e-6


class AdmissionMachine(RuleBasedStateMachine):
    make_driver: Callable[[], Any]  # set by each test

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.driver = type(self).make_driver()
        self.runner.run(self.driver.start())
        clock = self.driver.clock
        self.model = Model(CONFIG, self.driver.time(), clock.wall() - self.driver.time())
        self.start_time = self.model.now
        self.calls = itertools.count(1)
        self.tasks: dict[str, asyncio.Task[Answer]] = {}  # call id -> a waiting Acquire
        self.server_id: dict[str, str] = {}  # call id -> lease id (once granted)
        self.requested: dict[str, tuple[int, int]] = {}  # call id -> (input, output)
        self.released_at: dict[str, float] = {}  # call id -> real time of its release
        self.buried_at: dict[str, float] = {}  # call id -> real time its lease expired by
        self.log: list[str] = []

    def at(self, now: float) -> None:
        """The model at ``now`` (it reaps what expired); the real time each expiry was seen."""
        self.model.at(now)
        for cid in self.model.graves:
            self.buried_at.setdefault(cid, time.monotonic())

    def teardown(self) -> None:
        try:
            for task in self.tasks.values():
                task.cancel()
            self.runner.run(self.driver.close())
        finally:
            self.runner.close()

    # -- helpers --------------------------------------------------------------------------

    def fail(self, message: str) -> NoReturn:
        raise AssertionError(f"{message}\nlast steps:\n  " + "\n  ".join(self.log[-15:]))

    def check_pass(self, pas: Any, done: dict[str, Answer], what: str) -> None:
        """The model's dispatch pass against the waiters the server answered in this step."""
        if pas.mismatches:
            self.fail(f"{what}: {pas.mismatches}")
        for cid in pas.grants:
            answer = done.pop(cid, None)
            if answer is None or answer.kind != "lease":
                self.fail(f"{what}: model granted waiter {cid}, server answered {answer}")
            self.granted(cid, answer)
        for cid, limit in pas.rejections:
            answer = done.pop(cid, None)
            if answer is None or answer.reason != limit.reason:
                self.fail(f"{what}: model rejected waiter {cid} ({limit.key}), server: {answer}")
            del self.tasks[cid]

    def granted(self, cid: str, answer: Answer) -> None:
        self.server_id[cid] = answer.lease_id
        self.tasks.pop(cid, None)

    def finished(self) -> dict[str, Answer]:
        return {cid: task.result() for cid, task in self.tasks.items() if task.done()}

    async def answered(self, coro: Any) -> asyncio.Task[Answer]:
        return asyncio.ensure_future(self.driver.call(coro))

    # -- rules ----------------------------------------------------------------------------

    # Two rules, so that acquires are drawn more often than anything else.
    @rule(
        tenant=st.sampled_from(TENANTS),
        inp=INPUT,
        out=st.integers(0, 100),
        priority=st.integers(0, 4),
    )
    def acquire_now(self, tenant: str, inp: int, out: int, priority: int) -> None:
        self.runner.run(self._acquire(tenant, inp, out, priority, 0.0))

    @rule(
        tenant=st.sampled_from(TENANTS),
        inp=INPUT,
        out=st.integers(0, 100),
        priority=st.integers(0, 4),
        wait=st.sampled_from(WAITS),
    )
    def acquire_waiting(self, tenant: str, inp: int, out: int, priority: int, wait: float) -> None:
        self.runner.run(self._acquire(tenant, inp, out, priority, wait))

    async def _acquire(self, tenant: str, inp: int, out: int, priority: int, wait: float) -> None:
        cid = f"c{next(self.calls)}"
        self.requested[cid] = (inp, out)
        self.log.append(f"{cid} = acquire({tenant}, {inp}+{out}, prio {priority}, wait {wait})")
        self.at(self.driver.time())
        task = await self.answered(self.driver.acquire(tenant, inp, out, priority, wait))
        await self.driver.quiesce([*self.tasks.values(), task])
        done = self.finished()
        own = task.result() if task.done() else None
        ticket = self.model.ticket(cid, tenant, "p", inp, out, priority, wait)

        def observed(i: str) -> bool:
            answer = own if i == cid else done.get(i)
            return answer is not None and answer.kind == "lease"

        kind, value, pas = self.model.acquire(ticket, wait=ticket.wait > 0, observed=observed)
        self.log.append(f"   model {kind} {getattr(value, 'key', value)}; server {own}")
        self.check_pass(pas, done, f"acquire {cid}")
        if done:
            self.fail(f"acquire {cid}: waiters answered that the model did not expect: {done}")
        if kind == "lease":
            if own is None or own.kind != "lease":
                self.fail(f"acquire {cid}: model admits, server answered {own}")
            self.granted(cid, own)
        elif kind == "queued":
            if own is not None:
                self.fail(f"acquire {cid}: model queues it, server answered {own}")
            self.tasks[cid] = task
        elif kind == "full":
            if own is None or own.reason != "QUEUE_FULL":
                self.fail(f"acquire {cid}: model says queue full ({value}), server: {own}")
        else:
            if own is None or own.kind != "rejected" or own.reason not in value.reasons:
                self.fail(f"acquire {cid}: model rejects ({value}), server answered {own}")
            if value.checked and not same_delay(own.retry, value.retry):
                self.fail(f"acquire {cid}: retry after {own.retry}, the model says {value}")

    def _lease_target(self, data: st.DataObject) -> str:
        """Mostly a live lease; sometimes one that has ended (released or expired)."""
        live = sorted(set(self.server_id) & set(self.model.leases))
        if live and bool(data.draw(st.integers(0, 3), label="live?")):
            return data.draw(st.sampled_from(live), label="live lease")
        return data.draw(st.sampled_from(sorted(self.server_id)), label="any lease")

    @precondition(lambda self: self.server_id)
    @rule(data=st.data(), outcome=OUTCOMES)
    def release(self, data: st.DataObject, outcome: str) -> None:
        cid = self._lease_target(data)
        inp, out = self.requested[cid]
        usage: UsageDraw = None
        if data.draw(st.booleans(), label="usage?"):
            used_in = data.draw(st.integers(0, 2 * inp + 10), label="input")
            cached = data.draw(st.integers(0, used_in), label="cached")
            written = data.draw(st.integers(0, used_in - cached), label="written")
            used_out = data.draw(st.integers(0, 2 * out + 10), label="output")
            usage = (used_in, used_out, cached, written)
        self.runner.run(self._release(cid, usage, outcome))

    async def _release(self, cid: str, usage: UsageDraw, outcome: str) -> None:
        self.log.append(f"release({cid}, {usage}, {outcome})")
        self.at(self.driver.time())
        answer = await self.driver.release(self.server_id[cid], usage, outcome)
        await self.driver.quiesce(list(self.tasks.values()))
        done = self.finished()
        kind, settled, pas = self.model.release(
            cid, usage, lambda i: i in done and done[i].kind == "lease", outcome
        )
        self.log.append(f"   model {kind} {settled}; server {answer}")
        self.check_pass(pas, done, f"release {cid}")
        if done:
            self.fail(f"release {cid}: waiters answered that the model did not expect: {done}")
        if kind == "settled":
            reserved = sum(self.requested[cid])
            if answer.kind != "settled" or answer.already:
                self.fail(f"release {cid}: model settles it, server answered {answer}")
            assert (answer.charged, answer.refunded) == (settled.charged, settled.refunded)
            assert 0 <= answer.refunded <= reserved
            assert answer.refunded == max(0, reserved - answer.charged)
            self.released_at[cid] = time.monotonic()
        elif kind == "already":
            if answer.kind == "not_found" and self._redis_forgot(self.released_at, cid):
                del self.model.released[cid]  # see _redis_forgot
                return
            if answer.kind != "settled" or not answer.already:
                self.fail(f"release {cid}: ended once already, server answered {answer}")
            assert answer.charged == settled.charged
        elif kind in ("expired", "expired_already"):
            if answer.kind == "not_found" and self._redis_forgot(self.buried_at, cid):
                del self.model.graves[cid]  # see _redis_forgot
                return
            already = kind == "expired_already"
            if answer.kind != "expired" or answer.already != already:
                self.fail(f"release {cid}: model says {kind} ({settled}), server {answer}")
            assert answer.charged == settled.charged
        elif answer.kind != "not_found":
            self.fail(f"release {cid}: the lease was forgotten, server: {answer}")

    def _redis_forgot(self, since: dict[str, float], cid: str) -> bool:
        """Redis drops a released lease's record, and an expired one's tombstone, after one
        TTL of *real* time (its key expiry); a run slower than that may see it gone before
        the model does."""
        ended = since.get(cid)
        ttl = float(CONFIG["lease"]["ttl"])
        return self.driver.redis and ended is not None and time.monotonic() - ended > ttl

    @precondition(lambda self: self.server_id)
    @rule(data=st.data(), extend_by=st.sampled_from([0.0, 0.5, 3.0, 12.0, 25.0]))
    def renew(self, data: st.DataObject, extend_by: float) -> None:
        cid = self._lease_target(data)
        self.runner.run(self._renew(cid, extend_by))

    async def _renew(self, cid: str, extend_by: float) -> None:
        self.log.append(f"renew({cid}, {extend_by})")
        self.at(self.driver.time())
        answer = await self.driver.renew(self.server_id[cid], extend_by)
        kind, charged = self.model.renew(cid, extend_by)
        self.log.append(f"   model {kind}; server {answer}")
        if (
            kind == "expired"
            and answer.kind == "not_found"
            and self._redis_forgot(self.buried_at, cid)
        ):
            del self.model.graves[cid]  # see _redis_forgot
            return
        expected = {"renewed": "renewed", "expired": "expired", "gone": "not_found"}[kind]
        if answer.kind != expected or (kind == "expired" and answer.charged != charged):
            self.fail(f"renew {cid}: model {kind} ({charged}), server {answer}")

    @precondition(lambda self: self.tasks)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        cid = data.draw(st.sampled_from(sorted(self.tasks)), label="waiter")
        self.runner.run(self._cancel(cid))

    async def _cancel(self, cid: str) -> None:
        self.log.append(f"cancel({cid})")
        task = self.tasks.pop(cid)
        task.cancel()
        await self.driver.quiesce(list(self.tasks.values()))
        done = self.finished()
        self.at(self.driver.time())
        self.model.remove(cid, served=False)
        # Leaving may unblock the queue behind it: a dispatch pass runs.
        pas = self.model.dispatch(lambda i: i in done and done[i].kind == "lease")
        self.check_pass(pas, done, f"cancel {cid}")
        if done:
            self.fail(f"cancel {cid}: waiters answered that the model did not expect: {done}")

    @rule(dt=st.sampled_from(STEPS))
    def advance(self, dt: float) -> None:
        self.runner.run(self._advance(dt))

    async def _advance(self, dt: float) -> None:
        self.log.append(f"advance({dt})")
        t0 = self.model.now
        deadlines = {task: self.model.waiters[cid].deadline for cid, task in self.tasks.items()}
        await self.driver.advance(dt, list(self.tasks.values()), deadlines)
        t1 = self.driver.time()
        done = self.finished()
        self.log.append(f"   server answered {done}")
        # What the server did in between, in time order: grants (at enqueue + queued_for;
        # one dispatch pass grants several at one time) and queue timeouts (at deadlines).
        events: list[tuple[float, str, str]] = []
        for cid, answer in done.items():
            waiter = self.model.waiters.get(cid)
            if waiter is None:
                self.fail(f"{cid} answered {answer}, but the model has it no longer queued")
            if answer.kind == "lease":
                events.append((waiter.enq + answer.queued_for, "grant", cid))
            elif answer.reason == "QUEUE_TIMEOUT":
                if not t0 - EPS < waiter.deadline <= t1 + EPS:
                    self.fail(
                        f"{cid} timed out, its deadline {waiter.deadline} is not in ({t0}, {t1}]"
                    )
                events.append((waiter.deadline, "timeout", cid))
            elif answer.kind != "rejected":
                self.fail(f"waiter {cid} answered {answer}")
        # Events at one instant (within 1e-6 s) happen together: each waiter timing out
        # there leaves the queue and a dispatch pass runs (in the order the waiters came);
        # with no timeout, the grants are one pass (a refill wake-up, the reaper).
        events.sort(key=lambda e: (e[0], int(e[2][1:])))
        i = 0
        while i < len(events):
            at = events[i][0]
            instant = [e for e in events[i:] if e[0] - at <= 1e-6]
            i += len(instant)
            grants = {cid for _, kind, cid in instant if kind == "grant"}
            timeouts = [cid for _, kind, cid in instant if kind == "timeout"]
            self.at(at)
            passes = []
            for cid in timeouts:
                self.model.remove(cid, served=False)
                del self.tasks[cid]
                done.pop(cid)
                passes.append(self.model.dispatch(grants.__contains__, lenient=True))
            if not timeouts:
                passes.append(self.model.dispatch(grants.__contains__))
            for pas in passes:
                self.check_pass(pas, done, f"dispatch at {at:.6f}")
            granted = {cid for pas in passes for cid in pas.grants}
            if grants - granted:
                self.fail(f"at {at:.6f} the server granted {grants - granted}, not the model")
        self.at(t1)
        for cid, answer in list(done.items()):  # rejected while waiting: the day's quota
            verdict, limit = self.model.check(self.model.waiters[cid].ticket, kinds=("daily",))
            if verdict != "denied" or limit is None or limit.reason != answer.reason:
                self.fail(f"waiter {cid} rejected {answer}, the model says {verdict} {limit}")
            self.model.remove(cid, served=False)
            del self.tasks[cid]
        for cid in self.tasks:
            if self.model.waiters[cid].deadline <= t1 - EPS:
                self.fail(f"waiter {cid} is still waiting past its deadline")

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def agrees_with_the_model(self) -> None:
        server = self.runner.run(self.driver.state())
        self.at(self.driver.time())
        pools, tenants = self.model.in_flight()
        queued_pools, queued_tenants = self.model.queued()
        for name, limit in self.model.all_limits.items():
            if limit.kind == "gauge":
                in_use = server.levels.get(name, 0.0)
                if in_use > limit.capacity:
                    self.fail(f"{name}: {in_use} in flight > {limit.capacity}")
        if (server.in_flight_pool, server.in_flight_tenant) != (pools, tenants):
            self.fail(
                f"in flight: server {server.in_flight_pool} {server.in_flight_tenant},"
                f" model {pools} {tenants}"
            )
        if (server.queued_pool, server.queued_tenant) != (queued_pools, queued_tenants):
            self.fail(
                f"queued: server {server.queued_pool} {server.queued_tenant},"
                f" model {queued_pools} {queued_tenants}"
            )
        expected = self.model.levels()
        for key, value in expected.items():
            got = server.levels.get(key)
            tolerance = 1e-3 if self.model.all_limits[key].kind == "bucket" else EPS
            if got is None or abs(got - value) > tolerance:
                self.fail(f"{key}: server {got}, model {value}")
        problems = self.model.window_violations(self.start_time)
        problems += self.model.daily_violations(server.levels)
        if problems:
            self.fail(f"limits exceeded: {problems}")
