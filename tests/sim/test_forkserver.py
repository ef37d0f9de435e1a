"""The sim cloud's fork server, driven directly: a real server process, real requests."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import psutil
import pytest
import pytest_asyncio

from aiores_sim import _spawner
from aiores_sim._spawner import Command, Spawner

pytestmark = pytest.mark.asyncio

#: A pid no process has (above the kernel's largest).
NO_PID = 1 << 30


@pytest_asyncio.fixture
async def spawner() -> AsyncIterator[Spawner]:
    tasks: list[asyncio.Task[None]] = []

    def owner(coro: Coroutine[Any, Any, None], what: str) -> None:
        tasks.append(asyncio.get_running_loop().create_task(coro, name=what))

    server = Spawner()
    await server.start({"PATH": os.environ.get("PATH", os.defpath)}, owner)
    try:
        yield server
    finally:
        await server.close()
        async with asyncio.timeout(10):
            await asyncio.gather(*tasks)


async def _half_sent(spawner: Spawner) -> asyncio.Future[Command]:
    """A spawn request far larger than the socket's buffer, its first part sent and
    the rest waiting for room."""
    big = {"FILLER": "x" * (4 << 20)}
    started = asyncio.ensure_future(spawner.spawn(NO_PID, ["/bin/true"], big, "/"))
    for _ in range(3):  # the first part goes at once; the rest waits for room
        await asyncio.sleep(0)
    assert not started.done()
    return started


async def test_a_request_cancelled_half_sent_leaves_the_stream_whole(spawner: Spawner) -> None:
    """A request larger than the socket's buffer, cancelled once its first part is
    sent: the rest still follows, so the next request is read as itself and answered."""
    cancelled = await _half_sent(spawner)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    # No VM has that pid: the server answers with its error (it would never answer
    # a request read out of frame, or end on one).
    async with asyncio.timeout(10):
        with pytest.raises(OSError, match="No such file"):
            await spawner.spawn(NO_PID, ["/bin/true"], {}, "/")
    assert spawner.pid is not None
    assert psutil.Process(spawner.pid).status() != psutil.STATUS_ZOMBIE


async def test_a_half_sent_request_that_cannot_be_finished_ends_the_stream(
    spawner: Spawner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server reads nothing (stopped): a request cancelled half sent waits for its
    rest only so long, then the stream is given up (the socket closes, the server
    ends) instead of hanging the cancellation or sending the next request into it."""
    monkeypatch.setattr(_spawner, "_REST_TIMEOUT", 0.3)
    assert spawner.pid is not None
    os.kill(spawner.pid, signal.SIGSTOP)
    try:
        cancelled = await _half_sent(spawner)
        cancelled.cancel()
        async with asyncio.timeout(5):
            with pytest.raises(asyncio.CancelledError):
                await cancelled
    finally:
        os.kill(spawner.pid, signal.SIGCONT)
    with pytest.raises(OSError, match="not running"):
        await spawner.spawn(NO_PID, ["/bin/true"], {}, "/")
    async with asyncio.timeout(10):
        await spawner.close()  # the server ended with its socket


async def test_a_send_waiting_for_room_fails_when_the_server_closes(spawner: Spawner) -> None:
    """A request waiting for room in the socket (the server reads nothing) when the
    cloud closes its fork server fails at once instead of waiting forever."""
    assert spawner.pid is not None
    os.kill(spawner.pid, signal.SIGSTOP)
    try:
        waiting = await _half_sent(spawner)
        closing = asyncio.ensure_future(spawner.close())
        async with asyncio.timeout(5):
            with pytest.raises(OSError, match="not running"):
                await waiting
    finally:
        os.kill(spawner.pid, signal.SIGCONT)
    async with asyncio.timeout(10):
        await closing
