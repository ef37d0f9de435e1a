"""local:// faults: control calls cancelled mid-answer, a keeper killed while it
starts a job, corrupt records, a record that cannot be marked.

Real keepers and real processes; a keeper killed between fork and record is staged
exactly (a record with no leader, whose keeper is gone, and a process carrying the
job's marker), so nothing here depends on timing.
"""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
from pathlib import Path

import pytest

from aiores import IncorrectState, JobDescription, JobState, NoSuccess
from aiores_local import LocalJobAdaptor
from aiores_local import _records as records
from aiores_local._keeper import MARKER, boot_id, start_time

from .conftest import STEP, Published, kill_group, wait_until

pytestmark = pytest.mark.asyncio


def sleeper() -> JobDescription:
    return JobDescription(executable="sleep", arguments=["300"])


async def test_a_cancelled_suspend_leaves_the_service_working(
    jobs: LocalJobAdaptor, published: Published
) -> None:
    info = await jobs.submit(sleeper(), "t", hold=False)
    for turns in range(4):  # cancelled before, while and after the keeper answers
        call = asyncio.create_task(jobs.suspend(info.id))
        for _ in range(turns):
            await asyncio.sleep(0)
        call.cancel()
        try:
            await call
        except asyncio.CancelledError:
            pass
        except IncorrectState:  # suspended by an earlier turn whose signal was sent
            pass
        if (await jobs.describe([info.id]))[info.id].state is JobState.SUSPENDED:
            await jobs.resume(info.id)
    async with asyncio.timeout(STEP):
        other = await jobs.submit(JobDescription(executable="/bin/true"), "t2", hold=False)
        assert (await published.final(other.id)).state is JobState.DONE
        await jobs.cancel(info.id)
        assert (await published.final(info.id)).state is JobState.CANCELED


def cut_off_start(jobs_dir: Path) -> tuple[str, subprocess.Popen[bytes]]:
    """What a keeper killed between starting a job and recording its leader leaves: a
    record without a leader whose keeper is gone, and the job's process."""
    job_id = "j-" + os.urandom(6).hex()
    jobs_dir.mkdir(parents=True, exist_ok=True)
    gone = subprocess.Popen(["/bin/true"])
    gone_start = start_time(gone.pid)
    gone.wait()
    (jobs_dir / job_id).write_text(
        f"token t\nlimit 100\nkeeper {gone.pid} {gone_start} {boot_id()}\n"
    )
    proc = subprocess.Popen(
        ["sleep", "300"], env={**os.environ, MARKER: job_id}, start_new_session=True
    )
    return job_id, proc


async def test_a_job_whose_leader_was_never_recorded_is_found_cancelled_and_reaped(
    jobs: LocalJobAdaptor, published: Published
) -> None:
    job_id, proc = await asyncio.to_thread(cut_off_start, jobs.jobs_dir)
    try:
        info = (await jobs.describe([job_id]))[job_id]
        assert info.state is JobState.RUNNING, info
        assert str(proc.pid) in (info.state_detail or "")
        with pytest.raises(IncorrectState):
            await jobs.reap(job_id)
        await jobs.cancel(job_id)
        async with asyncio.timeout(STEP):
            assert await asyncio.to_thread(proc.wait) == -15
        final = await published.final(job_id)
        assert final.state is JobState.CANCELED, final
        await jobs.reap(job_id)
        assert not (jobs.jobs_dir / job_id).exists()
        assert job_id not in [i.id for i in await jobs.list()]
    finally:
        kill_group(proc.pid)
        await asyncio.to_thread(proc.wait)


async def test_a_job_carries_its_marker_and_is_recorded_before_it_runs(
    jobs: LocalJobAdaptor, published: Published, tmp_path: Path
) -> None:
    script = f'cat "{jobs.jobs_dir}/${MARKER}"; echo "marker $' + MARKER + '"'
    info = await jobs.submit(
        JobDescription(executable="/bin/sh", arguments=["-c", script]), "tok", hold=False
    )
    final = await published.final(info.id)
    assert final.state is JobState.DONE, final
    out = (final.stdout or b"").decode()
    assert out.startswith("token tok\n")  # the record existed before the job ran
    assert f"marker {info.id}" in out


async def test_corrupt_records_break_neither_listing_nor_describe(
    jobs: LocalJobAdaptor, published: Published
) -> None:
    good = await jobs.submit(JobDescription(executable="/bin/true"), "t", hold=False)
    await published.final(good.id)
    jobs_dir = jobs.jobs_dir
    bad = {name: "j-" + os.urandom(6).hex() for name in ("bytes", "digit", "dir", "fifo")}
    (jobs_dir / bad["bytes"]).write_bytes(b"token t\n\xff\xfe\nexit 0\n")
    (jobs_dir / bad["digit"]).write_text("token u\nlimit \u00b2\nleader \u00b23 1 x\nexit \u00b2\n")
    (jobs_dir / bad["dir"]).mkdir()
    os.mkfifo(jobs_dir / bad["fifo"])
    async with asyncio.timeout(STEP):
        listed = {i.id for i in await jobs.list()}
        assert good.id in listed
        assert not listed & {bad["bytes"], bad["dir"], bad["fifo"]}
        assert [i.id for i in await jobs.find("t")] == [good.id]
        described = await jobs.describe(list(bad.values()))
    for name in ("bytes", "dir", "fifo"):
        info = described[bad[name]]
        assert info.state is JobState.FAILED, info
        assert "unreadable" in (info.state_detail or ""), info
    assert described[bad["digit"]].state is JobState.FAILED
    assert described[bad["digit"]].exit_code is None
    for job_id in bad.values():
        await jobs.reap(job_id)
        assert not (jobs_dir / job_id).exists()


async def test_cancel_signals_a_job_whose_record_cannot_be_marked(
    make_jobs: object, published: Published, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await make_jobs()  # type: ignore[operator]
    info = await first.submit(sleeper(), "t", hold=False)
    second = await make_jobs("local://?grace=5")  # type: ignore[operator]
    await second.describe([info.id])  # found again: signalled by this program

    def read_only(path: str, line: str) -> None:
        raise OSError(errno.EROFS, "Read-only file system", path)

    monkeypatch.setattr(records, "append", read_only)
    await second.cancel(info.id)
    await wait_until(lambda: start_time(info.extra["pid"]) is None, "the job ended")
    assert "canceled" not in (first.jobs_dir / info.id).read_text().split()


async def test_records_that_cannot_be_listed_raise_an_aiores_error(
    jobs: LocalJobAdaptor,
) -> None:
    jobs.jobs_dir.parent.mkdir(parents=True, exist_ok=True)
    jobs.jobs_dir.write_text("not a directory")
    try:
        with pytest.raises(NoSuccess, match="local job records"):
            await jobs.list()
        with pytest.raises(NoSuccess, match="local job records"):
            await jobs.find("t")
    finally:
        jobs.jobs_dir.unlink()


async def test_a_reader_that_fails_hangs_nothing_and_lets_its_keeper_end(
    jobs: LocalJobAdaptor, published: Published, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("a bug while hearing an end")

    monkeypatch.setattr(jobs, "_exited", broken)
    first = await jobs.submit(JobDescription(executable="/bin/true"), "t", hold=False)
    keeper = jobs._keeper
    assert keeper is not None
    # Heard no more: its job is followed through its record, and the keeper, its
    # input closed, ends.
    assert (await published.final(first.id)).state is JobState.DONE
    await wait_until(lambda: start_time(keeper.pid) is None, "the keeper ended", STEP)
    monkeypatch.undo()
    second = await jobs.submit(JobDescription(executable="/bin/true"), "t", hold=False)
    assert (await published.final(second.id)).state is JobState.DONE
