"""Cancelling runs leaves nothing running on the remote side, whatever the pool's state."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh
import psutil
import pytest

import aiores
from aiores_ssh import CommandTimeout, SSHCommandRunner, pool_for
from aiores_ssh._runner import _Run
from aiores_ssh._scripts import RUN_VAR

from ..cancel_trials import cancel_submits
from .conftest import STEP, Adaptors, FakeEnv, gone, opened, record_commands, wait_until
from .servers import Sshd, fault_server


def _pids(paths: list[Path]) -> list[int]:
    pids = []
    for path in paths:
        try:
            text = path.read_text()
        except FileNotFoundError:
            continue
        if text.endswith("\n"):
            pids.append(int(text))
    return pids


async def _cancel_all(tasks: list[asyncio.Task[object]]) -> None:
    for task in tasks:
        task.cancel()
    async with asyncio.timeout(STEP):
        results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results), results


@pytest.mark.asyncio
async def test_cancelling_runs_while_the_pool_is_full(
    sshd: Sshd, tmp_path: Path, test_home: Path
) -> None:
    """Every slot is held by a run being cancelled, more runs wait in the queue: each
    stop still gets through, and no remote command survives."""
    env = FakeEnv(tmp_path, sshd.context())
    pool_for(env).max_connections = 1
    async with opened(env) as made:
        runner = await made.runner(sshd.url())
        runner.kill_grace = 0.5
        tag = secrets.token_hex(4)
        files = [test_home / f"full-{tag}-{i}" for i in range(15)]
        tasks: list[asyncio.Task[object]] = [
            asyncio.create_task(runner.run(f"echo $$ > {f}; exec sleep 60")) for f in files
        ]
        await wait_until(lambda: len(_pids(files)) == 10)  # MaxSessions 10, one connection
        pids = _pids(files)
        await _cancel_all(tasks)
        assert [pid for pid in pids if not gone(pid)] == []
        assert len(_pids(files)) == 10  # the queued runs never started
        for f in files:
            f.unlink(missing_ok=True)


@pytest.mark.asyncio
async def test_cancelling_runs_on_a_full_server_that_ignores_signals(tmp_path: Path) -> None:
    """No signal requests, no channel beyond the server's limit: the stop by pid goes
    over a connection of its own."""
    async with fault_server(tmp_path / "srv", max_sessions=2) as server:
        env = FakeEnv(tmp_path, server.context(max_sessions=2))
        pool_for(env).max_connections = 1
        async with opened(env) as made:
            runner = await made.runner(server.url())
            runner.kill_grace = 0.5
            files = [tmp_path / f"pid-{i}" for i in range(4)]
            tasks: list[asyncio.Task[object]] = [
                asyncio.create_task(runner.run(f"echo $$ > {f}; exec sleep 60")) for f in files
            ]
            await wait_until(lambda: len(_pids(files)) == 2)
            pids = _pids(files)
            await _cancel_all(tasks)
            assert [pid for pid in pids if not gone(pid)] == []
            assert runner.pool.connects == 2  # the one for the stops


@pytest.mark.asyncio
async def test_a_stop_outlives_a_second_cancel_and_the_session_waits_for_it(
    sshd: Sshd, test_home: Path
) -> None:
    """Cancelling a run again while its command is being stopped ends only the wait:
    the stop is the session's cleanup, and closing the session waits for it."""
    pidfile = test_home / f"twice-{secrets.token_hex(4)}.pid"
    async with aiores.Session(journal=None, contexts=[sshd.context()]) as session:
        runner = await session.command_runner(sshd.url())
        assert isinstance(runner, SSHCommandRunner)
        runner.kill_grace = 1.0
        # TERM is ignored (across exec, too): only the KILL after kill_grace ends it.
        task = asyncio.create_task(runner.run(f"trap '' TERM; echo $$ > {pidfile}; exec sleep 60"))
        await wait_until(lambda: len(_pids([pidfile])) == 1)
        [pid] = _pids([pidfile])
        task.cancel()
        await wait_until(lambda: len(session.cleanups) == 1)  # the stop has begun
        task.cancel()
        async with asyncio.timeout(STEP):
            with pytest.raises(asyncio.CancelledError):
                await task
        assert not gone(pid)  # the second cancel did not wait for the stop ...
        assert len(session.cleanups) == 1  # ... nor cut it off
    assert gone(pid)  # closing the session waited for the stop
    assert len(session.cleanups) == 0
    pidfile.unlink()


@pytest.mark.asyncio
async def test_stops_run_as_cleanups_of_the_env(
    sshd: Sshd, tmp_path: Path, test_home: Path
) -> None:
    """The stop of a cancelled run is awaited by whoever drains the env's cleanups
    (the session), before the pool closes its connections."""
    pidfile = test_home / f"env-{secrets.token_hex(4)}.pid"
    env = FakeEnv(tmp_path, sshd.context())
    async with opened(env) as made:
        runner = await made.runner(sshd.url())
        runner.kill_grace = 1.0
        task = asyncio.create_task(runner.run(f"trap '' TERM; echo $$ > {pidfile}; exec sleep 60"))
        await wait_until(lambda: len(_pids([pidfile])) == 1)
        [pid] = _pids([pidfile])
        task.cancel()
        await wait_until(lambda: len(env.cleanups) == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        pool = runner.pool
    assert gone(pid)
    assert pool.closed
    assert pool.live_connections() == 0
    pidfile.unlink()


def _running(text: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if text in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return found


@pytest.mark.asyncio
@pytest.mark.parametrize("when", ["before the server opened it", "before the command started"])
async def test_cancelling_while_the_channel_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """The channel being opened is kept hold of: its command is stopped, the channel
    closed on the server, and only then its slot given back."""
    async with (
        fault_server(tmp_path / "srv") as server,
        opened(FakeEnv(tmp_path, server.context())) as made,
    ):
        runner = await made.runner(server.url())
        runner.kill_grace = 0.5
        assert (await runner.run("true")).ok  # a warm connection
        tag = f"{60 + secrets.randbelow(1000) / 1000:.3f}"
        task: asyncio.Task[object] | None = None
        hooked: list[bool] = []

        def cancel() -> None:  # once: the stop opens a channel, too
            assert task is not None
            if not hooked:
                hooked.append(True)
                task.cancel()

        if when == "before the server opened it":
            create = asyncssh.SSHClientConnection.create_session

            async def cancelling(self: Any, *args: Any, **kwargs: Any) -> Any:
                cancel()
                return await create(self, *args, **kwargs)

            monkeypatch.setattr(asyncssh.SSHClientConnection, "create_session", cancelling)
        else:
            made_channel: Callable[..., None] = _Run.connection_made

            def cancelling_made(self: _Run, chan: Any) -> None:
                cancel()  # create_session now waits for the exec reply
                made_channel(self, chan)

            monkeypatch.setattr(_Run, "connection_made", cancelling_made)
        task = asyncio.create_task(runner.run(f"exec sleep {tag}"))
        async with asyncio.timeout(STEP):
            with pytest.raises(asyncio.CancelledError):
                await task
        monkeypatch.undo()
        assert _running(f"sleep {tag}") == []
        assert server.sessions.open == 0
        assert runner.pool.channels_in_use() == 0
        assert (await runner.run("true")).ok
        assert runner.pool.connects == 1


@pytest.mark.asyncio
@pytest.mark.timeout(180)
async def test_cancelling_submits_at_random_points_leaves_no_job_running(
    sshd: Sshd, tmp_path: Path
) -> None:
    """A submit cancelled anywhere (before the job directory, before the wrapper, between
    the wrapper's start and its pid being recorded, after) leaves no job running, and
    no submit intent stays open: each cancel was confirmed by the host."""
    async with aiores.Session(journal=tmp_path / "journal.db", contexts=[sshd.context()]) as s:
        found = await cancel_submits(s, s.job_service(sshd.url()), trials=40, seed=2024)
    assert found.left_running == [], str(found)
    assert "pending" not in found.statuses, str(found)
    assert found.inside >= 10, str(found)  # most draws land inside the submit


def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]


#: Three processes that ignore TERM (so only the stop by token's KILL ends them): the
#: login shell that leads the group, a child in its group, and a grandchild that left
#: for a session and group of its own (found by the token in its environment only).
#: Each writes its pid, then "ready".
_THREE = (
    "trap '' TERM; echo $$ >> {f}; sleep 60 & echo $! >> {f}; "
    "setsid sh -c 'echo $$ >> {f}; exec sleep 61' & "
    "until [ $(wc -l < {f}) -ge 3 ]; do sleep 0.05; done; echo ready >> {f}; wait"
)


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["timed out", "cancelled"])
async def test_a_stopped_run_leaves_none_of_its_processes(
    adaptors: Adaptors, sshd: Sshd, test_home: Path, how: str
) -> None:
    """A timed-out or cancelled command that ignores TERM on OpenSSH: its channel's
    signals do not end it, the stop by its token does, its whole process group and a
    process that left the group, too."""
    runner = await adaptors.runner(sshd.url())
    runner.kill_grace = 0.5
    pidfile = test_home / f"three-{secrets.token_hex(4)}"
    command = _THREE.format(f=pidfile)
    if how == "timed out":
        with pytest.raises(CommandTimeout):
            await runner.run(command, timeout=2.0)
    else:
        task = asyncio.create_task(runner.run(command))
        await wait_until(lambda: "ready" in _lines(pidfile))
        task.cancel()
        async with asyncio.timeout(STEP):
            with pytest.raises(asyncio.CancelledError):
                await task
    lines = _lines(pidfile)
    assert lines[-1] == "ready", lines
    pids = [int(line) for line in lines[:-1]]
    assert len(pids) == 3
    assert [pid for pid in pids if not gone(pid)] == []
    assert runner.pool.channels_in_use() == 0
    assert (await runner.run("true")).ok  # the pool is fine afterwards
    pidfile.unlink()


@pytest.mark.asyncio
async def test_the_stop_finds_the_run_by_its_token_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a server that ignores signal requests only the stop by token can end a run:
    the run's processes carry AIORES_RUN=TOKEN.PGID, the stop ends them (the child
    that left the group too), and another run on the same host, with another token,
    runs on."""
    sent = record_commands(monkeypatch)
    async with fault_server(tmp_path / "srv") as server:
        env = FakeEnv(tmp_path, server.context())
        async with opened(env) as made:
            runner = await made.runner(server.url())
            runner.kill_grace = 0.5
            mine, other = tmp_path / "mine", tmp_path / "other"
            marked = f'echo "${RUN_VAR}" > {{f}}.mark; '
            task = asyncio.create_task(runner.run(marked.format(f=mine) + _THREE.format(f=mine)))
            bystander = asyncio.create_task(runner.run(_THREE.format(f=other)))
            await wait_until(lambda: "ready" in _lines(mine) and "ready" in _lines(other))
            [mark] = _lines(Path(f"{mine}.mark"))
            pids = [int(p) for p in _lines(mine)[:-1]]
            token, _, leader = mark.rpartition(".")
            assert leader == str(pids[0])  # the mark names the group its shell leads
            assert len(token) >= 8
            # Every process it started carries the mark in its environment.
            assert [psutil.Process(pid).environ().get(RUN_VAR) for pid in pids[1:]] == [mark] * 2
            # The token went out in the run's command line, and nothing else yet.
            [command] = [c for c in sent if token in c]
            assert f"{RUN_VAR}={token}." in command
            task.cancel()
            async with asyncio.timeout(STEP):
                with pytest.raises(asyncio.CancelledError):
                    await task
            assert [pid for pid in pids if not gone(pid)] == []
            assert any(token in c and "stoprun" in c for c in sent)  # stopped by its token
            others = [int(p) for p in _lines(other)[:-1]]
            assert [pid for pid in others if gone(pid)] == []  # the other run runs on
            bystander.cancel()
            async with asyncio.timeout(STEP):
                with pytest.raises(asyncio.CancelledError):
                    await bystander
            assert [pid for pid in others if not gone(pid)] == []


@pytest.mark.asyncio
async def test_cancelling_right_after_the_channel_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled in the iteration its open completed (the caller not yet resumed): the
    open it holds is undone all the same, its command stopped, its slot given back."""
    from aiores_ssh import _pool

    async with (
        fault_server(tmp_path / "srv") as server,
        opened(FakeEnv(tmp_path, server.context())) as made,
    ):
        runner = await made.runner(server.url())
        runner.kill_grace = 0.5
        assert (await runner.run("true")).ok  # a warm connection
        tag = f"{60 + secrets.randbelow(1000) / 1000:.3f}"
        task: asyncio.Task[object] | None = None
        hooked: list[bool] = []
        original = _pool._opened

        def opened_then_cancelled(pooled: Any, fut: Any, opening: Any) -> None:
            original(pooled, fut, opening)
            if not hooked:  # once: the stop opens a channel, too
                hooked.append(True)
                assert task is not None
                assert fut.done()
                task.cancel()

        monkeypatch.setattr(_pool, "_opened", opened_then_cancelled)
        task = asyncio.create_task(runner.run(f"exec sleep {tag}"))
        async with asyncio.timeout(STEP):
            with pytest.raises(asyncio.CancelledError):
                await task
        monkeypatch.undo()
        assert hooked == [True]
        await wait_until(lambda: _running(f"sleep {tag}") == [])
        assert server.sessions.open == 0
        assert runner.pool.channels_in_use() == 0
        assert (await runner.run("true")).ok
        assert runner.pool.connects == 1
