"""DRMAA2 job sessions on local://: two programs, arrays, filtering, waiting, lifecycle."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from pathlib import Path

import pytest

import aiores
from aiores import BadParameter, DoesNotExist, IncorrectState, JobDescription, JobState

#: Seconds any one await in these tests may take.
STEP = 20.0
CHILD = Path(__file__).with_name("child.py")


def sh(script: str) -> JobDescription:
    return JobDescription(executable="/bin/sh", arguments=["-c", script])


@pytest.mark.asyncio
async def test_a_second_program_sees_the_same_jobs_and_states(state_dir: Path) -> None:
    async with aiores.Session() as session:
        js = await session.job_session("exp-1", "local://")
        long = await js.submit(sh("sleep 60"))
        quick = await js.submit(sh("exit 0"))
        async with asyncio.timeout(STEP):
            await long.wait(JobState.RUNNING)
            await quick.wait()
        await session.journal.flush()  # type: ignore[union-attr]
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            str(CHILD),
            "exp-1",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONASYNCIODEBUG": ""},
        )
        async with asyncio.timeout(STEP * 2):
            out, err = await child.communicate()
        assert child.returncode == 0, err.decode()
        seen = json.loads(out)
        assert seen["url"] == "local://"
        assert seen["seen"] == {long.id: "RUNNING", quick.id: "DONE"}
        assert seen["running"] == [long.id]
        assert "local://?max_running=3" in seen["other"]
        assert "local://" in seen["other"]
        assert seen["other"].startswith("url")
        assert seen["names"] == ["exp-1"]
        # The child's job is a member here too, with the state it ended in.
        states = {job.id: job.state for job in await js.jobs()}
        assert states == {
            long.id: JobState.RUNNING,
            quick.id: JobState.DONE,
            seen["mine"]: JobState.FAILED,
        }
        (theirs,) = await js.jobs(filter=lambda job: job.id == seen["mine"])
        assert theirs.exit_code == 7
        await long.cancel()
        assert await long.wait(timeout=STEP) is JobState.CANCELED
    mode = stat.S_IMODE((state_dir / "journal.sqlite").stat().st_mode)
    assert mode == 0o600


@pytest.mark.asyncio
async def test_submit_array_uses_drmaa2_numbering() -> None:
    async with aiores.Session() as session:
        js = await session.job_session("arrays", "local://")
        array = await js.submit_array(sh('echo "$AIORES_ARRAY_INDEX"'), 1, 10, 3)
        assert [job.index for job in array] == [1, 4, 7, 10]
        assert await array.wait(timeout=STEP) == [JobState.DONE] * 4
        assert [job.stdout for job in array] == ["1\n", "4\n", "7\n", "10\n"]
        throttled = await js.submit_array(sh('echo "$AIORES_ARRAY_INDEX"'), 2, 6, max_parallel=2)
        assert [job.index for job in throttled] == [2, 3, 4, 5, 6]
        assert await throttled.wait(timeout=STEP) == [JobState.DONE] * 5
        members = await js.jobs()
        assert [job.index for job in members] == [1, 4, 7, 10, 2, 3, 4, 5, 6]
        assert {job.id for job in members} == {job.id for job in [*array, *throttled]}
        single = await js.submit_array(sh("true"), 5, 5)
        assert [job.index for job in single] == [5]
        await single.wait(timeout=STEP)
        for args, field in [
            ((0, 3), "begin"),
            ((3, 2), "end"),
            ((1, 3, 0), "step"),
            ((True, 3), "begin"),
            ((1, 3, 1, 0), "max_parallel"),
            ((1, 3_000_000), "begin, end and step"),
        ]:
            with pytest.raises(BadParameter, match=field):
                await js.submit_array(sh("true"), *args)
        assert len(await js.jobs()) == 10  # nothing was submitted by the bad calls


@pytest.mark.asyncio
async def test_jobs_filters_by_state_and_predicate_and_leaves_out_reaped() -> None:
    async with aiores.Session() as session:
        js = await session.job_session("filters", "local://")
        other = await session.job_session("others", "local://")
        running = await js.submit(sh("sleep 60"))
        done = await js.submit(sh("exit 0"))
        failed = await js.submit(sh("exit 3"))
        outsider = await other.submit(sh("exit 0"))
        async with asyncio.timeout(STEP):
            await running.wait(JobState.RUNNING)
            for job in (done, failed, outsider):
                await job.wait()
        assert await js.jobs(state=JobState.RUNNING) == [running]
        assert await js.jobs(state={JobState.DONE, JobState.FAILED}) == [done, failed]
        assert await js.jobs(filter=lambda job: job.exit_code == 3) == [failed]
        assert await js.jobs(state=JobState.DONE, filter=lambda job: job.exit_code == 3) == []
        assert await other.jobs() == [outsider]
        with pytest.raises(BadParameter, match="state"):
            await js.jobs(state="RUNNING")  # type: ignore[arg-type]
        with pytest.raises(BadParameter, match="filter"):
            await js.jobs(filter=3)  # type: ignore[arg-type]
        await done.reap()
        assert await js.jobs() == [running, failed]
        again = await session.job_session("filters")
        assert [job.id for job in await again.jobs()] == [running.id, failed.id]
        await running.cancel()
        await running.wait(timeout=STEP)


@pytest.mark.asyncio
async def test_wait_any_started_and_terminated() -> None:
    async with aiores.Session() as session:
        js = await session.job_session("waits", "local://")
        other = await session.job_session("elsewhere", "local://")
        long = await js.submit(sh("sleep 60"))
        short = await js.submit(sh("sleep 0.2"))
        async with asyncio.timeout(STEP):
            assert await js.wait_any([long], JobState.RUNNING) is long
            assert await js.wait_any() is short  # any final state
            assert await js.wait_any([long, short], timeout=STEP) is short
        with pytest.raises(aiores.Timeout):
            await js.wait_any([long], timeout=0.05)
        with pytest.raises(IncorrectState):
            await js.wait_any([short], JobState.RUNNING)  # it ended: RUNNING cannot come
        stranger = await other.submit(sh("exit 0"))
        with pytest.raises(BadParameter, match=r"jobs\[1\]"):
            await js.wait_any([long, stranger])
        with pytest.raises(BadParameter, match="jobs"):
            await js.wait_any([])
        with pytest.raises(BadParameter, match=r"jobs\[0\]"):
            await js.wait_any(["not a job"])  # type: ignore[list-item]
        empty = await session.job_session("empty", "local://")
        with pytest.raises(BadParameter, match="no jobs"):
            await empty.wait_any()
        await long.cancel()
        await stranger.wait(timeout=STEP)
        await long.wait(timeout=STEP)


@pytest.mark.asyncio
async def test_a_job_submitted_into_a_session_destroyed_meanwhile_is_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with aiores.Session() as session:
        js = await session.job_session("racing", "local://")
        doomed = await session.job_session("racing")
        await js.destroy()

        async def unchecked() -> None:  # destroyed after the check, before the join
            return None

        monkeypatch.setattr(doomed, "_check_exists", unchecked)
        service = session.job_service("local://")
        before = {job.id for job in await service.list()}
        with pytest.raises(DoesNotExist, match="destroyed"):
            await doomed.submit(sh("sleep 60"))
        (made,) = [job for job in await service.list() if job.id not in before]
        assert await made.wait(timeout=STEP) is JobState.CANCELED


@pytest.mark.asyncio
async def test_close_and_destroy() -> None:
    async with aiores.Session() as session:
        async with session.job_session("life", "local://") as js:
            job = await js.submit(sh("sleep 60"))
            elsewhere = await session.job_session("life")  # a second handle
        with pytest.raises(IncorrectState, match="closed"):
            await js.submit(sh("true"))
        with pytest.raises(IncorrectState, match="closed"):
            await js.jobs()
        await js.close()  # harmless
        assert job.state is not JobState.CANCELED  # closing leaves jobs running
        assert await session.job_session_names() == ["life"]
        reopened = await session.job_session("life")
        assert reopened.url == aiores.URL.parse("local://")
        assert await reopened.jobs() == [job]
        await reopened.destroy()
        assert await session.job_session_names() == []
        with pytest.raises(IncorrectState, match="destroyed"):
            await reopened.jobs()
        with pytest.raises(DoesNotExist, match="destroyed"):
            await elsewhere.jobs()
        with pytest.raises(DoesNotExist, match="destroyed"):
            await elsewhere.submit(sh("true"))
        with pytest.raises(DoesNotExist, match="destroyed already"):
            await elsewhere.destroy()
        # Its job runs on, found by its id.
        found = await session.job(job.id)
        assert found.state is JobState.RUNNING
        with pytest.raises(DoesNotExist, match="give a URL"):
            await session.job_session("life")
        fresh = await session.job_session("life", "local://")
        assert await fresh.jobs() == []
        await job.cancel()
        await job.wait(timeout=STEP)


@pytest.mark.asyncio
async def test_bad_input_names_the_field() -> None:
    async with aiores.Session() as session:
        for name in ["", "a\0b", "a\ud800b", "x" * 201, "a\nb", 5, None]:
            with pytest.raises(BadParameter, match="name"):
                session.job_session(name)  # type: ignore[arg-type]
        assert session.job_session("x" * 200).name == "x" * 200
        with pytest.raises(aiores.IncorrectURL):
            session.job_session("u", "not a url")
        js = await session.job_session("exists", "local://")
        with pytest.raises(BadParameter, match=r"url: .*local://\?max_running=2.*|url: .*local://"):
            await session.job_session("exists", "local://?max_running=2")
        with pytest.raises(BadParameter, match="submit needs"):
            await js.submit("true")  # type: ignore[arg-type]
        assert await js.jobs() == []
    async with aiores.Session(journal=None) as bare:
        with pytest.raises(IncorrectState, match="journal"):
            bare.job_session("x", "local://")
    with pytest.raises(IncorrectState):
        session.job_session("after", "local://")
