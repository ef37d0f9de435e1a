"""The process plumbing under local://: shielded cleanup through the env."""

from __future__ import annotations

import asyncio

import pytest

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
