"""Arbitrary text through every field of a sim VM's jobs, commands and scripts reaches
the program verbatim, and never runs as shell code on the VM."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest
import pytest_asyncio
from hypothesis import given

import aiores
from aiores import BadParameter, Compute, RunResult

from ..injection import SETTINGS, Canary, carried, check_job, check_run
from ..shared import SHARED
from .conftest import booted

#: The texts name the canary, so it exists before the tests are collected; in the
#: directory shared with every VM (an isolated VM's /tmp is its own).
BOX = Canary(SHARED)


@pytest.fixture(scope="module", autouse=True)
def _remove_box() -> Iterator[None]:
    yield
    BOX.remove()


@pytest_asyncio.fixture
async def vm(state_dir: Path) -> AsyncIterator[Compute]:
    async with booted(1, state_dir=state_dir) as (_, vms):
        yield vms[0]


@pytest.mark.asyncio
@SETTINGS
@given(text=BOX.texts())
async def test_fields(vm: Compute, tmp_path: Path, text: str) -> None:
    await check_job(vm.job_service(), BOX, text)

    async def run(argv: Sequence[str], env: dict[str, str]) -> RunResult:
        return await vm.run(argv, env=env)

    await check_run(run, BOX, text)

    # copy_and_run: the text as the script's argument.
    script = tmp_path / "args.sh"
    script.write_text('printf "%s" "$1"\n')
    try:
        result = await aiores.Group([vm]).copy_and_run(script, [text], timeout=30)
    except BadParameter:
        assert not carried(text)
    else:
        assert carried(text)
        assert result[0].stdout == text
    BOX.assert_untouched(text)
