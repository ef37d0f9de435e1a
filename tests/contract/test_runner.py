"""The runner contract: ``session.command_runner(url).run(...)`` on every backend.

Exit status and output are results (a non-zero exit is not an error); stdin and
environment reach the command; a timeout raises ``aiores.Timeout`` with the command
stopped; cancelling a run stops the command.
"""

from __future__ import annotations

import asyncio

import pytest

import aiores

from .conftest import STEP, Backend, marker, sleeping, until

pytestmark = pytest.mark.asyncio


async def test_exit_status_and_output(backend: Backend) -> None:
    async with backend.session() as session:
        if not backend.has("runner"):
            with pytest.raises(aiores.NotSupported):
                await session.command_runner(backend.runner_url)
            return
        runner = await session.command_runner(backend.runner_url)
        async with asyncio.timeout(STEP):
            failed = await runner.run("echo out; echo err >&2; exit 4")
            ok = await runner.run(["printf", "%s|", "a b", "$HOME", "it's"])
    assert (failed.exit_status, failed.stdout, failed.stderr) == (4, "out\n", "err\n")
    assert (ok.exit_status, ok.stdout) == (0, "a b|$HOME|it's|")


async def test_stdin_and_environment(backend: Backend) -> None:
    async with backend.session() as session:
        if not backend.has("runner"):
            with pytest.raises(aiores.NotSupported):
                await session.command_runner(backend.runner_url)
            return
        runner = await session.command_runner(backend.runner_url)
        async with asyncio.timeout(STEP):
            fed = await runner.run(["cat"], stdin=b"line 1\nline 2\n")
            env = await runner.run('printf %s "$AIORES_CONTRACT"', env={"AIORES_CONTRACT": "v 1"})
    assert (fed.exit_status, fed.stdout) == (0, "line 1\nline 2\n")
    assert (env.exit_status, env.stdout) == (0, "v 1")


async def test_timeout_stops_the_command(backend: Backend) -> None:
    async with backend.session() as session:
        if not backend.has("runner"):
            with pytest.raises(aiores.NotSupported):
                await session.command_runner(backend.runner_url)
            return
        runner = await session.command_runner(backend.runner_url)
        mark = marker()
        async with asyncio.timeout(STEP):
            with pytest.raises(aiores.Timeout):
                await runner.run(f"sleep {mark}; echo never", timeout=1.0)
        await until(lambda: not sleeping(mark), f"sleep {mark} stopped after the timeout")


async def test_cancelling_a_run_stops_the_command(backend: Backend) -> None:
    async with backend.session() as session:
        if not backend.has("runner"):
            with pytest.raises(aiores.NotSupported):
                await session.command_runner(backend.runner_url)
            return
        runner = await session.command_runner(backend.runner_url)
        mark = marker()
        run = asyncio.ensure_future(runner.run(f"sleep {mark}; echo never"))
        await until(lambda: sleeping(mark), f"sleep {mark} started")
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        await until(lambda: not sleeping(mark), f"sleep {mark} stopped after the cancel")
