"""Arbitrary text through every field of a local job and command reaches it verbatim."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
from hypothesis import given

import aiores
from aiores import RunResult

from ..injection import SETTINGS, Canary, check_job, check_run

#: The texts name the canary, so it exists before the tests are collected.
BOX = Canary()


@pytest.fixture(scope="module", autouse=True)
def _remove_box() -> Iterator[None]:
    yield
    BOX.remove()


@pytest.mark.asyncio
@SETTINGS
@given(text=BOX.texts())
async def test_job_fields(text: str) -> None:
    async with aiores.Session(journal=None) as session:
        await check_job(session.job_service("local://"), BOX, text)


@pytest.mark.asyncio
@SETTINGS
@given(text=BOX.texts())
async def test_command_fields(text: str) -> None:
    async with aiores.Session(journal=None) as session:
        runner = await session.command_runner("local://")

        async def run(argv: Sequence[str], env: dict[str, str]) -> RunResult:
            return await runner.run(argv, env=env)

        await check_run(run, BOX, text)
