"""Arbitrary text through every field of an ssh:// job and command (real sshd) reaches
the program verbatim, and never runs as shell code on the server."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import given

import aiores
from aiores import JobDescription, JobState, RunResult

from ..injection import SETTINGS, STEP, Canary, check_job, check_run
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
