"""A fake backend for unit tests of the core: in-memory resources and jobs.

It has pause points (``cloud.pause_at("acquire:after")``) where a call stops until
cancelled, so tests can cancel at each step of a backend call, and it counts its
calls, so tests can prove what the core asked for.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from aiores import ComputeDescription, JobDescription, JobState, ResourceState, RunResult
from aiores._url import URL
from aiores.adaptor import (
    AdaptorEnv,
    AdaptorPlugin,
    CommandRunner,
    Image,
    JobAdaptor,
    JobInfo,
    PollPolicy,
    ResourceAdaptor,
    ResourceInfo,
    Template,
)

POLICY = PollPolicy(floor=1.0, ceiling=8.0, backoff=2.0, jitter=0.0, batch=50)


@dataclass
class FakeCloud:
    """The backend's own truth, shared by every adaptor instance (and session)."""

    resources: dict[str, ResourceInfo] = field(default_factory=dict)
    jobs: dict[str, JobInfo] = field(default_factory=dict)
    describe_calls: list[int] = field(default_factory=list)  # ids per call
    destroy_calls: list[list[str]] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    paused: dict[str, asyncio.Event] = field(default_factory=dict)
    describe_error: Exception | None = None
    destroy_delay: asyncio.Event | None = None  # destroy waits for it when set
    running_jobs: int = 0
    max_running_jobs: int = 0
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def arrivals(self, name: str, count: int) -> None:
        """Return once ``count`` calls have reached point ``name``."""
        async with self._arrived:
            await self._arrived.wait_for(lambda: self.calls.count(name) >= count)

    def pause_at(self, point: str) -> asyncio.Event:
        """Make calls stop at ``point``; the returned event is set when one arrives."""
        reached = asyncio.Event()
        self.paused[point] = reached
        return reached

    async def point(self, name: str) -> None:
        self.calls.append(name)
        async with self._arrived:
            self._arrived.notify_all()
        reached = self.paused.get(name)
        if reached is not None:
            reached.set()
            await asyncio.Event().wait()  # until cancelled

    def alive(self) -> list[str]:
        return [i for i, r in self.resources.items() if not r.state.final]

    def set_state(self, rid: str, state: ResourceState, detail: str = "") -> None:
        self.resources[rid] = replace(self.resources[rid], state=state, state_detail=detail)

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"


class FakeResources(ResourceAdaptor):
    poll = POLICY

    def __init__(self, url: URL, env: AdaptorEnv, cloud: FakeCloud) -> None:
        super().__init__(url, env)
        self.cloud = cloud

    async def acquire(self, description: object, count: int, token: str) -> Sequence[ResourceInfo]:
        await self.cloud.point("acquire:before")
        assert isinstance(description, ComputeDescription)
        infos = []
        for _ in range(count):
            info = ResourceInfo(
                id=self.cloud.new_id("vm"),
                state=ResourceState.PENDING,
                state_detail="pending",
                tags=description.tags,
                token=token,
                access="fake-ssh://vm",
            )
            self.cloud.resources[info.id] = info
            infos.append(info)
        await self.cloud.point("acquire:after")
        return infos

    async def find(self, token: str) -> Sequence[ResourceInfo]:
        await self.cloud.point("find")
        return [r for r in self.cloud.resources.values() if r.token == token and not r.state.final]

    async def destroy(self, ids: Sequence[str]) -> None:
        self.cloud.destroy_calls.append(list(ids))
        await self.cloud.point("destroy")
        if self.cloud.destroy_delay is not None:
            await self.cloud.destroy_delay.wait()
        for rid in ids:
            if rid in self.cloud.resources:
                self.cloud.set_state(rid, ResourceState.CANCELED, "terminated")

    async def describe(self, ids: Sequence[str]) -> Mapping[str, ResourceInfo]:
        self.cloud.describe_calls.append(len(ids))
        if self.cloud.describe_error is not None:
            raise self.cloud.describe_error
        return {i: self.cloud.resources[i] for i in ids if i in self.cloud.resources}

    async def list(self, tags: frozenset[str] = frozenset()) -> Sequence[ResourceInfo]:
        return [r for r in self.cloud.resources.values() if tags <= r.tags]

    async def list_templates(self) -> Sequence[Template]:
        return [Template(name="small", cpus=1, memory=1024), Template(name="large", cpus=8)]

    async def list_images(self) -> Sequence[Image]:
        return [Image(name="fake-linux")]


class FakeJobs(JobAdaptor):
    """Jobs that run until the test finishes them (``finish``); pushes or is polled."""

    supports_hold = True

    def __init__(self, url: URL, env: AdaptorEnv, cloud: FakeCloud) -> None:
        super().__init__(url, env)
        self.cloud = cloud
        if url.params.get("mode") == "poll":
            self.poll = POLICY

    async def submit(self, description: JobDescription, token: str, *, hold: bool) -> JobInfo:
        await self.cloud.point("submit:before")
        state = JobState.HELD if hold else JobState.RUNNING
        info = JobInfo(
            id=self.cloud.new_id("job"),
            state=state,
            token=token,
            extra={"environment": dict(description.environment)},
        )
        self.cloud.jobs[info.id] = info
        if state is JobState.RUNNING:
            self._started()
        await self.cloud.point("submit:after")
        return info

    def _started(self) -> None:
        self.cloud.running_jobs += 1
        self.cloud.max_running_jobs = max(self.cloud.max_running_jobs, self.cloud.running_jobs)

    def set(self, jid: str, state: JobState, exit_code: int | None = None) -> None:
        old = self.cloud.jobs[jid]
        if old.state is JobState.RUNNING and state is not JobState.RUNNING:
            self.cloud.running_jobs -= 1
        info = replace(old, state=state, exit_code=exit_code)
        self.cloud.jobs[jid] = info
        if self.poll is None:
            self.publish(info)

    def finish(self, jid: str, exit_code: int = 0) -> None:
        self.set(jid, JobState.DONE if exit_code == 0 else JobState.FAILED, exit_code)

    async def describe(self, ids: Sequence[str]) -> Mapping[str, JobInfo]:
        self.cloud.describe_calls.append(len(ids))
        return {i: self.cloud.jobs[i] for i in ids if i in self.cloud.jobs}

    async def find(self, token: str) -> Sequence[JobInfo]:
        return [j for j in self.cloud.jobs.values() if j.token == token]

    async def list(self) -> Sequence[JobInfo]:
        return list(self.cloud.jobs.values())

    async def cancel(self, id: str) -> None:
        self.set(id, JobState.CANCELED)

    async def release(self, id: str) -> None:
        self.set(id, JobState.RUNNING)
        self._started()


class FakePlugin(AdaptorPlugin):
    name = "fake"
    schemes = frozenset({"fake"})

    def __init__(self) -> None:
        self.cloud = FakeCloud()
        self.job_adaptors: list[FakeJobs] = []

    def accepts(self, url: URL) -> bool:
        return url.scheme == "fake" or (url.scheme == "any" and url.host == "fakehost")

    def resource_adaptor(self, url: URL, env: AdaptorEnv) -> FakeResources:
        return FakeResources(url, env, self.cloud)

    def job_adaptor(self, url: URL, env: AdaptorEnv) -> FakeJobs:
        adaptor = FakeJobs(url, env, self.cloud)
        self.job_adaptors.append(adaptor)
        return adaptor


class FakeRunner(CommandRunner):
    """Answers commands with the scripted outcomes, one per call (then success)."""

    def __init__(self, url: URL, env: AdaptorEnv, plugin: FakeSSHPlugin) -> None:
        super().__init__(url, env)
        self.plugin = plugin

    async def run(
        self,
        command: str | Sequence[str],
        *,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> RunResult:
        self.plugin.commands.append((str(self.url), command))
        if self.plugin.outcomes:
            outcome = self.plugin.outcomes.pop(0)
            if isinstance(outcome, Exception):
                raise outcome
        return RunResult(exit_status=0)


class FakeSSHPlugin(AdaptorPlugin):
    """fake-ssh://: a transport whose readiness answers the tests script."""

    name = "fake-ssh"
    schemes = frozenset({"fake-ssh"})

    def __init__(self) -> None:
        self.commands: list[tuple[str, object]] = []
        self.outcomes: list[Exception | None] = []

    def command_runner(self, url: URL, env: AdaptorEnv) -> FakeRunner:
        return FakeRunner(url, env, self)
