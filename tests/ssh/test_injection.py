"""Arbitrary text through every field of an ssh:// job and command (real sshd) reaches
the program verbatim, and never runs as shell code on the server."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import cast

import pytest
from hypothesis import given, settings

import aiores
from aiores import JobDescription, JobState, RunResult

from ..injection import SETTINGS, STEP, Canary, carried, check_job, check_run
from .conftest import FakeEnv, opened
from .servers import USER, Sshd

#: The texts name the canary, so it exists before the tests are collected.
BOX = Canary()


@pytest.fixture(scope="module", autouse=True)
def _remove_box() -> Iterator[None]:
    yield
    BOX.remove()


@pytest.mark.asyncio
@SETTINGS
@given(text=BOX.texts())
async def test_job_fields(sshd: Sshd, text: str) -> None:
    async with aiores.Session(journal=None, contexts=[sshd.context()]) as session:
        await check_job(session.job_service(sshd.url()), BOX, text)


class _HeldThenReleased:
    """A job service whose jobs are submitted held, then released."""

    def __init__(self, js: aiores.JobService) -> None:
        self.js = js

    async def submit(self, desc: JobDescription) -> aiores.Job:
        job = await self.js.submit(desc, hold=True)
        assert job.state is JobState.HELD
        await job.release()
        return job


@pytest.mark.asyncio
@settings(SETTINGS, max_examples=8)  # the same wrapper, with a wait before the program
@given(text=BOX.texts())
async def test_held_job_fields(sshd: Sshd, text: str) -> None:
    async with aiores.Session(journal=None, contexts=[sshd.context()]) as session:
        held = _HeldThenReleased(session.job_service(sshd.url()))
        await check_job(cast(aiores.JobService, held), BOX, text)


@pytest.mark.asyncio
@SETTINGS
@given(text=BOX.texts())
async def test_token_of_a_claimed_job(sshd: Sshd, tmp_path: Path, text: str) -> None:
    """The token of a submit cut off, as the claim of its job writes it and find reads it."""
    job_id = uuid.uuid4().hex[:20]
    async with opened(FakeEnv(tmp_path, sshd.context())) as made:
        jobs = await made.jobs(sshd.url())
        try:
            await jobs._claim(job_id, text)
        except aiores.BadParameter:
            assert not carried(text), f"{text!r} was refused"
        else:
            assert carried(text), f"{text!r} was accepted, but cannot reach the host"
            if "\n" not in text:  # a token is one line
                found = {info.id: info for info in await jobs.find(text)}
                assert found[job_id].state is JobState.CANCELED
                if text not in ("", "-"):  # no token, as describe reports it
                    assert found[job_id].token == text
            await jobs.reap(job_id)
    BOX.assert_untouched(text)


@pytest.mark.asyncio
@SETTINGS
@given(text=BOX.texts())
async def test_command_fields(sshd: Sshd, text: str) -> None:
    async with aiores.Session(journal=None, contexts=[sshd.context()]) as session:
        runner = await session.command_runner(sshd.url())

        async def run(argv: Sequence[str], env: dict[str, str]) -> RunResult:
            return await runner.run(argv, env=env)

        await check_run(run, BOX, text)


@pytest.mark.asyncio
@pytest.mark.parametrize("quote", ["$(touch {c})", "`touch {c}`"])
async def test_working_directory_is_never_code(sshd: Sshd, quote: str) -> None:
    """The working directory of a job that cannot enter it is reported, not run."""
    text = "/nonexistent/" + quote.format(c=BOX.path)
    async with aiores.Session(journal=None, contexts=[sshd.context()]) as session:
        js = session.job_service(sshd.url())
        job = await js.submit(JobDescription(executable="true", working_directory=text))
        async with asyncio.timeout(STEP):
            assert await job.wait() is JobState.FAILED
        assert job.exit_code == 126
    BOX.assert_untouched(text)


@pytest.mark.asyncio
async def test_relative_working_directory_starts_at_login(sshd: Sshd, test_home: Path) -> None:
    """One rule for a relative working directory: from where a command starts (the
    login directory over SSH, the program's current directory on local://)."""
    sub = test_home / "wd-rel"
    sub.mkdir(exist_ok=True)
    shutil.chown(sub, USER, USER)
    async with aiores.Session(journal=None, contexts=[sshd.context()]) as session:
        js = session.job_service(sshd.url())
        job = await js.submit(JobDescription(executable="pwd", working_directory="wd-rel"))
        async with asyncio.timeout(STEP):
            assert await job.wait() is JobState.DONE
        assert job.stdout == f"{sub}\n"
