"""docker:// jobs on a real podman: exit codes, output, hold/release, pause/resume,
cancel, labels, limits and the errors a user meets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

import aiores
from aiores import JobDescription, JobState

from .podman import IMAGE, Podman

pytestmark = pytest.mark.asyncio

URL = f"docker://?image={IMAGE}&grace=0.5"
STEP = 30.0


def sh(script: str, **fields: object) -> JobDescription:
    return JobDescription(executable="/bin/sh", arguments=["-c", script], **fields)  # type: ignore[arg-type]


def sleeping(mark: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline[-2:] == ["sleep", mark] and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


async def until(predicate: Callable[[], Any], what: str) -> Any:
    """Await ``predicate()`` (in a thread: it reads /proc) becoming truthy."""
    try:
        async with asyncio.timeout(STEP):
            # Processes' states are seen from outside: nothing to await but a look.
            while not (value := await asyncio.to_thread(predicate)):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"not within {STEP} s: {what}")
    return value


async def test_exit_codes_output_environment_and_limits(podman: Podman) -> None:
    async with aiores.Session(journal=None) as session:
        js = session.job_service("docker://")  # the image from the category
        failed = await js.submit(sh("echo out; echo err >&2; exit 3", category=IMAGE))
        done = await js.submit(
            JobDescription(
                executable="/bin/sh",
                arguments=["-c", 'pwd; printf "%s|" "$X" "$1"', "sh", "a b"],
                environment={"X": "it's $y"},
                working_directory="/tmp",
                category=IMAGE,
                cores=1,
                memory=64,
                stdin=b"unused",
            )
        )
        assert await failed.wait(timeout=STEP) is JobState.FAILED
        assert await done.wait(timeout=STEP) is JobState.DONE
        shown = json.loads(podman.cli("inspect", done.native_id or "").stdout)[0]
        labels = shown["Config"]["Labels"]
        for job in (failed, done):
            await job.reap()
    assert (failed.exit_code, failed.stdout, failed.stderr) == (3, "out\n", "err\n")
    assert (done.exit_code, done.stdout) == (0, "/tmp\nit's $y|a b|")
    assert shown["HostConfig"]["NanoCpus"] == 1_000_000_000
    assert shown["HostConfig"]["Memory"] == 64 * 1024 * 1024
    assert labels["aiores"] == "1"
    assert labels["aiores.session"] == session.id
    assert labels["aiores.token"].startswith("t-")
    assert podman.containers() == []  # reaped: removed


async def test_stdin_and_output_files(podman: Podman, tmp_path: Path) -> None:
    out = f"{tmp_path}/out.txt"
    async with aiores.Session(journal=None) as session:
        js = session.job_service(URL)
        job = await js.submit(JobDescription(executable="/bin/cat", stdin=b"fed\n" * 3, stdout=out))
        assert await job.wait(timeout=STEP) is JobState.DONE
        await job.reap()
    assert job.stdout is None
    assert await asyncio.to_thread(Path(out).read_bytes) == b"fed\n" * 3


async def test_hold_and_release(podman: Podman) -> None:
    async with aiores.Session(journal=None) as session:
        js = session.job_service(URL)
        job = await js.submit(sh("echo held"), hold=True)
        assert job.state is JobState.HELD
        shown = json.loads(podman.cli("inspect", job.native_id or "").stdout)[0]
        assert shown["State"]["Status"] in ("created", "configured")
        await job.release()
        assert await job.wait(timeout=STEP) is JobState.DONE
        await job.reap()
    assert job.stdout == "held\n"


async def test_pause_resume_and_cancel_kills_the_containers_processes(podman: Podman) -> None:
    mark = "1000.424242"
    async with aiores.Session(journal=None) as session:
        js = session.job_service(URL)
        job = await js.submit(sh(f"sleep {mark} & sleep {mark}; wait"))
        procs: list[psutil.Process] = await until(
            lambda: len(sleeping(mark)) == 2 and sleeping(mark), "both sleeps"
        )
        await job.suspend()
        assert job.state is JobState.SUSPENDED
        # docker pause freezes the container's cgroup: its processes sleep uninterruptibly.
        await until(
            lambda: all(p.status() == psutil.STATUS_DISK_SLEEP for p in procs),
            "frozen",
        )
        await job.resume()
        assert job.state is JobState.RUNNING
        await until(
            lambda: all(p.status() != psutil.STATUS_DISK_SLEEP for p in procs),
            "thawed",
        )
        await job.cancel()
        assert await job.wait(timeout=STEP) is JobState.CANCELED
        await job.reap()
    assert not sleeping(mark)
    assert "SIGKILL" in job.state_detail  # sh as PID 1 ignores SIGTERM: killed after the grace


async def test_array_with_max_parallel(podman: Podman) -> None:
    async with aiores.Session(journal=None) as session:
        js = session.job_service(URL)
        array = await js.submit_array(sh('echo "$AIORES_ARRAY_INDEX"'), count=4, max_parallel=2)
        assert await array.wait(timeout=STEP) == [JobState.DONE] * 4
        assert [job.stdout for job in array] == [f"{i}\n" for i in range(4)]
        for job in array:
            await job.reap()


async def test_found_again_from_a_second_session(podman: Podman) -> None:
    async with aiores.Session(journal=None) as first:
        job = await first.job_service(URL).submit(sh("sleep 0.5; echo again"))
    async with aiores.Session(journal=None) as second:
        found = await second.job_service(URL).get(job.id)
        assert await found.wait(timeout=STEP) is JobState.DONE
        assert (found.exit_code, found.stdout) == (0, "again\n")
        await found.reap()


async def test_bad_input_is_refused_naming_the_field(podman: Podman) -> None:
    async with aiores.Session(journal=None) as session:
        js = session.job_service("docker://")
        with pytest.raises(aiores.BadParameter, match=r"JobDescription\.category"):
            await js.submit(sh("true"))
        with pytest.raises(aiores.NotSupported, match=r"JobDescription\.queue"):
            await js.submit(sh("true", category=IMAGE, queue="q"))
        with pytest.raises(aiores.IncorrectURL, match="option"):
            session.job_service("docker://?imag=x")
        with pytest.raises(aiores.BadParameter, match=r"ComputeDescription\.image"):
            await session.manager("docker://").acquire(aiores.ComputeDescription())
    assert podman.containers() == []


async def test_a_missing_image_and_a_missing_program(podman: Podman) -> None:
    async with aiores.Session(journal=None) as session:
        js = session.job_service("docker://")
        with pytest.raises(aiores.DoesNotExist, match="pull or build it first"):
            await js.submit(sh("true", category="localhost/no-such-image:1"))
        with pytest.raises(aiores.DoesNotExist, match="/no/such/program"):
            await js.submit(JobDescription(executable="/no/such/program", category=IMAGE))
    assert podman.containers() == []


async def test_a_stopped_daemon_and_a_forbidden_socket(
    podman: Podman, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    async with aiores.Session(journal=None) as session:
        with pytest.raises(aiores.NoSuccess, match="does not answer: start it"):
            await session.job_service("docker://").submit(sh("true", category=IMAGE))
    # A socket this user may not open (tested as root: a socket nobody listens on
    # behind a directory root cannot enter is refused with EACCES only for others).


@pytest.mark.asyncio
async def test_input_for_commands_that_end_without_reading_it_is_dropped(podman: Podman) -> None:
    """A container that ends before its input is written (the daemon closes the
    attachment then) drops the input, as a pipe to an ended process would: the job is
    DONE, not failed in the writing."""
    async with aiores.Session(journal=None) as session:
        js = session.job_service(URL)
        jobs = await asyncio.gather(
            *(js.submit(JobDescription(executable="true", stdin=b"x" * 65536)) for _ in range(16))
        )
        async with asyncio.timeout(60):
            await asyncio.gather(*(job.wait() for job in jobs))
        assert [job.state for job in jobs] == [JobState.DONE] * 16
        assert [job.exit_code for job in jobs] == [0] * 16
