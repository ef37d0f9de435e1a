"""Fixtures for the pool tests: the fake backend with machines of their own, commands
that end when the test says, and the sim cloud for the end-to-end tests.

``fake://`` machines here each have an access URL of their own (``pool-ssh://vm-3``),
whose command runner (:class:`Commands`) records every command with the machine it
ran on and holds it until the test ends it (or ends every command at once with
``auto``), and whose job service is the fake backend's.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest
import pytest_asyncio

import aiores
from aiores import URL, ResourceState, RunResult
from aiores.adaptor import AdaptorEnv, AdaptorPlugin, CommandRunner, ResourceInfo
from aiores.testing import FakeClock, FakeCloud, FakeJobs, FakePlugin, FakeResources
from aiores_sim import managed_key

__all__ = [
    "STEP",
    "Call",
    "Commands",
    "PoolPlugin",
    "clock",
    "commands",
    "fake",
    "session",
    "sim_session",
    "until",
    "working",
]

#: Real seconds any one wait of these tests may take before the test fails.
STEP = 20.0


@dataclasses.dataclass
class Call:
    """One command on one machine."""

    host: str
    command: str
    ended: asyncio.Future[RunResult]
    cancelled: bool = False


class Commands:
    """What ran where; commands end when the test says (or at once with ``auto``)."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.auto: int | None = None  # exit status every command ends with at once
        self.failures: dict[str, Exception] = {}  # host -> raised by its commands
        self.running: dict[str, int] = {}  # command -> attempts running now
        self.most: dict[str, int] = {}  # command -> most attempts running at once
        self.arrived = asyncio.Event()

    def live(self, command: str | None = None) -> list[Call]:
        return [
            c
            for c in self.calls
            if not c.ended.done() and (command is None or c.command == command)
        ]

    def end(self, command: str, exit_status: int = 0) -> Call:
        (call,) = self.live(command)
        call.ended.set_result(RunResult(exit_status=exit_status, stdout=call.host))
        return call

    async def started(self, count: int) -> None:
        """Wait until ``count`` commands are running."""
        async with asyncio.timeout(STEP):
            while len(self.live()) < count:
                self.arrived.clear()
                await self.arrived.wait()

    async def run(self, host: str, command: str) -> RunResult:
        if host in self.failures:
            raise self.failures[host]
        call = Call(host, command, asyncio.get_running_loop().create_future())
        if self.auto is not None:
            call.ended.set_result(RunResult(exit_status=self.auto, stdout=host))
        self.calls.append(call)
        self.running[command] = self.running.get(command, 0) + 1
        self.most[command] = max(self.most.get(command, 0), self.running[command])
        self.arrived.set()
        try:
            return await call.ended
        except asyncio.CancelledError:
            call.cancelled = True
            raise
        finally:
            self.running[command] -= 1


class _Resources(FakeResources):
    renewals: list[tuple[str, float]]  # (machine, seconds) of every renew, in order

    async def renew(self, id: str, seconds: float) -> ResourceInfo:
        """A lease renewed (the test ends leased machines itself, EXPIRED)."""
        info = self.cloud.resources[id]
        if info.state.final:
            raise aiores.IncorrectState(f"{id} has ended")
        self.renewals.append((id, seconds))
        return info

    async def acquire(self, description: object, count: int, token: str) -> Sequence[ResourceInfo]:
        infos = []
        for info in await super().acquire(description, count, token):
            info = dataclasses.replace(info, access=f"pool-ssh://{info.id}")
            self.cloud.resources[info.id] = info
            infos.append(info)
        return infos


class _Runner(CommandRunner):
    def __init__(self, url: URL, env: AdaptorEnv, commands: Commands) -> None:
        super().__init__(url, env)
        self.commands = commands

    async def run(
        self,
        command: str | Sequence[str],
        *,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        on_output: Callable[[str, bytes], None] | None = None,
    ) -> RunResult:
        return await self.commands.run(self.url.host, str(command))


class PoolPlugin(FakePlugin):
    name = "fake"
    schemes = frozenset({"fake"})

    def __init__(self, commands: Commands) -> None:
        super().__init__()
        self.commands = commands
        self.machines = _Machines(self.cloud, commands)
        self.renewals: list[tuple[str, float]] = []

    def resource_adaptor(self, url: URL, env: AdaptorEnv) -> FakeResources:
        adaptor = _Resources(url, env, self.cloud)
        adaptor.renewals = self.renewals
        return adaptor


class _Machines(AdaptorPlugin):
    """pool-ssh://vm-N: the machines' commands and jobs."""

    name = "pool-ssh"
    schemes = frozenset({"pool-ssh"})

    def __init__(self, cloud: FakeCloud, commands: Commands) -> None:
        self.cloud = cloud
        self.commands = commands
        self.jobs: list[FakeJobs] = []

    def command_runner(self, url: URL, env: AdaptorEnv) -> CommandRunner:
        return _Runner(url, env, self.commands)

    def job_adaptor(self, url: URL, env: AdaptorEnv) -> FakeJobs:
        adaptor = FakeJobs(url, env, self.cloud)
        self.jobs.append(adaptor)
        return adaptor


@pytest.fixture
def commands() -> Commands:
    return Commands()


@pytest.fixture
def fake(commands: Commands) -> Iterator[PoolPlugin]:
    plugin = PoolPlugin(commands)
    machines = plugin.machines
    aiores.register_adaptor(plugin)
    aiores.register_adaptor(machines)
    try:
        yield plugin
    finally:
        aiores.unregister_adaptor(machines.name)
        aiores.unregister_adaptor(plugin.name)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest_asyncio.fixture
async def session(fake: PoolPlugin, clock: FakeClock) -> AsyncIterator[aiores.Session]:
    async with aiores.Session(journal=None, clock=clock, cleanup_timeout=5) as s:
        yield s


@pytest_asyncio.fixture
async def sim_session(aiores_sim_cloud: object, state_dir: Path) -> AsyncIterator[aiores.Session]:
    """A session on the test run's sim cloud, no journal; its SSH context names the
    aiores-managed key (which sim VMs authorize) and pins the VMs' published keys."""
    key = await asyncio.to_thread(managed_key, state_dir)
    ctx = aiores.SSHContext(key_files=[str(key)], known_hosts=[], config=[])
    async with aiores.Session(journal=None, contexts=[ctx]) as opened:
        yield opened


async def until(
    clock: FakeClock, holds: Callable[[], bool], *, step: float = 0.5, most: float = 300.0
) -> None:
    """Move the fake clock on by ``step`` at a time until ``holds()``.

    Between steps the loop runs what became due (all in memory). The test fails if
    ``holds()`` does not come within ``most`` fake seconds, or ``STEP`` real ones.
    """
    async with asyncio.timeout(STEP):
        for _ in range(int(most / step) + 1):
            for _ in range(20):
                if holds():
                    return
                await asyncio.sleep(0)
            clock.advance(step)
    raise AssertionError(f"not within {most} s (fake): {holds}")


async def working(
    pool: aiores.Pool, fake: PoolPlugin, clock: FakeClock, command: str
) -> tuple[asyncio.Task[RunResult], Call]:
    """Boot the pool's ``pool.min`` fake machines, run ``command`` on one: its run and call."""
    await until(clock, lambda: len(fake.cloud.resources) == pool.min)
    boot(fake.cloud)
    await until(clock, lambda: pool.stats().idle == pool.min)
    run = asyncio.ensure_future(pool.run(command))
    await until(clock, lambda: len(fake.commands.live(command)) >= 1)
    return run, fake.commands.live(command)[0]


def boot(cloud: FakeCloud, state: ResourceState = ResourceState.ACTIVE) -> list[str]:
    """Every PENDING fake machine to ``state``; their ids."""
    ids = [i for i, r in cloud.resources.items() if r.state is ResourceState.PENDING]
    for rid in ids:
        cloud.set_state(rid, state)
    return ids
