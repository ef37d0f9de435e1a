"""Fixtures for the local:// adaptor tests: a stand-in for the session's AdaptorEnv.

Adaptor-level tests run against :class:`FakeEnv`: ``spawn`` runs background work in a
task group the fixture owns, and every info an adaptor publishes lands in a queue, so
tests await state changes instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest
import pytest_asyncio

from aiores._clock import LoopClock
from aiores.adaptor import URL, CommandRunner, FileAdaptor, JobAdaptor, JobInfo, concurrency
from aiores_local import LocalJobAdaptor

C = TypeVar("C")
T = TypeVar("T")

#: Seconds any one await in these tests may take before the test fails.
STEP = 10.0


class FakeEnv:
    """An AdaptorEnv whose background tasks run in a task group the test owns."""

    def __init__(self, tg: asyncio.TaskGroup, state_dir: Path) -> None:
        self._tg = tg
        self._state_dir = state_dir
        self.clock = LoopClock()
        self.spawned = 0
        self.session_id = "s-test"
        self.cleanups = concurrency.Cleanups(20.0)
        self._shared = concurrency.Shared(20.0)

    def shared(self, key: Hashable, make: Callable[[], T]) -> T:
        return self._shared.get(key, make)

    @property
    def state_dir(self) -> Path:
        return self._state_dir

    def context(self, kind: type[C], host: str = "") -> C | None:
        return None

    def pinned_host_keys(self, host: str, port: int | None) -> tuple[str, ...]:
        return ()

    def login_keys(self, host: str, port: int | None) -> tuple[str, ...]:
        return ()

    def spawn(self, fn: Callable[[], Awaitable[None]], *, name: str) -> None:
        self.spawned += 1
        self._tg.create_task(fn(), name=name)  # type: ignore[arg-type]

    async def command_runner(self, url: str | URL) -> CommandRunner:
        raise NotImplementedError

    async def job_adaptor(self, url: str | URL) -> JobAdaptor:
        raise NotImplementedError

    async def file_adaptor(self, url: str | URL) -> FileAdaptor:
        raise NotImplementedError


class Published:
    """The infos an adaptor published: all in order (``seen``), and awaitable per id."""

    def __init__(self) -> None:
        self.seen: list[Any] = []
        self._pending: dict[str, deque[Any]] = {}
        self._waiters: list[asyncio.Future[None]] = []

    def __call__(self, info: Any) -> None:
        self.seen.append(info)
        self._pending.setdefault(info.id, deque()).append(info)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def next(self, id: str) -> Any:
        """The next info published for ``id`` (each is returned once)."""
        async with asyncio.timeout(STEP):
            while not self._pending.get(id):
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                await waiter
        return self._pending[id].popleft()

    async def final(self, id: str) -> JobInfo:
        """Skip to ``id``'s final state."""
        while True:
            info: JobInfo = await self.next(id)
            if info.state.final:
                return info

    def states(self, id: str) -> list[Any]:
        """Every state published for ``id`` so far, in order."""
        return [info.state for info in self.seen if info.id == id]


@pytest_asyncio.fixture
async def env(tmp_path: Path) -> AsyncIterator[FakeEnv]:
    async with asyncio.TaskGroup() as tg:
        fake = FakeEnv(tg, tmp_path / "aiores-state")
        yield fake
        await fake.cleanups.drain(STEP)  # as a session does when it closes


@pytest.fixture
def published() -> Published:
    return Published()


Factory = Callable[..., Awaitable[LocalJobAdaptor]]


@pytest_asyncio.fixture
async def make_jobs(env: FakeEnv, published: Published) -> AsyncIterator[Factory]:
    """Open LocalJobAdaptors on ``env``; closes them and kills what they left running."""
    opened: list[LocalJobAdaptor] = []

    async def make(url: str = "local://", **kwargs: Any) -> LocalJobAdaptor:
        adaptor = LocalJobAdaptor(URL.parse(url), env, **kwargs)
        adaptor.set_listener(published)
        await adaptor.open()
        opened.append(adaptor)
        return adaptor

    yield make
    for adaptor in opened:
        pids = [i.extra["pid"] for i in await adaptor.list() if "pid" in i.extra]
        await adaptor.aclose()
        for pid in pids:
            kill_group(pid)


@pytest_asyncio.fixture
async def jobs(make_jobs: Factory) -> LocalJobAdaptor:
    return await make_jobs("local://?grace=0.5")


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def group_members(pgid: int) -> list[psutil.Process]:
    """Live processes of process group ``pgid`` (zombies left out)."""
    members = []
    for proc in psutil.process_iter(["pid", "status"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):  # it ended meanwhile
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc)
    return members


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Check ``predicate`` after each short pause until it holds (for kernel-side state
    that nothing announces, such as a process having stopped); fail after ``timeout``."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - the kernel announces no such change
            await asyncio.sleep(0.01)
    assert predicate(), what


class Fifo:
    """A named pipe a job writes readiness lines to; read without blocking the loop.

    Opened read-write and non-blocking, so opening never waits for a writer and a
    reader never sees end-of-file between writers.
    """

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        self._buffer = b""

    async def readline(self) -> bytes:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(STEP):
            while b"\n" not in self._buffer:
                readable = loop.create_future()
                loop.add_reader(self._fd, readable.set_result, None)
                try:
                    await readable
                finally:
                    loop.remove_reader(self._fd)
                self._buffer += os.read(self._fd, 4096)
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def write(self, data: bytes) -> None:
        """Write to the pipe (for a job that reads it); fits in the pipe buffer."""
        os.write(self._fd, data)

    def close(self) -> None:
        os.close(self._fd)


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Fifo]:
    pipe = Fifo(tmp_path / "ready.fifo")
    yield pipe
    pipe.close()
