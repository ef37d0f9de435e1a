"""Faults at the boundary: each one a specific aiores error, never an asyncssh one."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import asyncssh
import pytest

import aiores
from aiores_ssh import CommandTimeout, pool_for

from .conftest import STEP, FakeEnv, opened, wait_until
from .servers import Sshd, fault_server, free_port


@pytest.mark.asyncio
async def test_asyncssh_server_runs_commands(tmp_path: Path) -> None:
    async with (
        fault_server(tmp_path / "srv") as server,
        opened(FakeEnv(tmp_path, server.context())) as made,
    ):
        runner = await made.runner(server.url())
        result = await runner.run("echo hi; exit 4")
        assert (result.exit_status, result.stdout) == (4, "hi\n")


@pytest.mark.asyncio
async def test_server_killed_mid_command(tmp_path: Path) -> None:
    async with (
        fault_server(tmp_path / "srv") as server,
        opened(FakeEnv(tmp_path, server.context())) as made,
    ):
        runner = await made.runner(server.url())
        task = asyncio.create_task(runner.run("echo started; sleep 30"))
        async with asyncio.timeout(STEP):
            await server.started.wait()
        server.kill_connections()
        async with asyncio.timeout(STEP):
            with pytest.raises(aiores.ConnectionLost) as caught:
                await task
        assert f"127.0.0.1:{server.port}" in str(caught.value)
        assert not isinstance(caught.value, asyncssh.Error)


@pytest.mark.asyncio
async def test_changed_host_key_is_refused(tmp_path: Path) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519")
    async with (
        fault_server(tmp_path / "srv", record_key=other) as server,
        opened(FakeEnv(tmp_path, server.context(trust_on_first_use=True))) as made,
    ):
        runner = await made.runner(server.url())
        with pytest.raises(aiores.HostKeyError) as caught:
            await runner.run("true")
    message = str(caught.value)
    assert f"127.0.0.1:{server.port}" in message
    assert server.host_key.get_fingerprint("sha256") in message
    assert "changed" in message
    assert isinstance(caught.value, aiores.AuthenticationFailed)


@pytest.mark.asyncio
async def test_unknown_host_key_is_refused_without_trust_on_first_use(tmp_path: Path) -> None:
    async with fault_server(tmp_path / "srv") as server:
        empty = tmp_path / "empty_known_hosts"
        empty.write_text("")
        ctx = server.context(known_hosts=[str(empty)])
        async with opened(FakeEnv(tmp_path, ctx)) as made:
            runner = await made.runner(server.url())
            with pytest.raises(aiores.HostKeyError) as caught:
                await runner.run("true")
        assert server.host_key.get_fingerprint("sha256") in str(caught.value)
        assert "not in" in str(caught.value)
        assert empty.read_text() == ""


@pytest.mark.asyncio
async def test_trust_on_first_use_records_the_key(tmp_path: Path) -> None:
    async with fault_server(tmp_path / "srv") as server:
        recorded = tmp_path / "ssh" / "known_hosts"  # directory made on demand
        ctx = server.context(known_hosts=[str(recorded)], trust_on_first_use=True)
        async with opened(FakeEnv(tmp_path, ctx)) as made:
            runner = await made.runner(server.url())
            assert (await runner.run("true")).ok
        text = recorded.read_text()
        assert text.startswith(f"[127.0.0.1]:{server.port} ssh-ed25519 ")
        assert recorded.stat().st_mode & 0o777 == 0o600
        # A new session that does not trust on first use now knows the key.
        strict = server.context(known_hosts=[str(recorded)])
        async with opened(FakeEnv(tmp_path, strict)) as made:
            assert (await (await made.runner(server.url())).run("true")).ok


@pytest.mark.asyncio
async def test_pinned_host_key(tmp_path: Path) -> None:
    async with fault_server(tmp_path / "srv") as server:
        empty = tmp_path / "empty_known_hosts"
        empty.write_text("")
        public = server.host_key.export_public_key().decode()
        for spec in (f"127.0.0.1:{server.port}", "127.0.0.1"):
            ctx = server.context(known_hosts=[str(empty)], host_keys={spec: [public]})
            async with opened(FakeEnv(tmp_path, ctx)) as made:
                assert (await (await made.runner(server.url())).run("true")).ok


@pytest.mark.asyncio
async def test_refused_login(tmp_path: Path) -> None:
    async with (
        fault_server(tmp_path / "srv", authorized=False) as server,
        opened(FakeEnv(tmp_path, server.context())) as made,
    ):
        runner = await made.runner(server.url())
        with pytest.raises(aiores.AuthenticationFailed) as caught:
            await runner.run("true")
    assert not isinstance(caught.value, aiores.HostKeyError)
    assert f"127.0.0.1:{server.port}" in str(caught.value)


@pytest.mark.asyncio
async def test_silent_host_times_out(tmp_path: Path) -> None:
    async with fault_server(tmp_path / "srv", silent=True) as server:
        ctx = server.context(connect_timeout=0.5)
        async with opened(FakeEnv(tmp_path, ctx)) as made:
            runner = await made.runner(server.url())
            async with asyncio.timeout(STEP):
                with pytest.raises(aiores.Timeout) as caught:
                    await runner.run("true")
            assert f"127.0.0.1:{server.port}" in str(caught.value)
            # A run's own timeout is honoured while connecting, too.
            slow = server.context()
            async with opened(FakeEnv(tmp_path, slow)) as other:
                runner = await other.runner(server.url())
                with pytest.raises(CommandTimeout):
                    await runner.run("true", timeout=0.5)


@pytest.mark.asyncio
async def test_connection_refused(tmp_path: Path, sshd: Sshd) -> None:
    port = free_port()  # nothing listens there
    async with opened(FakeEnv(tmp_path, sshd.context())) as made:
        runner = await made.runner(f"ssh://{sshd.user}@127.0.0.1:{port}")
        results = await asyncio.gather(
            *(runner.run("true") for _ in range(30)), return_exceptions=True
        )
    assert all(isinstance(r, aiores.NoSuccess) for r in results), results
    assert all(f"127.0.0.1:{port}" in str(r) for r in results)
    assert "refused" in str(results[0])


@pytest.mark.asyncio
async def test_missing_key_file(tmp_path: Path, sshd: Sshd) -> None:
    ctx = sshd.context(key_files=[str(tmp_path / "no-such-key")])
    async with opened(FakeEnv(tmp_path, ctx)) as made:
        runner = await made.runner(sshd.url())
        with pytest.raises(aiores.AioresError) as caught:
            await runner.run("true")
    assert not isinstance(caught.value, asyncssh.Error)


@pytest.mark.asyncio
async def test_keys_a_backend_published_are_trusted_and_authoritative(tmp_path: Path) -> None:
    """A machine aiores booted is verified by the key its backend published, nothing else."""
    other = asyncssh.generate_private_key("ssh-ed25519")
    async with fault_server(tmp_path / "srv", record_key=other) as server:
        # known_hosts records another key for this address (a reused port, say) ...
        env = FakeEnv(tmp_path, server.context())
        env.pins[("127.0.0.1", server.port)] = (server.host_key.export_public_key().decode(),)
        async with opened(env) as made:
            # ... but the backend vouched for the key the server shows: accepted.
            assert (await (await made.runner(server.url())).run("true")).ok
        wrong = FakeEnv(tmp_path, server.context(trust_on_first_use=True))
        wrong.pins[("127.0.0.1", server.port)] = (other.export_public_key().decode(),)
        async with opened(wrong) as made:
            with pytest.raises(aiores.HostKeyError, match="not the key its backend published"):
                await (await made.runner(server.url())).run("true")


@pytest.mark.asyncio
async def test_a_backend_published_key_beats_a_matching_known_hosts_entry(tmp_path: Path) -> None:
    """known_hosts still trusts the key an earlier machine at this address showed; the
    backend published another key for the machine there now: the old key is refused."""
    other = asyncssh.generate_private_key("ssh-ed25519")
    async with fault_server(tmp_path / "srv") as server:
        env = FakeEnv(tmp_path, server.context())
        env.pins[("127.0.0.1", server.port)] = (other.export_public_key().decode(),)
        async with opened(env) as made:
            runner = await made.runner(server.url())
            with pytest.raises(aiores.HostKeyError, match="not the key its backend published"):
                await runner.run("true")


@pytest.mark.asyncio
async def test_the_recorded_key_type_is_asked_for(tmp_path: Path) -> None:
    """A server with several host keys shows the one known_hosts records."""
    ecdsa = asyncssh.generate_private_key("ecdsa-sha2-nistp256")
    async with (
        fault_server(tmp_path / "srv", record_key=ecdsa, more_host_keys=[ecdsa]) as server,
        opened(FakeEnv(tmp_path, server.context())) as made,
    ):
        assert (await (await made.runner(server.url())).run("true")).ok


@pytest.mark.asyncio
async def test_a_refused_channel_is_retried(tmp_path: Path) -> None:
    """A server may refuse a channel for a moment (one that closed is not yet freed):
    the channel is tried again, and one refusal does not lower the capacity."""
    async with (
        fault_server(tmp_path / "srv", refuse_sessions=2) as server,
        opened(FakeEnv(tmp_path, server.context())) as made,
    ):
        runner = await made.runner(server.url())
        assert (await runner.run("echo hi")).stdout == "hi\n"
        assert server.sessions.requested == 3
        assert runner.pool.capacity(runner.target) == 10


@pytest.mark.asyncio
async def test_an_unreachable_host_does_not_hold_up_the_others(tmp_path: Path, sshd: Sshd) -> None:
    """Connects waiting for a silent host's own handshake slots must not take the
    session-wide ones that other hosts need."""
    async with fault_server(tmp_path / "srv", silent=True) as silent:
        ctx = sshd.context(connect_timeout=5, max_sessions=1, max_startups=2)
        env = FakeEnv(tmp_path, ctx)
        pool_for(env).max_handshakes = 3
        async with opened(env) as made:
            stuck = await made.runner(f"ssh://{sshd.user}@127.0.0.1:{silent.port}")
            good = await made.runner(sshd.url())
            waiting = [asyncio.create_task(stuck.run("true")) for _ in range(6)]
            await asyncio.sleep(0.1)  # all six connects under way
            async with asyncio.timeout(2):  # well before the silent host times out
                assert (await good.run("true")).ok
            for task in waiting:
                task.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)


@pytest.mark.asyncio
async def test_a_key_that_cannot_be_recorded_closes_its_connection(tmp_path: Path) -> None:
    async with fault_server(tmp_path / "srv") as server:
        (tmp_path / "a-file").write_text("")
        unwritable = tmp_path / "a-file" / "known_hosts"  # its parent is no directory
        ctx = server.context(known_hosts=[str(unwritable)], trust_on_first_use=True)
        async with opened(FakeEnv(tmp_path, ctx)) as made:
            runner = await made.runner(server.url())
            with pytest.raises(aiores.NoSuccess, match="could not record the host key"):
                await runner.run("true")
            assert server.connections
            await wait_until(lambda: all(c.is_closed() for c in server.connections), 5)


@pytest.mark.asyncio
async def test_login_keys_a_backend_named_are_offered(tmp_path: Path) -> None:
    """A machine aiores booted accepts the key its backend authorized: no context keys needed."""
    async with fault_server(tmp_path / "srv") as server:
        ctx = server.context()
        assert ctx.key_files
        # A context without the authorized key cannot log in ...
        stranger = asyncssh.generate_private_key("ssh-ed25519")
        stranger_file = tmp_path / "stranger"
        stranger.write_private_key(stranger_file)
        without = FakeEnv(tmp_path, dataclasses.replace(ctx, key_files=[str(stranger_file)]))
        async with opened(without) as made:
            with pytest.raises(aiores.AuthenticationFailed):
                await (await made.runner(server.url())).run("true")
        # ... but the key the backend named for this address is offered first.
        named = FakeEnv(tmp_path, dataclasses.replace(ctx, key_files=[str(stranger_file)]))
        named.logins[("127.0.0.1", server.port)] = tuple(ctx.key_files)
        async with opened(named) as made:
            assert (await (await made.runner(server.url())).run("true")).ok
        missing = FakeEnv(tmp_path, ctx)
        missing.logins[("127.0.0.1", server.port)] = (str(tmp_path / "no-such-key"),)
        async with opened(missing) as made:
            with pytest.raises(aiores.AuthenticationFailed, match="cannot read the login key"):
                await (await made.runner(server.url())).run("true")
