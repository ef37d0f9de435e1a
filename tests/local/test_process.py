"""The process plumbing under local://: shielded cleanup through the env, the keeper's
answers handled a few per loop iteration."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest

from aiores_local._client import _ANSWERS_PER_TURN, KeeperClient

from ..loop_turns import iteration_counter
from .conftest import STEP, FakeEnv


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


@pytest.mark.asyncio
async def test_keeper_answers_that_came_together_are_handled_a_few_per_iteration() -> None:
    """300 ended jobs announced in one read: the client hands them on at most
    _ANSWERS_PER_TURN per loop iteration, not all in one step of the loop."""
    now, stop = iteration_counter(asyncio.get_running_loop())
    ended: list[tuple[str, int]] = []
    popen: Any = SimpleNamespace(pid=os.getpid())
    client = KeeperClient(popen, lambda job, rc, out, err: ended.append((job, now())))
    client._reader.feed_data(b"".join(b'{"x": "job-%d", "rc": 0}\n' % i for i in range(300)))
    client._reader.feed_eof()
    try:
        async with asyncio.timeout(STEP):
            await client.read()
    finally:
        stop()
    assert [job for job, _ in ended] == [f"job-{i}" for i in range(300)]
    per_iteration = Counter(turn for _, turn in ended)
    assert max(per_iteration.values()) <= _ANSWERS_PER_TURN
    assert len(per_iteration) >= 300 // _ANSWERS_PER_TURN
    assert client.gone  # its output ended
