"""Fixtures for the ssh:// tests: real OpenSSH sshds and a stand-in AdaptorEnv.

Two sshds run for the whole test session: one with OpenSSH's default limits
(MaxStartups 10:30:100, MaxSessions 10), one permissive (MaxStartups 1000:30:1000,
MaxSessions 100). Both log in as ``aiores-test`` (shell ``/bin/sh``) with a generated
client key; their host key is in a known_hosts file the contexts name. They are
stopped at the end of the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
import psutil
import pytest
import pytest_asyncio

from aiores import JobDescription, SSHContext
from aiores._clock import LoopClock
from aiores.adaptor import URL, Adaptor, JobInfo, concurrency
from aiores_ssh import SSHCommandRunner, SSHFileAdaptor, SSHJobAdaptor

from .servers import PERMISSIVE, USER, Keys, Sshd, ensure_user

C = TypeVar("C")
T = TypeVar("T")
A = TypeVar("A", bound=Adaptor)

#: Seconds any one await in these tests may take before the test fails.
STEP = 20.0


class FakeEnv:
    """An AdaptorEnv: one SSHContext, background tasks the fixture cancels at the end."""

    def __init__(self, state_dir: Path, ctx: SSHContext | None) -> None:
        self._state_dir = state_dir
        self.ctx = ctx
        self.clock = LoopClock()
        self.tasks: set[asyncio.Task[None]] = set()
        self.failures: list[BaseException] = []
        self.pins: dict[tuple[str, int | None], tuple[str, ...]] = {}
        self.logins: dict[tuple[str, int | None], tuple[str, ...]] = {}
        self.session_id = "s-test"
        self.cleanups = concurrency.Cleanups(20.0)
        self._shared = concurrency.Shared(20.0)

    def shared(self, key: Hashable, make: Callable[[], T]) -> T:
        return self._shared.get(key, make)

    @property
    def state_dir(self) -> Path:
        return self._state_dir

    def context(self, kind: type[C], host: str = "") -> C | None:
        if self.ctx is not None and isinstance(self.ctx, kind):
            return self.ctx
        return None

    def pinned_host_keys(self, host: str, port: int | None) -> tuple[str, ...]:
        return self.pins.get((host, port), ())

    def login_keys(self, host: str, port: int | None) -> tuple[str, ...]:
        return self.logins.get((host, port), ())

    def spawn(self, fn: Callable[[], Awaitable[None]], *, name: str) -> None:
        async def guarded() -> None:
            try:
                await fn()
            except Exception as exc:
                self.failures.append(exc)

        task = asyncio.create_task(guarded(), name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def command_runner(self, url: str | URL) -> Any:
        raise NotImplementedError

    job_adaptor = file_adaptor = command_runner

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.cleanups.drain(20.0)
        await self._shared.aclose()


class TrackedJobs(SSHJobAdaptor):
    """Remembers what it submitted, so a failed test leaves no job running."""

    submitted: list[str]

    async def submit(self, description: JobDescription, token: str, *, hold: bool) -> JobInfo:
        info = await super().submit(description, token, hold=hold)
        self.submitted.append(info.id)
        return info

    async def cancel_leftovers(self) -> None:
        if self.submitted:
            self.cancel_grace = 0.5
            infos = await self.describe(self.submitted)
            for info in infos.values():
                if not info.state.final:
                    await self.cancel(info.id)


class Adaptors:
    """Opens ssh adaptors on a FakeEnv and closes them (and the pool) at the end."""

    def __init__(self, env: FakeEnv) -> None:
        self.env = env
        self.opened: list[Adaptor] = []
        self.published: asyncio.Queue[JobInfo] = asyncio.Queue()

    async def make(self, cls: type[A], url: str) -> A:
        adaptor = cls(URL.parse(url), self.env)
        adaptor.set_listener(self.published.put_nowait)
        await adaptor.open()
        self.opened.append(adaptor)
        return adaptor

    async def runner(self, url: str) -> SSHCommandRunner:
        return await self.make(SSHCommandRunner, url)

    async def jobs(self, url: str) -> SSHJobAdaptor:
        jobs = await self.make(TrackedJobs, url)
        jobs.submitted = []
        return jobs

    async def files(self, url: str) -> SSHFileAdaptor:
        return await self.make(SSHFileAdaptor, url)

    async def close(self) -> None:
        for adaptor in self.opened:
            if isinstance(adaptor, TrackedJobs):
                await adaptor.cancel_leftovers()
        for adaptor in reversed(self.opened):
            await adaptor.aclose()
        await self.env.close()
        assert not self.env.failures, self.env.failures


@pytest.fixture(scope="session")
def test_home() -> Path:
    """The test user's home; the jobs directory there is emptied once per session."""
    home = Path(ensure_user().pw_dir)
    shutil.rmtree(home / ".aiores", ignore_errors=True)
    return home


@pytest.fixture(scope="session")
def sshd_permissive(keys: Keys) -> Iterator[Sshd]:
    """sshd with MaxStartups 1000:30:1000 and MaxSessions 100."""
    server = Sshd(keys, "permissive", PERMISSIVE)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_env(tmp_path: Path) -> Callable[[SSHContext | None], FakeEnv]:
    def make(ctx: SSHContext | None) -> FakeEnv:
        return FakeEnv(tmp_path / "state", ctx)

    return make


@pytest_asyncio.fixture
async def adaptors(sshd: Sshd, tmp_path: Path) -> AsyncIterator[Adaptors]:
    """Adaptors on one FakeEnv whose context reaches the default-limits sshd."""
    made = Adaptors(FakeEnv(tmp_path / "state", sshd.context()))
    try:
        yield made
    finally:
        await made.close()


@contextlib.asynccontextmanager
async def opened(env: FakeEnv) -> AsyncIterator[Adaptors]:
    made = Adaptors(env)
    try:
        yield made
    finally:
        await made.close()


def gone(pid: int) -> bool:
    """True if ``pid`` has ended (a zombie nobody reaped counts as ended)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def record_commands(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every command line the client sends to a server from now on (the test's part)."""
    sent: list[str] = []
    create = asyncssh.SSHClientConnection.create_session

    async def recording(self: Any, factory: Any, command: Any = (), **kwargs: Any) -> Any:
        sent.append(str(command))
        return await create(self, factory, command, **kwargs)

    monkeypatch.setattr(asyncssh.SSHClientConnection, "create_session", recording)
    return sent


async def wait_until(predicate: Callable[[], bool], timeout: float = STEP) -> None:
    """Await ``predicate()`` becoming true, checking as the loop turns (bounded)."""
    async with asyncio.timeout(timeout):
        # The condition lives on the server side (a pid, a file): nothing to await.
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


__all__ = [
    "STEP",
    "USER",
    "Adaptors",
    "FakeEnv",
    "gone",
    "opened",
    "record_commands",
    "wait_until",
]
