"""SSHJobAdaptor against the real sshd: detached jobs controlled through their directory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
from collections.abc import Collection
from pathlib import Path

import psutil
import pytest

import aiores
from aiores import JobDescription, JobState
from aiores.adaptor import JobInfo, truncation_marker
from aiores_ssh import SSHJobAdaptor
from aiores_ssh._runner import Outcome

from .conftest import (
    STEP,
    USER,
    Adaptors,
    FakeEnv,
    gone,
    opened,
    record_commands,
    wait_until,
)
from .servers import Sshd


async def settle(
    jobs: SSHJobAdaptor, job_id: str, states: Collection[JobState] | None = None
) -> JobInfo:
    """Describe ``job_id`` until it is in one of ``states`` (default: any final state).

    Polls the way the session's watcher does, at its floor interval.
    """
    assert jobs.poll is not None
    async with asyncio.timeout(STEP):
        while True:
            info = (await jobs.describe([job_id]))[job_id]
            if (info.state in states) if states else info.state.final:
                return info
            await asyncio.sleep(jobs.poll.floor / 5)


def token() -> str:
    return "t-" + secrets.token_hex(8)


@pytest.mark.asyncio
async def test_exit_codes_and_captured_output(adaptors: Adaptors, sshd: Sshd) -> None:
    jobs = await adaptors.jobs(sshd.url())
    ok = await jobs.submit(
        JobDescription.shell("echo out; echo err >&2; cat", stdin="fed\n"), token(), hold=False
    )
    assert ok.state is JobState.RUNNING
    bad = await jobs.submit(
        JobDescription(executable="/bin/sh", arguments=["-c", "exit 7"]), token(), hold=False
    )
    missing = await jobs.submit(JobDescription(executable="no-such-program-x"), token(), hold=False)
    done = await settle(jobs, ok.id)
    assert (done.state, done.exit_code) == (JobState.DONE, 0)
    assert (done.stdout, done.stderr) == (b"out\nfed\n", b"err\n")
    failed = await settle(jobs, bad.id)
    assert (failed.state, failed.exit_code) == (JobState.FAILED, 7)
    notfound = await settle(jobs, missing.id)
    assert (notfound.state, notfound.exit_code) == (JobState.FAILED, 127)


@pytest.mark.asyncio
async def test_environment_working_directory_and_arguments(adaptors: Adaptors, sshd: Sshd) -> None:
    jobs = await adaptors.jobs(sshd.url())
    desc = JobDescription(
        executable="/bin/sh",
        arguments=["-c", 'pwd; printf "%s|" "$@"; echo "$GREETING"', "sh", "a b", "it's"],
        environment={"GREETING": "hello 'there'"},
        working_directory="/tmp",
    )
    info = await settle(jobs, (await jobs.submit(desc, token(), hold=False)).id)
    assert info.stdout == b"/tmp\na b|it's|hello 'there'\n"


@pytest.mark.asyncio
async def test_capture_limit_and_output_files(
    adaptors: Adaptors, sshd: Sshd, test_home: Path
) -> None:
    jobs = await adaptors.jobs(sshd.url())
    big = JobDescription.shell("head -c 5000 /dev/zero | tr '\\0' x", capture_limit=1000)
    info = await settle(jobs, (await jobs.submit(big, token(), hold=False)).id)
    marker = truncation_marker(1000, 4000)
    assert info.stdout == b"x" * 1000 + marker
    assert marker == b"\n[aiores: output truncated after 1000 bytes; 4000 more bytes discarded]\n"
    name = f"out-{secrets.token_hex(4)}.txt"
    to_file = JobDescription.shell("echo to-a-file", stdout=name)  # relative to home
    info = await settle(jobs, (await jobs.submit(to_file, token(), hold=False)).id)
    assert info.state is JobState.DONE
    assert info.stdout is None
    assert (test_home / name).read_text() == "to-a-file\n"
    (test_home / name).unlink()


@pytest.mark.asyncio
async def test_cancel_terminates_then_kills(adaptors: Adaptors, sshd: Sshd) -> None:
    jobs = await adaptors.jobs(sshd.url())
    polite = await jobs.submit(JobDescription.shell("exec sleep 60"), token(), hold=False)
    stubborn = await jobs.submit(
        JobDescription.shell("trap '' TERM; while :; do sleep 1; done"), token(), hold=False
    )
    await jobs.cancel(polite.id)
    info = await settle(jobs, polite.id)
    assert info.state is JobState.CANCELED
    assert info.exit_code == 143  # the wrapper recorded the TERM
    assert gone(polite.extra["pid"])

    jobs.cancel_grace = 0.5
    await jobs.cancel(stubborn.id)
    info = await settle(jobs, stubborn.id)
    assert info.state is JobState.CANCELED
    assert info.exit_code is None  # KILLed wrapper and all
    assert gone(stubborn.extra["pid"])
    published = [adaptors.published.get_nowait() for _ in range(adaptors.published.qsize())]
    assert {(p.id, p.state) for p in published} >= {
        (polite.id, JobState.CANCELED),
        (stubborn.id, JobState.CANCELED),
    }

    # Cancelling a finished job changes nothing.
    await jobs.cancel(polite.id)
    with pytest.raises(aiores.DoesNotExist):
        await jobs.cancel("0123456789abcdef0123")


def _states(pid: int) -> list[str]:
    """The state letter (/proc/PID/stat field 3) of ``pid`` and its descendants."""
    states = []
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        with contextlib.suppress(FileNotFoundError):  # a child that just ended
            stat = Path(f"/proc/{proc.pid}/stat").read_text()
            states.append(stat.rpartition(")")[2].split()[0])
    return states


@pytest.mark.asyncio
async def test_suspend_and_resume(adaptors: Adaptors, sshd: Sshd) -> None:
    jobs = await adaptors.jobs(sshd.url())
    job = await jobs.submit(
        JobDescription.shell("while :; do sleep 0.05; done"), token(), hold=False
    )
    pid = job.extra["pid"]
    await wait_until(lambda: len(_states(pid)) >= 3)  # wrapper, shell, a sleep
    await jobs.suspend(job.id)
    assert (await jobs.describe([job.id]))[job.id].state is JobState.SUSPENDED
    # The whole group is stopped: every process of the job is in state T.
    await wait_until(lambda: set(_states(pid)) == {"T"}, 5)
    await jobs.resume(job.id)
    assert (await jobs.describe([job.id]))[job.id].state is JobState.RUNNING
    await wait_until(lambda: "T" not in _states(pid), 5)
    await jobs.cancel(job.id)
    assert (await settle(jobs, job.id)).state is JobState.CANCELED
    with pytest.raises(aiores.IncorrectState):
        await jobs.suspend(job.id)


@pytest.mark.asyncio
async def test_suspended_job_can_be_cancelled(adaptors: Adaptors, sshd: Sshd) -> None:
    jobs = await adaptors.jobs(sshd.url())
    job = await jobs.submit(JobDescription.shell("exec sleep 60"), token(), hold=False)
    await jobs.suspend(job.id)
    await jobs.cancel(job.id)
    assert (await settle(jobs, job.id)).state is JobState.CANCELED
    assert gone(job.extra["pid"])


@pytest.mark.asyncio
async def test_reconnect_from_a_fresh_adaptor_and_pool(sshd: Sshd, tmp_path: Path) -> None:
    tok = token()
    async with opened(FakeEnv(tmp_path, sshd.context())) as first:
        jobs = await first.make(SSHJobAdaptor, sshd.url())  # leaves its jobs running
        job = await jobs.submit(JobDescription.shell("sleep 1; echo later"), tok, hold=False)
    # The first client is gone (its pool closed); the job runs on.
    async with opened(FakeEnv(tmp_path, sshd.context())) as second:
        jobs = await second.jobs(sshd.url())
        assert jobs.pool.connects == 0
        info = await settle(jobs, job.id)
        assert (info.state, info.stdout) == (JobState.DONE, b"later\n")
        found = await jobs.find(tok)
        assert [f.id for f in found] == [job.id]
        assert job.id in {j.id for j in await jobs.list()}
        await jobs.reap(job.id)
        assert await jobs.describe([job.id]) == {}
        assert await jobs.find(tok) == []


@pytest.mark.asyncio
async def test_describe_many_jobs_in_one_command(adaptors: Adaptors, sshd: Sshd) -> None:
    jobs = await adaptors.jobs(sshd.url())
    submitted = await asyncio.gather(
        *(
            jobs.submit(JobDescription.shell(f"exit {i % 3}"), token(), hold=False)
            for i in range(30)
        )
    )
    ids = [s.id for s in submitted]
    async with asyncio.timeout(STEP):
        while True:
            infos = await jobs.describe([*ids, "unknownjob0000000000"])
            if all(info.state.final for info in infos.values()):
                break
            await asyncio.sleep(0.1)
    assert set(infos) == set(ids)  # the unknown id is left out
    assert [infos[i].exit_code for i in ids] == [i % 3 for i in range(30)]


@pytest.mark.asyncio
async def test_job_environment_stays_out_of_command_lines(
    adaptors: Adaptors, sshd: Sshd, test_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = await adaptors.jobs(sshd.url())
    secret = "s3cr3t-" + secrets.token_hex(4)
    sent = record_commands(monkeypatch)
    desc = JobDescription.shell(
        'echo "$TOKEN|$d|$(cat)"', stdin="in", environment={"TOKEN": secret, "d": "mine"}
    )
    info = await settle(jobs, (await jobs.submit(desc, token(), hold=False)).id)
    assert (info.state, info.stdout) == (JobState.DONE, f"{secret}|mine|in\n".encode())
    assert sent
    assert not [command for command in sent if "s3cr3t" in command]
    job_dir = test_home / ".aiores" / "jobs" / info.id
    assert not (job_dir / "env").exists()  # read by the wrapper, then removed
    assert secret not in (job_dir / "description.json").read_text()


async def running_program(pid: int, name: str = "sleep") -> psutil.Process:
    """The job's program once it runs: its wrapper (``pid``) has made the job's process
    group and started it. Right after submit neither may have happened yet."""
    found: list[psutil.Process] = []

    def started() -> bool:
        for proc in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):  # a child that just ended
                if proc.name() == name and os.getpgid(proc.pid) == pid:
                    found.append(proc)
        return bool(found)

    await wait_until(started)
    return found[0]


@pytest.mark.asyncio
async def test_a_job_that_ended_first_is_not_marked_cancelled(
    adaptors: Adaptors, sshd: Sshd, test_home: Path
) -> None:
    """The wrapper has seen the program end and claimed the end, but not yet written
    the exit code, when the cancel comes: the exit code it then writes stands."""
    jobs = await adaptors.jobs(sshd.url())
    job = await jobs.submit(JobDescription.shell("exec sleep 60"), token(), hold=False)
    program = await running_program(job.extra["pid"])
    job_dir = test_home / ".aiores" / "jobs" / job.id
    (job_dir / "end").mkdir()  # where the wrapper stands just before writing exit
    await jobs.cancel(job.id)
    assert not (job_dir / "canceled").exists()
    assert not gone(job.extra["pid"])  # the cancel left it alone
    # The program ends (killed by someone else), the wrapper records its status.
    program.kill()
    info = await settle(jobs, job.id)
    assert (info.state, info.exit_code) == (JobState.FAILED, 137)


@pytest.mark.asyncio
async def test_cancelling_a_job_whose_wrapper_died_leaves_it_failed(
    adaptors: Adaptors, sshd: Sshd
) -> None:
    jobs = await adaptors.jobs(sshd.url())
    job = await jobs.submit(JobDescription.shell("exec sleep 60"), token(), hold=False)
    await running_program(job.extra["pid"])
    os.killpg(job.extra["pid"], signal.SIGKILL)  # the whole job, wrapper and all
    info = await settle(jobs, job.id)
    assert (info.state, info.exit_code) == (JobState.FAILED, None)
    await jobs.cancel(job.id)
    assert (await jobs.describe([job.id]))[job.id].state is JobState.FAILED


@pytest.mark.asyncio
async def test_a_reused_pid_is_neither_alive_nor_signalled(
    adaptors: Adaptors, sshd: Sshd, test_home: Path
) -> None:
    """The job died; another process of the same user, leading its own group, now has
    the pid on record (pids are reused). The job is not reported running, and neither
    cancel nor suspend signals that process."""
    jobs = await adaptors.jobs(sshd.url())
    job = await jobs.submit(JobDescription.shell("exec sleep 60"), token(), hold=False)
    await running_program(job.extra["pid"])
    os.killpg(job.extra["pid"], signal.SIGKILL)
    # Start times count clock ticks (10 ms): a pid reused later starts ticks later.
    await asyncio.sleep(0.05)
    other = await asyncio.to_thread(
        subprocess.Popen, ["sleep", "60"], user=USER, start_new_session=True
    )
    try:
        # The record keeps the dead job's start time and boot; only the pid is the
        # other process's now, as after a reuse.
        record = test_home / ".aiores" / "jobs" / job.id / "pid"
        fields = record.read_text().split()
        record.write_text(" ".join([str(other.pid), *fields[1:]]) + "\n")
        info = (await jobs.describe([job.id]))[job.id]
        assert (info.state, info.exit_code) == (JobState.FAILED, None)
        await jobs.cancel(job.id)
        with pytest.raises(aiores.IncorrectState):
            await jobs.suspend(job.id)
        await asyncio.sleep(0.2)
        assert other.poll() is None
        assert psutil.Process(other.pid).status() != psutil.STATUS_STOPPED
        assert (await jobs.describe([job.id]))[job.id].state is JobState.FAILED
    finally:
        if other.poll() is None:
            other.kill()
        await asyncio.to_thread(other.wait)


def _describe_sizes(jobs: SSHJobAdaptor) -> list[int]:
    """Bytes each later describe command of ``jobs`` brings back."""
    sizes: list[int] = []
    sh = jobs._sh

    async def spy(
        script: str, stdin: bytes | None = None, ended: asyncio.Future[bool] | None = None
    ) -> Outcome:
        outcome = await sh(script, stdin, ended)
        if "J %s" in script:
            sizes.append(len(outcome.stdout))
        return outcome

    jobs._sh = spy  # type: ignore[method-assign]
    return sizes


def _xs(char: str, n: int) -> JobDescription:
    return JobDescription.shell(f"head -c {n} /dev/zero | tr '\\0' {char}")


@pytest.mark.asyncio
async def test_output_of_a_finished_job_is_fetched_once(adaptors: Adaptors, sshd: Sshd) -> None:
    jobs = await adaptors.jobs(sshd.url())
    job_id = (await jobs.submit(_xs("x", 100_000), token(), hold=False)).id
    assert (await settle(jobs, job_id)).stdout == b"x" * 100_000
    sizes = _describe_sizes(jobs)
    for _ in range(3):
        assert (await jobs.describe([job_id]))[job_id].stdout == b"x" * 100_000
    assert len(sizes) == 3
    assert max(sizes) < 1000  # states only: the output came from the first describe
    # Evicted by a later job's output: fetched again, never lost.
    jobs.output_cache = 0
    await settle(jobs, (await jobs.submit(_xs("y", 10), token(), hold=False)).id)
    assert (await jobs.describe([job_id]))[job_id].stdout == b"x" * 100_000
    assert sizes[-1] > 100_000


@pytest.mark.asyncio
async def test_describe_output_is_split_by_a_byte_budget(adaptors: Adaptors, sshd: Sshd) -> None:
    watcher = await adaptors.jobs(sshd.url())
    ids = [(await watcher.submit(_xs(char, 100_000), token(), hold=False)).id for char in "abc"]
    for job_id in ids:
        await settle(watcher, job_id)
    jobs = await adaptors.jobs(sshd.url())  # has fetched no output yet
    jobs.output_budget = 150_000
    sizes = _describe_sizes(jobs)
    infos = await jobs.describe([*ids, "unknownjob0000000000"])
    assert [infos[i].stdout for i in ids] == [c.encode() * 100_000 for c in "abc"]
    assert len(sizes) == 3  # one job's output a command
    assert max(sizes) < 101_000
