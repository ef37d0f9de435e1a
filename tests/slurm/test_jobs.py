"""slurm:// against a real single-node Slurm: submit, states, control, recovery."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

import aiores
from aiores import JobDescription, JobState
from aiores_slurm.testing import Cluster

from .conftest import STEP, Shim, until

pytestmark = [pytest.mark.asyncio, pytest.mark.usefixtures("no_jobs_left")]

CHILD = Path(__file__).with_name("child.py")
SLEEP = JobDescription(executable="/bin/sleep", arguments=["60"])


def poll_until(predicate: Callable[[], bool], timeout: float, every: float) -> None:
    """Block (in a thread) until ``predicate()``, a state of the cluster, holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{predicate.__name__} not true in {timeout} s"
        time.sleep(every)


def child(url: str, *args: str, env: dict[str, str] | None = None) -> list[str]:
    """Run child.py to its end; the words of its ``ids`` line."""
    done = subprocess.run(
        [sys.executable, str(CHILD), url, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for line in done.stdout.splitlines():
        if line.startswith("ids "):
            return line.split()[1:]
    raise AssertionError(done.stdout)


@pytest.fixture(scope="session")
def walltime_job(slurm_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A job over its walltime (1 minute, Slurm's least), submitted at the first test
    that asks, so the walltime test at the end of the module waits little."""
    state = tmp_path_factory.mktemp("walltime-state")
    jobs = tmp_path_factory.mktemp("walltime-jobs")
    url = f"slurm://?interval=0.3&conf={slurm_cluster.conf}&dir={jobs}"
    (job_id,) = child(url, "walltime", env={**os.environ, "AIORES_STATE_DIR": str(state)})
    return job_id


async def test_done_and_failed_with_exit_codes_and_output(
    slurm_url: str, tmp_path: Path, walltime_job: str
) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    async with aiores.Session() as session:
        js = session.job_service(slurm_url)
        ok = await js.submit(
            JobDescription.shell(
                'echo "out $GREETING"; echo err >&2; cat; pwd',
                environment={"GREETING": "a b 'c' $HOME"},
                stdin=b"in\x00put\n",
                name="greeting job",
            )
        )
        bad = await js.submit(
            JobDescription.shell(
                "echo to-file; exit 3", stdout="out.txt", working_directory=str(workdir)
            )
        )
        assert ok.state in (JobState.QUEUED, JobState.RUNNING, JobState.DONE)
        assert await ok.wait(timeout=STEP) is JobState.DONE
        assert ok.exit_code == 0
        assert ok.stdout_bytes is not None
        assert ok.stdout_bytes.startswith(b"out a b 'c' $HOME\nin\x00put\n")
        assert ok.stderr == "err\n"
        assert ok.extra["name"] == "greeting job"
        assert await bad.wait(timeout=STEP) is JobState.FAILED
        assert bad.exit_code == 3
        assert "NonZeroExitCode" in bad.state_detail or "exited 3" in bad.state_detail
        assert (workdir / "out.txt").read_text() == "to-file\n"
        assert bad.stdout is None


async def test_missing_working_directory_and_bad_partition(slurm_url: str) -> None:
    async with aiores.Session() as session:
        js = session.job_service(slurm_url)
        with pytest.raises(aiores.DoesNotExist):
            await js.submit(SLEEP.replace(working_directory="/no/such/dir"))
        with pytest.raises(aiores.BadParameter):
            await js.submit(SLEEP.replace(queue="nosuchpartition"))
        other = await js.submit(JobDescription(executable="true", queue="other", walltime=30))
        assert await other.wait(timeout=STEP) is JobState.DONE
        assert other.extra["partition"] == "other"


async def test_hold_release_suspend_resume_cancel(slurm_url: str) -> None:
    async with aiores.Session() as session:
        js = session.job_service(slurm_url)
        held = await js.submit(SLEEP, hold=True)
        assert held.state is JobState.HELD
        assert "JobHeld" in held.state_detail
        await held.release()
        await held.wait(JobState.RUNNING, timeout=STEP)
        await held.suspend()
        assert held.state is JobState.SUSPENDED
        await held.resume()
        assert held.state is JobState.RUNNING
        with pytest.raises(aiores.IncorrectState):
            await held.hold()  # running: Slurm holds only pending jobs
        await held.cancel()
        assert held.state is JobState.CANCELED
        assert "CANCELLED" in held.state_detail

        pending = await js.submit(SLEEP, hold=True)
        await pending.cancel()
        assert pending.state is JobState.CANCELED
        with pytest.raises(aiores.IncorrectState):
            await pending.release()

        again = await js.submit(SLEEP, hold=True)
        await again.hold()  # held already: stays held
        assert again.state is JobState.HELD
        await again.cancel()


async def test_cancelled_submit_leaves_no_job(slurm_url: str, slurm_cluster: Cluster) -> None:
    before = set(await asyncio.to_thread(slurm_cluster.live_jobs))
    async with aiores.Session() as session:
        js = session.job_service(slurm_url)
        for delay in (0.0, 0.01, 0.03, 0.06, 0.1):
            task = asyncio.create_task(js.submit(SLEEP))
            await asyncio.sleep(delay)
            task.cancel()
            try:
                job = await task
            except asyncio.CancelledError:
                continue
            await job.cancel()  # it was accepted before the cancel arrived
    assert set(await asyncio.to_thread(slurm_cluster.live_jobs)) <= before


async def test_job_that_left_the_queue(slurm_url: str, slurm_cluster: Cluster) -> None:
    async with aiores.Session() as session:
        job = await session.job_service(slurm_url).submit(JobDescription.shell("echo left; exit 4"))
        job_id = job.id
        native = job.native_id
    assert native is not None

    def forgotten() -> bool:
        out = slurm_cluster.run("squeue", "--noheader", "--states=all", f"--jobs={native}")
        return out.returncode != 0 or not out.stdout.strip()

    # slurmctld purges finished jobs in the background: nothing to await.
    await asyncio.to_thread(poll_until, forgotten, 90, 1.0)
    async with aiores.Session() as session:
        again = await session.job(job_id)
        assert await again.wait(timeout=STEP) is JobState.FAILED
        assert again.exit_code == 4
        assert again.stdout == "left\n"
        assert "left the queue" in again.state_detail


async def test_recover_from_a_second_program(slurm_url: str) -> None:
    running_id, held_id = child(slurm_url, "submit")
    async with aiores.Session() as session:
        recovered = await session.recover()
        jobs = {job.id: job for job in recovered.jobs}
        assert set(jobs) == {running_id, held_id}
        held = jobs[held_id]
        assert held.state is JobState.HELD
        await held.release()
        await held.wait(JobState.RUNNING, timeout=STEP)
        for job in jobs.values():
            await job.cancel()
            assert await job.wait(timeout=STEP) is JobState.CANCELED


async def test_kill_mid_submit_then_reap(slurm_url: str, slurm_cluster: Cluster) -> None:
    before = set(await asyncio.to_thread(slurm_cluster.live_jobs))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(CHILD), slurm_url, "many", "50", stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    assert await proc.stdout.readline() == b"submitting\n"

    def some_accepted() -> bool:
        return len(set(slurm_cluster.live_jobs()) - before) >= 5

    await asyncio.to_thread(poll_until, some_accepted, STEP, 0.01)
    helpers = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    # And those it started between that listing and the kill (no other test runs).
    helpers += [p for p in psutil.process_iter(["name"]) if p.info["name"] == "sbatch"]
    assert b"submitted" not in await proc.stdout.read()
    # Its sbatch commands run on (in their own process groups) and may still submit.
    await until(lambda: not any(p.is_running() and p.status() != "zombie" for p in helpers))

    async with aiores.Session() as session:
        reaped = await session.reap()
        assert not reaped.problems, reaped.problems
        recovered = await session.recover()
        recorded = {job.native_id for job in recovered.jobs}
        live = set(await asyncio.to_thread(slurm_cluster.live_jobs)) - before
        # Only jobs whose submit completed (journalled) run on: nothing leaked.
        assert live <= recorded, (live - recorded, reaped)
        for job in recovered.jobs:
            await job.cancel()
    assert set(await asyncio.to_thread(slurm_cluster.live_jobs)) <= before


async def test_one_squeue_per_tick_for_500_jobs(
    slurm_cluster: Cluster, jobs_dir: Path, shim: Shim
) -> None:
    url = f"slurm://?interval=0.5&conf={slurm_cluster.conf}&dir={jobs_dir}"
    async with aiores.Session() as session:
        js = session.job_service(url)
        jobs = await asyncio.gather(*(js.submit(SLEEP, hold=True) for _ in range(500)))
        ids = {str(job.native_id) for job in jobs}
        shim.reset()
        loop = asyncio.get_running_loop()
        started = loop.time()
        waits = [asyncio.create_task(job.wait()) for job in jobs]
        # Cancelled outside aiores (one scancel): the watcher must notice them all.
        await asyncio.sleep(1.5)
        await asyncio.to_thread(slurm_cluster.run, "scancel", *sorted(ids))
        states = await asyncio.wait_for(asyncio.gather(*waits), STEP)
        elapsed = loop.time() - started
    assert set(states) == {JobState.CANCELED}
    calls = shim.counts()
    log = [line for line in shim.log.read_text().splitlines() if line.startswith("squeue")]
    assert calls["squeue"] == len(log) >= 2
    for line in log:
        listed = line.split("--jobs=", 1)[1].split()[0].split(",")
        assert set(listed) == ids, "every squeue asks about all 500 jobs"
    # One per tick: ticks are at least the floor (0.5 s, jitter 10 %) apart.
    assert calls["squeue"] <= elapsed / 0.45 + 1
    assert calls["sacct"] == calls["scontrol"] == 0


async def test_walltime_fails_with_timeout_detail(walltime_job: str) -> None:
    async with aiores.Session() as session:
        job = await session.job(walltime_job)
        assert await job.wait(timeout=150) is JobState.FAILED
        assert "TIMEOUT" in job.state_detail


test_walltime_fails_with_timeout_detail = pytest.mark.timeout(180)(
    test_walltime_fails_with_timeout_detail
)
