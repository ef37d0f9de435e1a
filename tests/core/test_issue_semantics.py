"""SAGA/DRMAA2 semantics on the fake backend: array control, URLs that mean nothing,
refused calls, ``Compute.run(user=)``, existing hosts through the public path."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence

import pytest

import aiores
from aiores import ComputeDescription, JobDescription, JobState, ResourceState
from aiores.adaptor import AdaptorEnv, JobInfo
from aiores.testing import FakeJobs, FakePlugin, FakeSSHPlugin

pytestmark = pytest.mark.asyncio

DESC = JobDescription(executable="/bin/true")
STEP = 10.0


class ControlJobs(FakeJobs):
    """Fake jobs that can be held (queued ones), suspended and resumed (running ones),
    whose submits after the first ``accept`` stop once the job exists (mid-call),
    and whose submits may be refused or fail with ``error``."""

    accept: int | None = None
    error: Exception | None = None
    find_error: Exception | None = None

    def _now(self, id: str, *allowed: JobState) -> None:
        if self.cloud.jobs[id].state not in allowed:
            raise aiores.IncorrectState(f"job {id} is {self.cloud.jobs[id].state.name}")

    async def submit(self, description: JobDescription, token: str, *, hold: bool) -> JobInfo:
        if self.error is not None:
            raise self.error
        info = await super().submit(description, token, hold=hold)
        if self.accept is not None:
            if self.accept <= 0:
                await asyncio.Event().wait()  # accepted, but the answer never comes
            self.accept -= 1
        return info

    async def find(self, token: str) -> Sequence[JobInfo]:
        if self.find_error is not None:
            raise self.find_error
        return await super().find(token)

    async def hold(self, id: str) -> None:
        self._now(id, JobState.QUEUED)
        self.set(id, JobState.HELD)

    async def suspend(self, id: str) -> None:
        self._now(id, JobState.RUNNING)
        self.set(id, JobState.SUSPENDED)

    async def resume(self, id: str) -> None:
        self._now(id, JobState.SUSPENDED)
        self.set(id, JobState.RUNNING)


class ControlPlugin(FakePlugin):
    name = "fakectl"
    schemes = frozenset({"fakectl", "fakectl+ssh"})

    def accepts(self, url: aiores.URL) -> bool:
        return url.scheme in self.schemes

    def job_adaptor(self, url: aiores.URL, env: AdaptorEnv) -> ControlJobs:
        adaptor = ControlJobs(url, env, self.cloud)
        self.job_adaptors.append(adaptor)
        return adaptor

    @property
    def jobs(self) -> ControlJobs:
        """The (one) job adaptor opened."""
        (adaptor,) = self.job_adaptors
        assert isinstance(adaptor, ControlJobs)
        return adaptor


@pytest.fixture
def ctl() -> Iterator[ControlPlugin]:
    plugin = ControlPlugin()
    aiores.register_adaptor(plugin)
    try:
        yield plugin
    finally:
        aiores.unregister_adaptor(plugin.name)


def states(jobs: Sequence[aiores.Job]) -> list[JobState]:
    """The members' states (the fake pushes each change as it makes it)."""
    return [job.state for job in jobs]


async def test_array_control_acts_on_every_member_and_names_the_wrong_ones(
    ctl: ControlPlugin,
) -> None:
    async with aiores.Session(journal=None) as session:
        array = await session.job_service("fakectl://").submit_array(DESC, count=3)
        adaptor = ctl.jobs
        adaptor.finish(array[0].native_id or "")
        assert await array[0].wait(timeout=STEP) is JobState.DONE
        with pytest.raises(aiores.IncorrectState, match="could not suspend 1 of 3") as caught:
            await array.suspend()
        assert array[0].id in str(caught.value)
        assert states(array) == [JobState.DONE] + [JobState.SUSPENDED] * 2
        with pytest.raises(aiores.IncorrectState, match=r"\(DONE\)"):
            await array.resume()
        assert states(array) == [JobState.DONE] + [JobState.RUNNING] * 2
        await array.cancel()  # a finished member is no error for cancel
        assert states(array) == [JobState.DONE] + [JobState.CANCELED] * 2


async def test_array_hold_holds_members_not_submitted_yet(ctl: ControlPlugin) -> None:
    async with aiores.Session(journal=None) as session:
        array = await session.job_service("fakectl://").submit_array(DESC, count=4, max_parallel=2)
        adaptor = ctl.jobs
        # Two run (hold refuses running jobs), two wait for a slot: held.
        with pytest.raises(aiores.IncorrectState, match="could not hold 2 of 4") as caught:
            await array.hold()
        assert array[0].id in str(caught.value)
        assert array[1].id in str(caught.value)
        for job in array[:2]:
            adaptor.finish(job.native_id or "")
        assert await array[2].wait(JobState.HELD, timeout=STEP) is JobState.HELD
        assert await array[3].wait(JobState.HELD, timeout=STEP) is JobState.HELD
        with pytest.raises(aiores.IncorrectState, match="could not release 2 of 4"):
            await array.release()
        assert states(array) == [JobState.DONE] * 2 + [JobState.RUNNING] * 2
        await array.cancel()


async def test_cancelling_submit_array_mid_batch_cancels_what_was_accepted(
    ctl: ControlPlugin,
) -> None:
    async with aiores.Session(journal=None, cleanup_timeout=STEP) as session:
        js = session.job_service("fakectl://")
        await js._open()
        adaptor = ctl.jobs
        adaptor.accept = 1  # the first is accepted; the second hangs once it exists
        submitting = asyncio.create_task(js.submit_array(DESC, count=2))
        async with asyncio.timeout(STEP):
            await ctl.cloud.arrivals("submit:after", 2)
        submitting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await submitting
        assert len(ctl.cloud.jobs) == 2
        assert [job.state for job in ctl.cloud.jobs.values()] == [JobState.CANCELED] * 2


async def test_urls_that_mean_nothing_are_refused_at_once(ctl: ControlPlugin) -> None:
    async with aiores.Session(journal=None) as session:
        for url in ("local+ssh://", "sim+ssh://", "fakectl+local://"):
            with pytest.raises(aiores.IncorrectURL, match="means nothing"):
                session.job_service(url)
        with pytest.raises(aiores.IncorrectURL, match="means nothing"):
            session.manager("local+ssh://")
        for url in ("ssh://", "ssh://me@", "ssh://:2222"):
            with pytest.raises(aiores.IncorrectURL, match="names no host"):
                session.job_service(url)
        with pytest.raises(aiores.IncorrectURL, match="names no host"):
            await session.command_runner("ssh://")
        # A compound scheme its adaptor declares is taken.
        assert session.job_service("fakectl+ssh://login").url.transport == "ssh"


@pytest.mark.parametrize(
    ("error", "closed"),
    [
        (aiores.AuthenticationFailed("no credentials"), "failed"),
        (aiores.PermissionDenied("not allowed"), "failed"),
        (aiores.NoSuccess("cannot reach host:22"), "pending"),
    ],
)
async def test_a_failed_submit_whose_release_fails_logs_no_error(
    ctl: ControlPlugin,
    caplog: pytest.LogCaptureFixture,
    error: Exception,
    closed: str,
) -> None:
    async with aiores.Session(cleanup_timeout=STEP) as session:
        js = session.job_service("fakectl://")
        await js._open()
        adaptor = ctl.jobs
        adaptor.error = error
        adaptor.find_error = type(error)(str(error))  # the release meets it again
        with caplog.at_level(logging.DEBUG, logger="aiores"), pytest.raises(type(error)):
            await js.submit(DESC)
        assert session.journal is not None
        await session.journal.flush()
        (intent,) = await session.journal.intents()
        # Refused: nothing was made, the intent is closed; otherwise it is left for
        # recovery (reap) to find by token. Either way nothing at ERROR.
        assert intent.status == closed
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
        assert "releasing what" in caplog.text  # said, at debug level


async def test_a_refused_acquire_closes_its_intent(fake: FakePlugin) -> None:
    async with aiores.Session() as session:
        with pytest.raises(aiores.BadParameter):
            await session.manager("fake://").acquire(aiores.StorageDescription())
        assert session.journal is not None
        await session.journal.flush()
        (intent,) = await session.journal.intents()
        assert intent.status == "failed"
        assert (await session.recover()).in_flight == []


async def test_compute_run_as_another_user(fake: FakePlugin, fake_ssh: FakeSSHPlugin) -> None:
    async with aiores.Session(journal=None) as session:
        vm = await session.manager("fake://").acquire(ComputeDescription(ready=None))
        fake.cloud.set_state(vm.native_id, ResourceState.ACTIVE, "running")
        await vm.wait(ResourceState.ACTIVE, timeout=STEP)
        await vm.run("id -un", user="wf", timeout=0)
        await vm.run("id -un")
        assert fake_ssh.commands == [("fake-ssh://wf@vm", "id -un"), ("fake-ssh://vm", "id -un")]
        for bad in ("", "a@b"):
            with pytest.raises(aiores.BadParameter):
                await vm.run("true", user=bad)
        assert len(fake_ssh.commands) == 2


async def test_an_added_host_comes_through_the_manager_and_is_not_journalled() -> None:
    async with aiores.Session() as session:
        fleet = session.fleet()
        host = await fleet.add("local://", tags="here")
        assert host.state is ResourceState.ACTIVE
        assert host is await session.manager("hosts://").get("local://")
        assert session.journal is not None
        await session.journal.flush()
        assert await session.journal.objects("resource") == []
        assert (await host.run("echo hi")).stdout == "hi\n"
