"""local:// end to end, through the public API: aiores.Session, JobService, Job, Manager."""

from __future__ import annotations

import asyncio
import signal
import stat
from pathlib import Path

import psutil
import pytest

import aiores
from aiores import JobDescription, JobState, ResourceState

from .conftest import Fifo, group_members, kill_group, wait_until

sh = JobDescription.shell


@pytest.mark.asyncio
async def test_submit_and_wait(tmp_path: Path) -> None:
    async with aiores.Session(journal=tmp_path / "journal.sqlite") as session:
        js = session.job_service("local://")
        ok = await js.submit(JobDescription(executable="/bin/echo", arguments=["hi"]))
        bad = await js.submit(sh("echo oops >&2; exit 2"))
        assert await ok.wait() is JobState.DONE
        assert (ok.exit_code, ok.stdout, ok.stderr) == (0, "hi\n", "")
        assert ok.id == f"[local://]-[{ok.native_id}]"
        assert await bad.wait() is JobState.FAILED
        assert (bad.exit_code, bad.stderr) == (2, "oops\n")
        with pytest.raises(aiores.IncorrectState, match="RUNNING can no longer come"):
            await bad.wait(JobState.RUNNING)
        assert (await js.get(ok.id)) is ok


@pytest.mark.asyncio
async def test_errors_reach_the_caller() -> None:
    async with aiores.Session(journal=None) as session:
        js = session.job_service("local://")
        with pytest.raises(aiores.DoesNotExist, match="'/no/such/bin' does not exist"):
            await js.submit(JobDescription(executable="/no/such/bin"))
        with pytest.raises(aiores.DoesNotExist, match="working directory '/no/such/dir'"):
            await js.submit(sh("true", working_directory="/no/such/dir"))
        assert await js.list() == []


@pytest.mark.asyncio
async def test_cancel_suspend_resume(fifo: Fifo) -> None:
    async with aiores.Session(journal=None) as session:
        js = session.job_service("local://?grace=0.5")
        job = await js.submit(sh(f"echo ready > {fifo.path}; exec sleep 30"))
        await fifo.readline()
        proc = psutil.Process(await pid_of(session, job))
        await job.suspend()
        assert job.state is JobState.SUSPENDED
        await wait_until(lambda: proc.status() == psutil.STATUS_STOPPED, "stopped")
        await job.resume()
        assert await job.wait(JobState.RUNNING, timeout=5) is JobState.RUNNING
        await job.cancel()
        assert await job.wait(timeout=5) is JobState.CANCELED
        assert job.exit_code == -signal.SIGTERM
        with pytest.raises(aiores.IncorrectState):
            await job.cancel()


@pytest.mark.asyncio
async def test_hold_release_and_max_running() -> None:
    async with aiores.Session(journal=None) as session:
        js = session.job_service("local://?max_running=2")
        held = await js.submit(sh("echo held"), hold=True)
        assert held.state is JobState.HELD
        jobs = await asyncio.gather(*(js.submit(sh("sleep 0.1; echo $$")) for _ in range(5)))
        assert sorted(j.state.name for j in jobs) == ["QUEUED"] * 3 + ["RUNNING"] * 2
        assert await aiores.JobArray(jobs).wait(timeout=10) == [JobState.DONE] * 5
        assert held.state is JobState.HELD  # free slots do not start a held job
        await held.release()
        assert await held.wait(timeout=5) is JobState.DONE
        assert held.stdout == "held\n"


@pytest.mark.asyncio
async def test_array_with_max_parallel(tmp_path: Path) -> None:
    async with aiores.Session(journal=tmp_path / "journal.sqlite") as session:
        js = session.job_service("local://")
        array = await js.submit_array(sh('echo "$AIORES_ARRAY_INDEX"'), count=12, max_parallel=3)
        assert await array.wait(timeout=20) == [JobState.DONE] * 12
        assert [job.stdout for job in array] == [f"{i}\n" for i in range(12)]


@pytest.mark.asyncio
async def test_wait_any_and_as_completed(fifo: Fifo) -> None:
    async with aiores.Session(journal=None) as session:
        js = session.job_service("any://")  # any:// with no host is this host
        slow = await js.submit(sh(f"head -n 1 {fifo.path}"))
        quick = await js.submit(sh("echo quick"))
        assert await aiores.wait_any([slow, quick], timeout=5) is quick
        order = []
        async for job in aiores.as_completed([slow, quick], timeout=5):
            order.append(job.stdout)
            fifo.write(b"slow\n")  # lets the slow one finish
        assert order == ["quick\n", "slow\n"]


@pytest.mark.asyncio
async def test_jobs_outlive_the_session(fifo: Fifo) -> None:
    async with aiores.Session(journal=None) as session:
        job = await session.job_service("local://").submit(
            sh(f"echo ready > {fifo.path}; exec sleep 30", stdout="/dev/null")
        )
        await fifo.readline()
        pid = await pid_of(session, job)
    assert job.state is JobState.RUNNING
    try:
        assert [p.pid for p in group_members(pid)] == [pid]
        assert psutil.Process(pid).status() in (psutil.STATUS_SLEEPING, psutil.STATUS_RUNNING)
    finally:
        kill_group(pid)
    await wait_until(lambda: not psutil.pid_exists(pid), "reaped after the session closed")


async def pid_of(session: aiores.Session, job: aiores.Job) -> int:
    """The job's process id (a backend fact the adaptor reports in ``extra``)."""
    assert job.native_id is not None
    adaptor = await session.job_adaptor(job.service.url)
    info = (await adaptor.describe([job.native_id]))[job.native_id]
    return int(info.extra["pid"])


@pytest.mark.asyncio
async def test_local_host_as_a_resource(tmp_path: Path) -> None:
    async with aiores.Session(journal=tmp_path / "journal.sqlite") as session:
        mgr = session.manager("local://")
        [template] = await mgr.list_templates()
        assert template.name == "localhost"
        desc = aiores.ComputeDescription(tags=frozenset({"here"}), ready=None)
        vm = await mgr.acquire(desc)
        assert isinstance(vm, aiores.Compute)
        assert await vm.wait(ResourceState.ACTIVE, timeout=5) is ResourceState.ACTIVE
        assert (vm.access, vm.public_address, vm.tags) == (
            "local://",
            "127.0.0.1",
            frozenset({"here"}),
        )
        result = await vm.run(["sh", "-c", "echo $0 $AIORES_Z", "x"], env={"AIORES_Z": "z"})
        assert (result.exit_status, result.stdout, result.resource) == (0, "x z\n", vm)
        with pytest.raises(aiores.Timeout):
            await vm.run("sleep 30", timeout=0.2)
        src = tmp_path / "src"
        (src / "bin").mkdir(parents=True)
        (src / "bin" / "tool").write_text("#!/bin/sh\necho tool\n")
        (src / "bin" / "tool").chmod(0o750)
        await vm.put(src, str(tmp_path / "remote"))
        await vm.get(str(tmp_path / "remote"), tmp_path / "back")
        tool = tmp_path / "back" / "bin" / "tool"
        assert stat.S_IMODE(tool.stat().st_mode) == 0o750
        job = await vm.job_service().submit(JobDescription(executable=str(tool)))
        assert await job.wait(timeout=5) is JobState.DONE
        assert job.stdout == "tool\n"
        await vm.destroy()
        assert await vm.wait(timeout=5) is ResourceState.CANCELED
        assert await mgr.list() == []
