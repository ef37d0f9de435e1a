"""Fixtures for the recovery tests: the test session's sim cloud for every test, and
programs of their own (a fresh interpreter on the same state and cloud)."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from typing import Any

import pytest

from aiores_sim.testing import SimCloudProcess

__all__ = ["STEP", "in_another_program"]

#: Seconds any one await in these tests may take before the test fails.
STEP = 30.0


@pytest.fixture(autouse=True)
def _cloud(aiores_sim_cloud: SimCloudProcess) -> SimCloudProcess:
    """Every recovery test reaches the session's cloud."""
    return aiores_sim_cloud


async def in_another_program(body: str, *, dies: bool = False) -> Any:
    """Run ``body`` (the inside of ``async def main(session)``, returning something
    JSON can hold) in a fresh interpreter with a journalled Session; its answer.

    With ``dies`` the program ends right after answering, its session still open
    (its journal flushed first), as a program killed would.
    """
    end = (
        "        await session.journal.flush()\n        sys.stdout.flush()\n        os._exit(0)\n"
        if dies
        else ""
    )
    code = (
        "import asyncio, json, os, sys, aiores\n"
        "from aiores import *\n"
        "async def main(session):\n"
        + textwrap.indent(textwrap.dedent(body), "    ")
        + "\nasync def run():\n"
        "    async with aiores.Session() as session:\n"
        "        print(json.dumps(await main(session)))\n" + end + "asyncio.run(run())\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(STEP):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return json.loads(out.decode().splitlines()[-1])
