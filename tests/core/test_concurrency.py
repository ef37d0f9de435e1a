"""The concurrency toolkit: shielded cleanups, own-deadline timeouts, outcomes, task sets."""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections import Counter
from typing import Any

import pytest

from aiores import BadParameter, IncorrectState, Timeout
from aiores._concurrency import (
    Cleanups,
    InFlight,
    Shared,
    TaskSet,
    TurnGate,
    errors,
    fail_after,
    move_on_after,
    result_of,
    settle,
)

from ..loop_turns import iteration_counter

pytestmark = pytest.mark.asyncio

FOREVER = 3600.0


async def hang() -> None:
    await asyncio.Event().wait()


async def test_fail_after_raises_timeout_for_its_own_deadline() -> None:
    with pytest.raises(Timeout, match="the thing took too long"):
        async with fail_after(0.01, "the thing took too long") as deadline:
            await asyncio.Event().wait()
    assert deadline.expired


async def test_fail_after_makes_its_message_only_when_needed() -> None:
    made: list[int] = []

    def message() -> str:
        made.append(1)
        return "late"

    async with fail_after(FOREVER, message):
        await asyncio.sleep(0)
    assert made == []
    with pytest.raises(Timeout, match="late"):
        async with fail_after(0.01, message):
            await asyncio.Event().wait()
    assert made == [1]


async def test_fail_after_lets_an_inner_timeout_pass_untouched() -> None:
    inner = Timeout("the inner call's own deadline")
    with pytest.raises(Timeout) as caught:
        async with fail_after(FOREVER, "outer"):
            raise inner
    assert caught.value is inner

    async def plain_inner() -> None:
        async with fail_after(FOREVER, "outer"), asyncio.timeout(0.01):
            await asyncio.Event().wait()

    with pytest.raises(TimeoutError) as plain:
        await plain_inner()
    assert not isinstance(plain.value, Timeout)

    # An inner deadline nested in an outer one: the inner's Timeout, not the outer's.
    with pytest.raises(Timeout, match="inner"):
        async with fail_after(FOREVER, "outer"), fail_after(0.01, "inner"):
            await asyncio.Event().wait()


async def test_fail_after_lets_a_cancellation_from_outside_pass() -> None:
    started = asyncio.Event()

    async def body() -> None:
        async with fail_after(FOREVER, "outer"):
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(body())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_move_on_after_ends_quietly_and_says_so() -> None:
    async with move_on_after(0.01) as deadline:
        await asyncio.Event().wait()
    assert deadline.expired
    async with move_on_after(FOREVER) as deadline:
        await asyncio.sleep(0)
    assert not deadline.expired
    with pytest.raises(ValueError, match="inner"):
        async with move_on_after(FOREVER):
            raise ValueError("inner")


async def test_a_cleanup_runs_to_its_end_through_two_cancellations() -> None:
    cleanups = Cleanups(timeout=FOREVER)
    entered, release, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def cleanup() -> None:
        entered.set()
        await release.wait()
        finished.set()

    async def caller() -> None:
        await cleanups.run(cleanup, what="releasing")

    task = asyncio.create_task(caller())
    await entered.wait()
    task.cancel()
    await asyncio.sleep(0)
    task.cancel()  # a second cancellation does not cut the cleanup off
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(cleanups) == 1
    assert not finished.is_set()
    release.set()
    await cleanups.drain(FOREVER)
    assert finished.is_set()
    assert len(cleanups) == 0


async def test_a_cleanup_is_bounded_and_its_failure_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cleanups = Cleanups(timeout=0.01)
    with caplog.at_level(logging.ERROR, logger="aiores"):
        await cleanups.run(hang, what="a hanging release")

        async def broken() -> None:
            raise OSError("the backend said no")

        await cleanups.run(broken, what="a failing release")
    assert "a hanging release did not finish within 0.01 s" in caplog.text
    assert "a failing release failed: OSError('the backend said no')" in caplog.text


async def test_drain_cancels_what_outlives_its_bound(caplog: pytest.LogCaptureFixture) -> None:
    cleanups = Cleanups(timeout=FOREVER)
    task = cleanups.start(hang, what="stuck")
    with caplog.at_level(logging.ERROR, logger="aiores"):
        await cleanups.drain(0.01)
    assert task.cancelled() or task.done()
    assert "1 cleanups did not finish in time" in caplog.text


async def test_settle_collects_each_outcome() -> None:
    async def ok(n: int) -> int:
        return n

    async def bad() -> int:
        raise KeyError("x")

    outcomes = await settle([ok(1), bad(), ok(3)])
    assert outcomes[0] == 1
    assert outcomes[2] == 3
    assert isinstance(outcomes[1], KeyError)
    assert errors(outcomes) == [outcomes[1]]


async def test_settle_reraises_a_cancellation_of_one_member() -> None:
    async def cancelled() -> None:
        raise asyncio.CancelledError

    finished: list[int] = []

    async def slow() -> None:
        await asyncio.sleep(0)
        finished.append(1)

    with pytest.raises(asyncio.CancelledError):
        await settle([cancelled(), slow()])
    assert finished == [1]  # the others ran to their end first


async def test_a_task_set_cancels_and_awaits_what_still_runs() -> None:
    cancelled: list[int] = []

    async def work(n: int) -> int:
        if n == 0:
            return 0
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(n)
            raise
        return n

    async with TaskSet("test") as tasks:
        for n in range(3):
            tasks.spawn(work(n))
        async for result in tasks.as_completed():
            assert result == 0
            break
    assert sorted(cancelled) == [1, 2]


async def test_task_set_results_come_in_spawn_order() -> None:
    gates = [asyncio.Event() for _ in range(3)]

    async def work(n: int) -> int:
        await gates[n].wait()
        return n

    async with TaskSet("test") as tasks:
        for n in range(3):
            tasks.spawn(work(n))
        waiting = asyncio.ensure_future(tasks.results())
        for gate in reversed(gates):  # the last one ends first
            gate.set()
            await asyncio.sleep(0)
        assert await waiting == [0, 1, 2]
    async with TaskSet("empty") as none:
        assert await none.results() == []


async def test_task_set_results_raise_the_first_failure_and_cancel_the_rest() -> None:
    cancelled: list[int] = []

    async def work(n: int) -> int:
        if n == 1:
            raise ValueError("one failed")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(n)
            raise
        return n

    async with TaskSet("test") as tasks:
        for n in range(3):
            tasks.spawn(work(n))
        with pytest.raises(ValueError, match="one failed"):
            await tasks.results()
        assert cancelled == []  # raised at once, the others still running
    assert sorted(cancelled) == [0, 2]  # leaving the set cancelled them


class Closable:
    def __init__(self, name: str, closed: list[str], fail: bool = False) -> None:
        self.name = name
        self.closed = closed
        self.fail = fail

    async def aclose(self) -> None:
        self.closed.append(self.name)
        if self.fail:
            raise RuntimeError(f"{self.name} would not close")


async def test_shared_makes_each_value_once_and_closes_them_newest_first(
    caplog: pytest.LogCaptureFixture,
) -> None:
    closed: list[str] = []
    shared = Shared(1.0)
    made: list[str] = []

    def make(name: str, fail: bool = False) -> Closable:
        made.append(name)
        return Closable(name, closed, fail)

    first = shared.get("a", lambda: make("a", fail=True))
    assert shared.get("a", lambda: make("again")) is first
    shared.get(("b", 1), lambda: make("b"))
    shared.get("plain", object)  # a value without aclose is just dropped
    assert made == ["a", "b"]
    with caplog.at_level(logging.ERROR, logger="aiores"):
        await shared.aclose()
    assert closed == ["b", "a"]  # a failure of one does not keep the other open
    assert "a would not close" in caplog.text
    # A closed set hands out fresh values, never a closed one.
    assert shared.get("a", lambda: make("fresh")).name == "fresh"


async def test_shared_bounds_a_close_that_hangs(caplog: pytest.LogCaptureFixture) -> None:
    class Hangs:
        async def aclose(self) -> None:
            await hang()

    closed: list[str] = []
    shared = Shared(0.05)
    shared.get("first", lambda: Closable("first", closed))
    shared.get("hangs", Hangs)
    with caplog.at_level(logging.ERROR, logger="aiores"):
        await shared.aclose()
    assert closed == ["first"]
    assert "did not finish within 0.05 s" in caplog.text


async def test_a_session_closes_what_its_adaptors_share_after_the_adaptors() -> None:
    from aiores import Session

    order: list[str] = []

    class Pool:
        async def aclose(self) -> None:
            order.append("pool")

    async with Session(journal=None) as session:
        pool = session.shared((Pool, "x"), Pool)
        assert session.shared((Pool, "x"), Pool) is pool
        assert session.session_id == session.id
        assert session.cleanups is session._cleanups
        runner = await session.command_runner("local://")
        real_close = runner.aclose

        async def close_runner() -> None:
            order.append("adaptor")
            await real_close()

        runner.aclose = close_runner  # type: ignore[method-assign]
    assert order == ["adaptor", "pool"]
    with pytest.raises(IncorrectState):
        session.shared((Pool, "y"), Pool)


async def test_in_flight_request_outlives_its_cancelled_caller_and_is_taken_by_token() -> None:
    flights: InFlight[str] = InFlight("launch")
    started = asyncio.Event()
    release = asyncio.Event()

    async def request() -> str:
        started.set()
        await release.wait()
        return "i-1"

    caller = asyncio.create_task(flights.run("t-1", request()))
    await started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    taking = asyncio.create_task(flights.take("t-1"))
    await asyncio.sleep(0)
    assert not taking.done()  # find waits for the request's answer
    release.set()
    assert result_of(await taking) == "i-1"
    assert await flights.take("t-1") is None  # taken once
    assert result_of(None) is None


async def test_in_flight_failure_is_the_callers_and_close_waits_for_what_runs() -> None:
    flights: InFlight[str] = InFlight("launch")

    async def refused() -> str:
        raise RuntimeError("refused")

    with pytest.raises(RuntimeError, match="refused"):
        await flights.run("t-2", refused())
    release = asyncio.Event()

    async def slow() -> str:
        await release.wait()
        return "late"

    caller = asyncio.create_task(flights.run("t-3", slow()))
    await asyncio.sleep(0)
    caller.cancel()
    closing = asyncio.create_task(flights.aclose())
    await asyncio.sleep(0)
    assert not closing.done()
    release.set()
    await closing
    assert result_of(await flights.take("t-3")) == "late"


async def test_to_thread_returns_the_threads_result() -> None:
    cleanups = Cleanups(5.0)
    disposed: list[int] = []
    assert await cleanups.to_thread(sum, [1, 2], dispose=disposed.append, what="w") == 3
    assert disposed == []
    assert len(cleanups) == 0


async def test_to_thread_disposes_of_what_a_cancelled_callers_thread_made() -> None:
    cleanups = Cleanups(5.0)
    entered = threading.Event()
    go_on = threading.Event()
    disposed: list[str] = []

    def make() -> str:
        entered.set()
        go_on.wait(10)
        return "made"

    caller = asyncio.create_task(cleanups.to_thread(make, dispose=disposed.append, what="w"))
    await asyncio.to_thread(entered.wait, 10)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller  # at once, while the thread still runs
    assert disposed == []
    assert len(cleanups) == 1
    go_on.set()
    await cleanups.drain(5.0)  # the owner waits for the disposal
    assert disposed == ["made"]


async def test_to_thread_disposes_later_when_the_cleanup_bound_ends_first() -> None:
    cleanups = Cleanups(0.05)
    entered = threading.Event()
    go_on = threading.Event()
    disposed = asyncio.Event()

    def make() -> str:
        entered.set()
        go_on.wait(10)
        return "made"

    loop = asyncio.get_running_loop()
    caller = asyncio.create_task(
        cleanups.to_thread(
            make, dispose=lambda _: loop.call_soon_threadsafe(disposed.set), what="w"
        )
    )
    await asyncio.to_thread(entered.wait, 10)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await cleanups.drain(5.0)  # the bound (0.05 s) ends the wait for the thread
    assert not disposed.is_set()
    go_on.set()
    async with asyncio.timeout(5):
        await disposed.wait()


async def test_turn_gate_spreads_starts_over_iterations() -> None:
    gate = TurnGate(per_turn=3)
    now, stop = iteration_counter(asyncio.get_running_loop())
    turns: list[int] = []

    async def start() -> None:
        await gate.turn()
        turns.append(now())

    try:
        await asyncio.gather(*(start() for _ in range(20)))
    finally:
        stop()
    per_iteration = Counter(turns)
    assert len(turns) == 20
    assert max(per_iteration.values()) <= 3
    assert len(per_iteration) >= 7  # 20 starts, 3 per iteration


async def test_turn_gate_passes_on_a_turn_given_to_a_cancelled_waiter() -> None:
    gate = TurnGate(per_turn=1)
    order: list[str] = []

    async def start(name: str) -> None:
        await gate.turn()
        order.append(name)

    first = asyncio.ensure_future(start("first"))
    second = asyncio.ensure_future(start("second"))
    third = asyncio.ensure_future(start("third"))
    await asyncio.sleep(0)  # all three ran: "first" took this iteration's turn
    assert first.done()
    assert order == ["first"]
    await asyncio.sleep(0)  # the next iteration hands "second" its turn...
    assert not second.done()
    second.cancel()  # ...but it is cancelled before it resumes
    await asyncio.wait_for(third, timeout=5)
    assert second.cancelled()
    assert order == ["first", "third"]


async def test_turn_gate_admits_a_single_caller_in_a_loop_by_turns() -> None:
    gate = TurnGate(per_turn=4)
    now, stop = iteration_counter(asyncio.get_running_loop())
    turns: list[int] = []
    try:
        for _ in range(12):
            await gate.turn()
            turns.append(now())
    finally:
        stop()
    per_iteration = Counter(turns)
    assert max(per_iteration.values()) == 4
    assert len(per_iteration) == 3


@pytest.mark.parametrize("per_turn", [0, -1, 2.0, True, None])
async def test_turn_gate_refuses_a_bad_per_turn(per_turn: object) -> None:
    with pytest.raises(BadParameter, match="per_turn must be an int of at least 1"):
        TurnGate(per_turn=per_turn)  # type: ignore[arg-type]


async def test_turn_gate_with_waiters_cancelled_at_drawn_points_admits_the_rest_in_order() -> None:
    """200 callers, a third cancelled after a drawn number of iterations (waiting, or
    given a turn they never took): every other one is admitted, in the order they
    came, at most ``per_turn`` per iteration, and the gate is empty afterwards."""
    rng = random.Random(61206)
    gate = TurnGate(per_turn=4)
    now, stop = iteration_counter(asyncio.get_running_loop())
    order: list[int] = []
    turns: list[int] = []

    async def start(index: int) -> None:
        await gate.turn()
        order.append(index)
        turns.append(now())

    try:
        tasks = [asyncio.ensure_future(start(i)) for i in range(200)]
        doomed = rng.sample(range(200), 66)
        for index in doomed:
            for _ in range(rng.randrange(3)):
                await asyncio.sleep(0)
            tasks[index].cancel()
        async with asyncio.timeout(10):
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        stop()
    cancelled = {i for i, task in enumerate(tasks) if task.cancelled()}
    assert cancelled  # most of the drawn ones were still waiting
    assert order == sorted(set(range(200)) - cancelled)
    assert max(Counter(turns).values()) <= 4
    assert not gate._waiters
    # The gate still admits at once when nobody waits.
    await asyncio.wait_for(gate.turn(), timeout=1)


async def test_turn_gate_runs_callbacks_in_later_turns_in_line_with_waiters() -> None:
    """Callbacks that cannot wait take a turn with ``now()`` or are run by ``later()`` in a
    later iteration, in line with waiting coroutines, ``per_turn`` per iteration."""
    gate = TurnGate(per_turn=2)
    now, stop = iteration_counter(asyncio.get_running_loop())
    order: list[tuple[str, int]] = []

    async def start(name: str) -> None:
        await gate.turn()
        order.append((name, now()))

    try:
        assert gate.now()  # this iteration's two turns
        assert gate.now()
        assert not gate.now()
        gate.later(lambda: order.append(("cb1", now())))
        task = asyncio.ensure_future(start("task"))
        await asyncio.sleep(0)  # the task queued behind cb1
        gate.later(lambda: order.append(("cb2", now())))
        assert not gate.now()  # others wait: no turn taken ahead of them
        async with asyncio.timeout(5):
            await task
        for _ in range(3):
            await asyncio.sleep(0)
    finally:
        stop()
    assert [name for name, _ in order] == ["cb1", "task", "cb2"]
    per_iteration = Counter(turn for _, turn in order)
    assert max(per_iteration.values()) <= 2
    assert not gate._waiters
    assert gate.now()  # nobody waits: a turn at once


async def test_turn_gate_reports_a_failing_callback_and_runs_the_others() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    gate = TurnGate(per_turn=1)
    ran: list[str] = []

    def fail() -> None:
        raise RuntimeError("callback failed")

    try:
        assert gate.now()
        gate.later(fail)
        gate.later(lambda: ran.append("second"))
        for _ in range(4):
            await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert ran == ["second"]
    assert len(reported) == 1
    assert isinstance(reported[0]["exception"], RuntimeError)
