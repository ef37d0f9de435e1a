"""Aids for testing code that uses aiores: a fake clock and an in-memory backend.

:class:`FakeClock` replaces the session's clock so that time-based logic (the watcher's
poll interval and backoff) runs deterministically without sleeping::

    clock = FakeClock()
    async with aiores.Session(journal=None, clock=clock) as session:
        ...
        await clock.wait_for_sleepers()   # the watcher is waiting for its next tick
        clock.advance(1.0)                # ... which is now due

:class:`FakePlugin` is a mock backend, as ``httpx.MockTransport`` is for httpx: register
it and ``fake://`` URLs reach an in-memory :class:`FakeCloud` whose resources and jobs
the test drives by hand, so code that uses aiores is tested with no cloud, no process
and no network::

    fake = aiores.testing.FakePlugin()
    aiores.register_adaptor(fake)
    try:
        async with aiores.Session(journal=None, clock=clock) as session:
            vm = await session.manager("fake://").acquire(aiores.ComputeDescription())
            fake.cloud.set_state(vm.native_id, aiores.ResourceState.ACTIVE)
            job = await session.job_service("fake://").submit(desc)
            fake.job_adaptors[0].finish(job.native_id, exit_code=0)
            ...
    finally:
        aiores.unregister_adaptor(fake.name)

Resources start PENDING and change only when the test says so
(:meth:`FakeCloud.set_state`); the session's watcher sees the change on its next poll
(:data:`POLL_POLICY`, on the session's clock). Jobs start RUNNING (HELD if submitted
held) and end with :meth:`FakeJobs.finish`; they push their changes, or are polled
with ``fake://?mode=poll``. Every call is counted (:attr:`FakeCloud.calls`,
``describe_calls``, ``destroy_calls``), and :meth:`FakeCloud.pause_at` stops calls at
a named point until they are cancelled, to test cancellation at each step of a backend
call. :class:`FakeSSHPlugin` (``fake-ssh://``) is a command runner that answers with
scripted outcomes.

For a simulated cloud of real SSH servers, see :mod:`aiores_sim.testing`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from aiores import (
    URL,
    BadParameter,
    ComputeDescription,
    JobDescription,
    JobState,
    ResourceState,
    RunResult,
)
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

__all__ = [
    "POLL_POLICY",
    "FakeClock",
    "FakeCloud",
    "FakeJobs",
    "FakePlugin",
    "FakeResources",
    "FakeRunner",
    "FakeSSHPlugin",
]


class FakeClock:
    """A clock that moves only when told to (:meth:`advance`)."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._changed: asyncio.Event | None = None

    def now(self) -> float:
        return self._now

    def _event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + max(0.0, seconds), next(self._seq), fut))
        self._event().set()
        await fut

    @property
    def sleepers(self) -> int:
        """How many sleeps are pending."""
        return sum(1 for _, _, fut in self._sleepers if not fut.done())

    def next_deadline(self) -> float | None:
        """When the earliest pending sleep ends, or None."""
        for deadline, _, fut in sorted(self._sleepers):
            if not fut.done():
                return deadline
        return None

    async def wait_for_sleepers(self, count: int = 1) -> None:
        """Return once at least ``count`` sleeps are pending (no real time passes)."""
        while self.sleepers < count:
            event = self._event()
            event.clear()
            await event.wait()

    def advance(self, seconds: float) -> None:
        """Move time forward, ending every sleep that is due by then."""
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    def advance_to_next(self) -> float:
        """Advance to the earliest pending deadline; returns the step taken."""
        deadline = self.next_deadline()
        if deadline is None:
            raise RuntimeError("no sleep is pending")
        step = max(0.0, deadline - self._now)
        self.advance(step)
        return step


# -- an in-memory backend ----------------------------------------------------------------

#: How the session's watcher polls fake:// resources (and jobs with ``?mode=poll``).
POLL_POLICY = PollPolicy(floor=1.0, ceiling=8.0, backoff=2.0, jitter=0.0, batch=50)


@dataclass
class FakeCloud:
    """The backend's own truth, shared by every adaptor instance (and session).

    Attributes:
        resources: Every resource by id, as the backend would describe it.
        jobs: Every job by id.
        describe_calls: How many ids each ``describe`` call asked for, in order.
        destroy_calls: The ids of each ``destroy`` call, in order.
        calls: The points calls reached, in order (``"acquire:before"``,
            ``"acquire:after"``, ``"find"``, ``"destroy"``, ``"submit:before"``,
            ``"submit:after"``).
        paused: The points where calls stop (see :meth:`pause_at`).
        describe_error: Raised by every resource ``describe`` while set.
        destroy_delay: While set, ``destroy`` waits for this event.
        running_jobs: Jobs RUNNING now.
        max_running_jobs: The most jobs that were RUNNING at once.
    """

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
        """A call reaches point ``name``: counted, and stopped there if paused."""
        self.calls.append(name)
        async with self._arrived:
            self._arrived.notify_all()
        reached = self.paused.get(name)
        if reached is not None:
            reached.set()
            await asyncio.Event().wait()  # until cancelled

    def alive(self) -> list[str]:
        """The ids of resources in no final state."""
        return [i for i, r in self.resources.items() if not r.state.final]

    def set_state(self, rid: str, state: ResourceState, detail: str = "") -> None:
        """Change resource ``rid`` (its native id); the watcher sees it on its next poll."""
        self.resources[rid] = replace(self.resources[rid], state=state, state_detail=detail)

    def new_id(self, prefix: str) -> str:
        """A fresh id: ``vm-0``, ``job-1``..."""
        return f"{prefix}-{next(self._ids)}"


class FakeResources(ResourceAdaptor):
    """fake:// resources: compute that starts PENDING; polled (:data:`POLL_POLICY`)."""

    poll = POLL_POLICY

    def __init__(self, url: URL, env: AdaptorEnv, cloud: FakeCloud) -> None:
        super().__init__(url, env)
        self.cloud = cloud

    async def acquire(self, description: object, count: int, token: str) -> Sequence[ResourceInfo]:
        await self.cloud.point("acquire:before")
        if not isinstance(description, ComputeDescription):
            raise BadParameter("fake:// offers compute resources only")
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
            self.poll = POLL_POLICY

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
        """Change job ``jid`` (its native id); pushed at once unless polled."""
        old = self.cloud.jobs[jid]
        if old.state is JobState.RUNNING and state is not JobState.RUNNING:
            self.cloud.running_jobs -= 1
        info = replace(old, state=state, exit_code=exit_code)
        self.cloud.jobs[jid] = info
        if self.poll is None:
            self.publish(info)

    def finish(self, jid: str, exit_code: int = 0) -> None:
        """End job ``jid``: DONE with exit code 0, else FAILED."""
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
    """The fake backend: ``fake://`` (and ``any://fakehost``) resources and jobs.

    Register it with :func:`aiores.register_adaptor` for a test, and unregister it by
    its :attr:`name` after. Every adaptor it opens shares one :attr:`cloud`;
    :attr:`job_adaptors` lists the job adaptors opened, in order.
    """

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
    """Answers commands with the scripted outcomes, one per call (then success).

    A scripted :class:`~aiores.RunResult` is returned as it is, its output first
    handed to ``on_output`` in chunks of the plugin's :attr:`~FakeSSHPlugin.chunk_size`
    bytes, stdout's before stderr's.
    """

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
        on_output: Callable[[str, bytes], None] | None = None,
    ) -> RunResult:
        self.plugin.commands.append((str(self.url), command))
        result = RunResult(exit_status=0)
        if self.plugin.outcomes:
            outcome = self.plugin.outcomes.pop(0)
            if isinstance(outcome, Exception):
                raise outcome
            if outcome is not None:
                result = outcome
        if on_output is not None:
            size = self.plugin.chunk_size
            for stream, text in (("stdout", result.stdout), ("stderr", result.stderr)):
                data = text.encode()
                for at in range(0, len(data), size or len(data) or 1):
                    on_output(stream, data[at : at + size] if size else data)
        return result


class FakeSSHPlugin(AdaptorPlugin):
    """fake-ssh://: a command runner that answers with the outcomes the test scripts.

    Each command is recorded in :attr:`commands` as ``(url, command)``; each takes the
    next of :attr:`outcomes` (an exception is raised, None succeeds, a RunResult is
    the result), then all succeed. :attr:`chunk_size` (None: all at once) is how a
    result's output is cut for ``on_output``.
    """

    name = "fake-ssh"
    schemes = frozenset({"fake-ssh"})

    def __init__(self) -> None:
        self.commands: list[tuple[str, object]] = []
        self.outcomes: list[Exception | RunResult | None] = []
        self.chunk_size: int | None = None

    def command_runner(self, url: URL, env: AdaptorEnv) -> FakeRunner:
        return FakeRunner(url, env, self)
