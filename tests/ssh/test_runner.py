"""SSHCommandRunner and the pool against real OpenSSH sshds."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import select
from collections import Counter
from pathlib import Path
from typing import Any

import asyncssh
import psutil
import pytest

import aiores
import aiores_ssh._pool
from aiores import ConnectionLost, IncorrectState, NoSuccess
from aiores_ssh import CommandTimeout, pool_for
from aiores_ssh._pool import _OPENS_PER_TURN

from ..loop_turns import iteration_counter
from .conftest import STEP, USER, Adaptors, FakeEnv, gone, opened, record_commands, wait_until
from .servers import Sshd


@pytest.mark.asyncio
async def test_run_returns_output_and_exit_status(adaptors: Adaptors, sshd: Sshd) -> None:
    runner = await adaptors.runner(sshd.url())
    result = await runner.run("echo out; echo err >&2; exit 3")
    assert (result.exit_status, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert result.exit_signal is None
    assert not result.ok

    quoted = await runner.run(["printf", "%s|", "a b", "it's", "$HOME"])
    assert quoted.stdout == "a b|it's|$HOME|"

    fed = await runner.run('cat; echo "$FOO"', stdin=b"in\n", env={"FOO": "a 'b' c"})
    assert fed.ok
    assert fed.stdout == "in\na 'b' c\n"


@pytest.mark.asyncio
async def test_an_env_named_like_the_runs_mark_does_not_undo_it(
    adaptors: Adaptors, sshd: Sshd
) -> None:
    """The run's mark is set after the caller's env: an env named AIORES_RUN cannot
    hide the run's processes from the stop that looks for the mark."""
    runner = await adaptors.runner(sshd.url())
    result = await runner.run('echo "$AIORES_RUN"', env={"AIORES_RUN": "hidden"})
    assert result.ok
    token, _, leader = result.stdout.strip().rpartition(".")
    assert re.fullmatch("[0-9a-f]{8,64}", token), result.stdout
    assert leader.isdigit()


@pytest.mark.asyncio
async def test_a_run_with_no_input_reads_nothing_and_sends_no_eof(
    adaptors: Adaptors, sshd: Sshd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing for its standard input the command reads /dev/null: it sees the
    end of its input at once, and the client sends no EOF (one packet less per run).
    Input or an environment still travel on the channel, ended by an EOF."""
    eofs: list[object] = []
    write_eof = asyncssh.SSHClientChannel.write_eof

    def counting(self: asyncssh.SSHClientChannel[bytes]) -> None:
        eofs.append(self)
        write_eof(self)

    monkeypatch.setattr(asyncssh.SSHClientChannel, "write_eof", counting)
    runner = await adaptors.runner(sshd.url())
    # cat would wait for ever on an input that never ends: the timeout says so.
    bare = await runner.run("cat; echo end", timeout=STEP)
    assert (bare.exit_status, bare.stdout) == (0, "end\n")
    empty = await runner.run(["cat"], stdin=b"", timeout=STEP)
    assert (empty.exit_status, empty.stdout) == (0, "")
    assert eofs == []
    fed = await runner.run("cat", stdin=b"in", timeout=STEP)
    assert fed.stdout == "in"
    exported = await runner.run('cat; echo "$A"', env={"A": "1"}, timeout=STEP)
    assert exported.stdout == "1\n"  # the exports were read, and nothing after them
    assert len(eofs) == 2


@pytest.mark.asyncio
async def test_the_pool_offers_aes_gcm_first(adaptors: Adaptors, sshd: Sshd) -> None:
    """OpenSSH prefers chacha20-poly1305, ~8x dearer per packet in asyncssh: the pool's
    connections offer AES-GCM first, and the server takes it."""
    runner = await adaptors.runner(sshd.url())
    lease, _ = await runner.pool.channel(runner.target, _nothing, _drop_nothing)
    try:
        assert lease.conn.get_extra_info("send_cipher") == "aes128-gcm@openssh.com"
        assert lease.conn.get_extra_info("recv_cipher") == "aes128-gcm@openssh.com"
    finally:
        lease.release()


async def _nothing(conn: object) -> None:
    return None


async def _drop_nothing(lease: object, _: None) -> None:
    return None


@pytest.mark.asyncio
async def test_connection_is_reused(adaptors: Adaptors, sshd: Sshd) -> None:
    runner = await adaptors.runner(sshd.url())
    for _ in range(5):
        assert (await runner.run("true")).ok
    other = await adaptors.runner(sshd.url())  # a second adaptor shares the pool
    assert (await other.run("true")).ok
    assert runner.pool is other.pool
    assert runner.pool.connects == 1


@pytest.mark.asyncio
async def test_a_closed_pool_is_never_handed_out(sshd: Sshd, tmp_path: Path) -> None:
    env = FakeEnv(tmp_path, sshd.context())
    async with opened(env) as made:
        runner = await made.runner(sshd.url())
        assert (await runner.run("true")).ok
        pool = pool_for(env)
        assert runner.pool is pool
        await pool.aclose()
        assert pool.live_connections() == 0
        with pytest.raises(IncorrectState):
            pool_for(env)
        with pytest.raises(NoSuccess, match="closed"):
            await runner.run("true")  # an adaptor holding it is refused, too


@pytest.mark.asyncio
async def test_200_concurrent_runs_within_openssh_default_limits(
    adaptors: Adaptors, sshd: Sshd
) -> None:
    runner = await adaptors.runner(sshd.url())
    before = sshd.log_count("MaxStartups")
    async with asyncio.timeout(40):
        results = await asyncio.gather(*(runner.run(f"echo {i}") for i in range(200)))
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(200)]
    # MaxSessions 10: 200 channels need at least 20 connections, and no more were opened.
    assert runner.pool.connects == 20
    assert sshd.log_count("MaxStartups") == before  # sshd never dropped a handshake


@pytest.mark.asyncio
async def test_300_concurrent_runs_on_the_permissive_sshd(
    sshd_permissive: Sshd, tmp_path: Path
) -> None:
    async with opened(FakeEnv(tmp_path, sshd_permissive.context(max_sessions=50))) as made:
        runner = await made.runner(sshd_permissive.url())
        async with asyncio.timeout(40):
            results = await asyncio.gather(*(runner.run("echo $$") for _ in range(300)))
        assert all(r.ok for r in results)
        assert len({r.stdout for r in results}) == 300  # 300 distinct remote processes
        assert runner.pool.connects == 6


@pytest.mark.asyncio
async def test_channel_opens_are_spread_over_loop_iterations(
    sshd_permissive: Sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """48 runs gathered on one warm connection: their channels open a few per loop
    iteration, not all in one (which would stall every other task meanwhile)."""
    async with opened(FakeEnv(tmp_path, sshd_permissive.context(max_sessions=50))) as made:
        runner = await made.runner(sshd_permissive.url())
        assert (await runner.run("true")).ok  # connected: every open below is on it
        now, stop = iteration_counter(asyncio.get_running_loop())
        turns: list[int] = []
        create = asyncssh.SSHClientConnection.create_session

        async def counted(self: Any, factory: Any, command: Any = (), **kwargs: Any) -> Any:
            turns.append(now())
            return await create(self, factory, command, **kwargs)

        monkeypatch.setattr(asyncssh.SSHClientConnection, "create_session", counted)
        try:
            async with asyncio.timeout(STEP * 4):
                results = await asyncio.gather(*(runner.run("true") for _ in range(48)))
        finally:
            stop()
        assert all(r.ok for r in results)
        assert runner.pool.connects == 1
        per_iteration = Counter(turns)
        assert len(turns) == 48
        assert max(per_iteration.values()) <= _OPENS_PER_TURN
        assert len(per_iteration) >= 48 // _OPENS_PER_TURN


@pytest.mark.asyncio
async def test_answers_in_together_are_handled_a_few_connections_per_iteration(
    sshd_permissive: Sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twelve commands on twelve connections end while the loop is held: their answers,
    all in when it next polls, are handled at most ``_READS_PER_TURN`` connections per
    iteration (2 here), in the iterations after, and every result is whole."""
    monkeypatch.setattr(aiores_ssh._pool, "_READS_PER_TURN", 2)  # read when the pool is made
    handled: list[int] = []
    now, stop = iteration_counter(asyncio.get_running_loop())
    original = asyncssh.SSHClientConnection.data_received

    def counted(self: Any, data: bytes, datatype: Any = None) -> None:
        handled.append(now())
        original(self, data, datatype)

    monkeypatch.setattr(asyncssh.SSHClientConnection, "data_received", counted)
    try:
        async with opened(FakeEnv(tmp_path, sshd_permissive.context(max_sessions=1))) as made:
            runner = await made.runner(sshd_permissive.url())
            async with asyncio.timeout(STEP):
                await asyncio.gather(*(runner.run("true") for _ in range(12)))
            pool, target = runner._endpoint()
            assert pool.connects == 12  # one command per connection
            live = pool._state(target).live
            sockets = [pooled.conn.get_extra_info("socket") for pooled in live]
            commands = [f"sleep 0.2; echo out-{i}" for i in range(12)]
            runs = [asyncio.ensure_future(runner.run(command)) for command in commands]
            # Every channel opened and its command accepted (the open returned).
            await wait_until(lambda: sum(pooled.open for pooled in live) == 12)
            handled.clear()
            # Hold the loop until every connection has its answer in (as a busy loop
            # would): the next poll finds all twelve ready at once.
            waiting = list(sockets)
            while waiting:
                ready, _, _ = select.select(waiting, [], [], STEP)
                assert ready, "no answer came"
                waiting = [sock for sock in waiting if sock not in ready]
            async with asyncio.timeout(STEP):
                results = await asyncio.gather(*runs)
    finally:
        stop()
    assert [r.stdout for r in results] == [f"out-{i}\n" for i in range(12)]
    per_iteration = Counter(handled)
    assert max(per_iteration.values()) <= 2
    assert len(per_iteration) >= 6  # twelve connections' answers, two per iteration


@pytest.mark.asyncio
async def test_server_with_fewer_sessions_than_assumed(sshd: Sshd, tmp_path: Path) -> None:
    # The context assumes 25 channels per connection; this sshd allows 10.
    async with opened(FakeEnv(tmp_path, sshd.context(max_sessions=25))) as made:
        runner = await made.runner(sshd.url())
        async with asyncio.timeout(STEP):
            results = await asyncio.gather(*(runner.run("sleep 0.3") for _ in range(50)))
        assert all(r.ok for r in results)
        # The refusals taught the pool the server's limit, and no more connections
        # were opened than 50 channels at 10 a connection need.
        assert runner.pool.capacity(runner.target) == 10
        assert runner.pool.connects <= 5


def _pid_in(path: Path) -> int | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return int(text) if text.endswith("\n") else None


@pytest.mark.asyncio
async def test_cancelling_a_run_kills_the_remote_process(
    adaptors: Adaptors, sshd: Sshd, test_home: Path
) -> None:
    runner = await adaptors.runner(sshd.url())
    pidfile = test_home / f"pid-{secrets.token_hex(4)}"
    # The shell stays in the foreground; sleep runs in its process group.
    task = asyncio.create_task(runner.run(f"sleep 60 & echo $! > {pidfile}; wait"))
    await wait_until(lambda: _pid_in(pidfile) is not None)
    pid = _pid_in(pidfile)
    assert pid is not None
    assert not gone(pid)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gone(pid)
    pidfile.unlink()
    assert (await runner.run("true")).ok  # the pool is fine afterwards


@pytest.mark.asyncio
async def test_timeout_stops_the_command_and_keeps_partial_output(
    adaptors: Adaptors, sshd: Sshd, test_home: Path
) -> None:
    runner = await adaptors.runner(sshd.url())
    pidfile = test_home / f"pid-{secrets.token_hex(4)}"
    with pytest.raises(CommandTimeout) as caught:
        await runner.run(f"echo partial; echo $$ > {pidfile}; exec sleep 60", timeout=1.0)
    assert isinstance(caught.value, aiores.Timeout)
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.stdout == "partial\n"
    pid = _pid_in(pidfile)
    assert pid is not None
    assert gone(pid)
    pidfile.unlink()


@pytest.mark.asyncio
async def test_a_command_that_ignores_term_is_killed(
    adaptors: Adaptors, sshd: Sshd, test_home: Path
) -> None:
    runner = await adaptors.runner(sshd.url())
    runner.kill_grace = 0.5
    pidfile = test_home / f"pid-{secrets.token_hex(4)}"
    with pytest.raises(CommandTimeout):
        await runner.run(f"trap '' TERM; echo $$ > {pidfile}; while :; do sleep 1; done", timeout=1)
    pid = _pid_in(pidfile)
    assert pid is not None
    assert gone(pid)
    pidfile.unlink()


@pytest.mark.asyncio
async def test_a_dropped_connection_is_replaced(adaptors: Adaptors, sshd: Sshd) -> None:
    runner = await adaptors.runner(sshd.url())
    assert (await runner.run("true")).ok
    assert sshd.process is not None
    # Kill the server side of the pooled connection (sshd's per-connection children).
    for child in psutil.Process(sshd.process.pid).children(recursive=True):
        child.kill()
    await wait_until(lambda: runner.pool.live_connections() == 0)
    assert (await runner.run("echo again")).stdout == "again\n"
    assert runner.pool.connects == 2


@pytest.mark.asyncio
async def test_idle_connections_are_closed(adaptors: Adaptors, sshd: Sshd) -> None:
    runner = await adaptors.runner(sshd.url())
    runner.pool.idle_timeout = 0.2
    assert (await runner.run("true")).ok
    assert runner.pool.live_connections() == 1
    await wait_until(lambda: runner.pool.live_connections() == 0)
    assert (await runner.run("true")).ok
    assert runner.pool.connects == 2


@pytest.mark.asyncio
async def test_through_a_jump_host(sshd: Sshd, sshd_permissive: Sshd, tmp_path: Path) -> None:
    both = [str(sshd.known_hosts), str(sshd_permissive.known_hosts)]
    ctx = sshd.context(known_hosts=both, jump_host=f"{USER}@127.0.0.1:{sshd_permissive.port}")
    async with opened(FakeEnv(tmp_path, ctx)) as made:
        runner = await made.runner(sshd.url())
        results = await asyncio.gather(*(runner.run("echo $SSH_CONNECTION") for _ in range(3)))
        # sshd sees the connection coming from the jump host's forwarding, on loopback.
        assert all(r.ok and r.stdout.startswith("127.0.0.1 ") for r in results)
        assert runner.pool.connects == 2  # the jump connection and the tunnelled one


@pytest.mark.asyncio
async def test_jump_host_needs_no_handshake_slot_of_its_own(
    sshd: Sshd, sshd_permissive: Sshd, tmp_path: Path
) -> None:
    """A target's connect must not hold the only handshake slot while its jump host
    connection waits for one."""
    both = [str(sshd.known_hosts), str(sshd_permissive.known_hosts)]
    ctx = sshd.context(known_hosts=both, jump_host=f"{USER}@127.0.0.1:{sshd_permissive.port}")
    env = FakeEnv(tmp_path, ctx)
    pool_for(env).max_handshakes = 1
    async with opened(env) as made:
        runner = await made.runner(sshd.url())
        async with asyncio.timeout(10):
            results = await asyncio.gather(*(runner.run("true") for _ in range(3)))
        assert all(r.ok for r in results)
        assert runner.pool.connects == 2


@pytest.mark.asyncio
async def test_environment_values_stay_out_of_command_lines(
    adaptors: Adaptors, sshd: Sshd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any user of the host can read command lines (ps): values go on the input."""
    runner = await adaptors.runner(sshd.url())
    secret = "s3cr3t-" + secrets.token_hex(4)
    sent = record_commands(monkeypatch)
    result = await runner.run(
        'read line; echo "$TOKEN|$OTHER|$line"',
        stdin=b"fed\n",
        env={"TOKEN": secret, "OTHER": "two\nlines 'q'"},
    )
    assert result.stdout == f"{secret}|two\nlines 'q'|fed\n"
    assert sent
    assert not [command for command in sent if "s3cr3t" in command]


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ["A²", "É", "1A", "A-B", "", "A B"])
async def test_environment_names_must_be_portable(
    adaptors: Adaptors, sshd: Sshd, name: str
) -> None:
    runner = await adaptors.runner(sshd.url())
    with pytest.raises(aiores.BadParameter, match=re.escape(repr(name))):
        await runner.run("true", env={name: "x"})
    assert runner.pool.connects == 0  # refused before anything was sent


def test_a_forked_child_marks_its_runs_with_tokens_of_its_own() -> None:
    """Run tokens are a per-process prefix and a count: a forked worker that kept its
    parent's prefix would mark its runs as the parent's (and its siblings') runs, and
    stopping one by its token would stop the others."""
    from aiores_ssh._runner import _run_token

    mine = _run_token()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            os.write(write_end, _run_token().encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        theirs = os.read(read_end, 100).decode()
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    assert re.fullmatch("[0-9a-f]{13,64}", theirs), theirs
    assert theirs[:12] != mine[:12]


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["its connection closed", "the pool closed"])
async def test_a_run_whose_connection_this_side_closes_raises_connection_lost(
    sshd: Sshd, tmp_path: Path, how: str
) -> None:
    """A command in flight when this side closes its connection (the pool, as its
    session closes) ends with ConnectionLost, not an error of asyncssh's."""
    async with opened(FakeEnv(tmp_path, sshd.context())) as made:
        runner = await made.runner(sshd.url())
        lines: list[bytes] = []
        task = asyncio.ensure_future(
            runner.run("echo started; exec sleep 30", on_output=lambda _, data: lines.append(data))
        )
        await wait_until(lambda: b"started\n" in b"".join(lines))
        pool, target = runner._endpoint()
        if how == "its connection closed":
            for pooled in pool._state(target).live:
                pooled.conn.close()
        else:
            await pool.aclose()
        async with asyncio.timeout(STEP):
            with pytest.raises(ConnectionLost, match="lost"):
                await task
        assert pool.channels_in_use() == 0


@pytest.mark.asyncio
async def test_a_connection_the_server_drops_while_it_is_made_is_tried_again(
    sshd: Sshd, tmp_path: Path
) -> None:
    """sshd drops new connections at random past MaxStartups (closed before its
    banner): the pool connects again, and the run goes through."""
    accepted = 0

    async def front(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        if accepted <= 2:  # dropped, as sshd drops a startup
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", sshd.port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(front, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {sshd.keys.host_public}\n")
    try:
        async with opened(
            FakeEnv(tmp_path / "state", sshd.context(known_hosts=[str(known)]))
        ) as made:
            runner = await made.runner(sshd.url(port))
            async with asyncio.timeout(STEP):
                result = await runner.run("echo through")
            assert result.stdout == "through\n"
            assert accepted == 3
            assert runner.pool.connects == 1
    finally:
        server.close()
        await server.wait_closed()
