"""The local:// command runner: results, timeouts and cancellation that leave nothing behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from aiores._exceptions import BadParameter, DoesNotExist, PermissionDenied, Timeout
from aiores.adaptor import URL
from aiores_local import LocalCommandRunner

from .conftest import STEP, FakeEnv, Fifo, group_members, kill_group, wait_until


@pytest_asyncio.fixture
async def runner(env: FakeEnv) -> AsyncIterator[LocalCommandRunner]:
    runner = LocalCommandRunner(URL.parse("local://?grace=0.5"), env)
    await runner.open()
    yield runner
    await runner.aclose()


@pytest.mark.asyncio
async def test_shell_command(runner: LocalCommandRunner) -> None:
    result = await runner.run("echo out; echo err >&2; exit 7")
    assert (result.exit_status, result.stdout, result.stderr) == (7, "out\n", "err\n")
    assert result.exit_signal is None
    assert not result.ok
    assert result.elapsed > 0


@pytest.mark.asyncio
async def test_sequence_runs_without_a_shell(runner: LocalCommandRunner) -> None:
    result = await runner.run(["printf", "%s|", "$HOME", "a b", ";"])
    assert result.ok
    assert result.stdout == "$HOME|a b|;|"


@pytest.mark.asyncio
async def test_stdin_env_and_undecodable_output(runner: LocalCommandRunner) -> None:
    result = await runner.run(
        'cat; echo "$AIORES_Y"; printf "\\377"', stdin=b"input\n", env={"AIORES_Y": "why"}
    )
    assert result.stdout == "input\nwhy\n\ufffd"


@pytest.mark.asyncio
async def test_killed_by_signal(runner: LocalCommandRunner) -> None:
    result = await runner.run("kill -TERM $$")
    assert (result.exit_status, result.exit_signal) == (None, "TERM")


@pytest.mark.asyncio
async def test_bad_commands(runner: LocalCommandRunner, tmp_path: Path) -> None:
    with pytest.raises(DoesNotExist, match="'/no/such/tool' does not exist"):
        await runner.run(["/no/such/tool", "x"])
    data = tmp_path / "data.txt"
    data.write_text("not a program")
    with pytest.raises(PermissionDenied, match=r"data\.txt' is not an executable"):
        await runner.run([str(data)])
    with pytest.raises(BadParameter, match="non-blank"):
        await runner.run("  ")
    with pytest.raises(BadParameter, match="program and its arguments"):
        await runner.run([])
    # a missing program under a shell is the shell's business: exit 127
    assert (await runner.run("no-such-tool-xyz")).exit_status == 127


@pytest.mark.asyncio
async def test_timeout_kills_the_process_group(runner: LocalCommandRunner, fifo: Fifo) -> None:
    # The command starts a grandchild that ignores SIGTERM; both must be gone after.
    command = f"trap '' TERM; sleep 30 & echo $$ $! > {fifo.path}; wait"
    task = asyncio.ensure_future(runner.run(command, timeout=0.5))
    leader, grandchild = (int(pid) for pid in (await fifo.readline()).split())
    assert {p.pid for p in group_members(leader)} == {leader, grandchild}
    with pytest.raises(Timeout, match=r"did not finish within 0\.5 s") as caught:
        await task
    assert isinstance(caught.value, TimeoutError)
    await wait_until(lambda: group_members(leader) == [], "the whole group is gone")


@pytest.mark.asyncio
async def test_cancel_terms_then_kills_the_group(runner: LocalCommandRunner, fifo: Fifo) -> None:
    command = f"trap '' TERM; sleep 30 & echo $$ $! > {fifo.path}; wait; wait"
    task = asyncio.ensure_future(runner.run(command))
    leader, _ = (int(pid) for pid in (await fifo.readline()).split())
    loop = asyncio.get_running_loop()
    start = loop.time()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert loop.time() - start >= 0.5  # SIGTERM was ignored: SIGKILL came after the grace
    await wait_until(lambda: group_members(leader) == [], "the group to be gone")


@pytest.mark.asyncio
async def test_cancel_of_a_command_that_obeys_term_is_quick(
    runner: LocalCommandRunner, fifo: Fifo
) -> None:
    task = asyncio.ensure_future(runner.run(f"echo $$ > {fifo.path}; exec sleep 30"))
    leader = int(await fifo.readline())
    loop = asyncio.get_running_loop()
    start = loop.time()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert loop.time() - start < 0.5
    assert group_members(leader) == []


@pytest.mark.asyncio
async def test_cancellation_during_cleanup_still_cleans_up(
    runner: LocalCommandRunner, fifo: Fifo, env: FakeEnv
) -> None:
    command = f"trap '' TERM; echo $$ > {fifo.path}; while :; do sleep 0.05; done"
    task = asyncio.ensure_future(runner.run(command))
    leader = int(await fifo.readline())
    try:
        task.cancel()
        await asyncio.sleep(0.1)  # inside the cleanup's grace period
        task.cancel()  # a second cancellation must not cut the cleanup short
        with pytest.raises(asyncio.CancelledError):
            await task
        # The second cancellation ended only the wait: the stop is one of the env's
        # cleanups still, and the env (the session) waits for it on close.
        assert len(env.cleanups) == 1
        async with asyncio.timeout(STEP):
            await env.cleanups.drain(STEP)
        # The leader is gone (the cleanup waited for it); the group's other members
        # die of the KILL a moment later, which nothing announces.
        await wait_until(lambda: group_members(leader) == [], "the group to be gone")
    finally:
        kill_group(leader)


@pytest.mark.asyncio
async def test_runs_concurrently(runner: LocalCommandRunner) -> None:
    results = await asyncio.gather(*(runner.run(["echo", str(n)]) for n in range(50)))
    assert [r.stdout for r in results] == [f"{n}\n" for n in range(50)]
