"""The process plumbing under local://: the spawn gate and shielded cleanup through the env."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import pytest

from aiores_local._process import SpawnGate

from .conftest import STEP, FakeEnv


def iteration_counter(
    loop: asyncio.AbstractEventLoop,
) -> tuple[Callable[[], int], Callable[[], None]]:
    """A function giving the loop iteration number, and one to stop counting."""
    count = 0
    handle: asyncio.Handle | None = None

    def tick() -> None:
        nonlocal count, handle
        count += 1
        handle = loop.call_soon(tick)

    tick()

    def stop() -> None:
        assert handle is not None
        handle.cancel()

    return (lambda: count), stop


@pytest.mark.asyncio
async def test_spawn_gate_spreads_starts_over_iterations() -> None:
    gate = SpawnGate(per_turn=3)
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


@pytest.mark.asyncio
async def test_spawn_gate_passes_on_a_turn_given_to_a_cancelled_waiter() -> None:
    gate = SpawnGate(per_turn=1)
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


@pytest.mark.asyncio
async def test_shielded_cleanup_finishes_despite_cancellation(env: FakeEnv) -> None:
    """The way local:// cleans up after a cancellation: ``env.cleanups.run`` in the
    handler. A second cancellation stops only the waiting; the env waits for the rest."""
    steps: list[str] = []
    release = asyncio.Event()

    async def cleanup() -> None:
        steps.append("started")
        await release.wait()
        steps.append("finished")

    async def cancelled_call() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await env.cleanups.run(cleanup, what="test cleanup")
            raise

    task = asyncio.ensure_future(cancelled_call())
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not task.done()  # still cleaning up
    assert steps == ["started"]
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(STEP):
        await env.cleanups.drain(STEP)
    assert steps == ["started", "finished"]
