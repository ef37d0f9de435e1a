"""The cloud in-process (``aiores_sim.Cloud``): one session end to end, and the protocol."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
import pytest_asyncio

import aiores
from aiores import ComputeDescription, ResourceState, SSHContext
from aiores_sim import Cloud, CloudClient, CloudRunning, managed_key
from aiores_sim._protocol import socket_path
from aiores_sim._vm import Prepared, prepare

from .conftest import STEP, python_child, until_none, until_sleeping


@pytest_asyncio.fixture
async def cloud(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AsyncIterator[Cloud]:
    directory = tmp_path / "sim"
    monkeypatch.setenv("AIORES_SIM_DIR", str(directory))
    async with Cloud(directory) as running:
        yield running
    assert running.stopped.is_set()
    assert not await asyncio.to_thread(socket_path(directory).exists)


@pytest.mark.asyncio
async def test_one_session_acquires_probes_runs_and_destroys(cloud: Cloud, state_dir: Path) -> None:
    key = await asyncio.to_thread(managed_key, state_dir)
    async with aiores.Session(contexts=[SSHContext(key_files=[str(key)])]) as session:
        mgr = session.manager("sim://?boot_delay=0.05")
        vms = await mgr.acquire_many(ComputeDescription(tags={"inproc"}), 3)
        # ACTIVE only once SSH answered with the host key the cloud published.
        async with asyncio.timeout(STEP):
            await asyncio.gather(*(vm.wait(ResourceState.ACTIVE) for vm in vms))
        results = await asyncio.gather(*(vm.run("cat .sim/vm.json") for vm in vms))
        assert all(vm.native_id in r.stdout for vm, r in zip(vms, results, strict=True))
        await mgr.destroy(vms)
    assert all(vm.state is ResourceState.CANCELED for vm in vms)
    assert all(not cloud.vms[vm.native_id].connections for vm in vms)


@pytest.mark.asyncio
async def test_a_second_cloud_for_one_directory_is_refused(cloud: Cloud) -> None:
    with pytest.raises(CloudRunning):
        await Cloud(cloud.directory).start()


@pytest.mark.asyncio
async def test_bad_requests_are_answered_not_fatal(cloud: Cloud) -> None:
    client = CloudClient(cloud.directory)
    try:
        with pytest.raises(aiores.BadParameter, match="no operation"):
            await client.call("launch_missiles")
        with pytest.raises(aiores.BadParameter, match="count"):
            await client.call("acquire", {"count": 0})
        with pytest.raises(aiores.BadParameter, match="public keys"):
            await client.call("acquire", {"count": 1, "user": "me"})
        with pytest.raises(aiores.DoesNotExist):
            await client.call("rekey", {"id": "vm-none"})
        assert (await client.call("hello"))["vms"] == 0
    finally:
        await client.close()
    reader, writer = await asyncio.open_unix_connection(str(socket_path(cloud.directory)))
    writer.write(b"not json\n")
    assert b'"ok":false' in await reader.readline()
    writer.close()
    await writer.wait_closed()


@pytest.mark.asyncio
async def test_client_key_from_the_ssh_context(cloud: Cloud, tmp_path: Path) -> None:
    key_file = tmp_path / "my_key"  # no .pub beside it: derived from the private key
    key = asyncssh.generate_private_key("ssh-ed25519")
    await asyncio.to_thread(key_file.write_bytes, key.export_private_key())
    await asyncio.to_thread(key_file.chmod, 0o600)
    ctx = SSHContext(key_files=[str(key_file)], user="alice")
    async with aiores.Session(contexts=[ctx]) as session:
        vm = await session.manager("sim://?boot_delay=0.05").acquire(ComputeDescription())
        assert vm.access is not None
        assert vm.access.startswith("ssh://alice@127.0.0.1:")
        assert vm._info.login_keys == ()  # the context's keys log in, as ssh:// knows
        await vm.wait(ResourceState.ACTIVE, timeout=STEP)
        assert (await vm.run('echo "$USER"')).stdout == "alice\n"
        await vm.destroy()
    # The managed key was not needed, so not made.
    assert not await asyncio.to_thread((tmp_path / "aiores-state" / "keys").exists)


@pytest.mark.asyncio
async def test_idle_cloud_stops_by_itself(tmp_path: Path) -> None:
    cloud = Cloud(tmp_path / "sim", idle_exit=0.2)
    await cloud.start()
    try:
        async with asyncio.timeout(STEP):
            await cloud.stopped.wait()
    finally:
        await cloud.stop()


@pytest.mark.asyncio
async def test_acquire_cancelled_while_the_cloud_makes_vms_leaves_none(
    cloud: Cloud, state_dir: Path, slow_prepare: SlowPrepare
) -> None:
    started, go_on = slow_prepare.started, slow_prepare.go_on
    async with aiores.Session() as session:
        mgr = session.manager("sim://?boot_delay=30")
        task = asyncio.ensure_future(mgr.acquire_many(ComputeDescription(tags={"t-race"}), 5))
        await asyncio.to_thread(started.wait, STEP)  # the cloud is making the VMs now
        task.cancel()
        # The cleanup asks the cloud for the call's VMs; it answers once they exist.
        asyncio.get_running_loop().call_later(0.1, go_on.set)
        with pytest.raises(asyncio.CancelledError):
            await task
        async with asyncio.timeout(STEP):
            while cloud._acquiring:  # noqa: ASYNC110 (the cloud's own bookkeeping)
                await asyncio.sleep(0.01)
        assert await mgr.list(tags="t-race") == []
    assert len(cloud.vms) == 5
    assert all(vm.state is ResourceState.CANCELED for vm in cloud.vms.values())


class SlowPrepare:
    """The cloud's VM making, held in its thread until ``go_on`` (what it made: ``made``)."""

    def __init__(self) -> None:
        self.started, self.go_on = threading.Event(), threading.Event()
        self.made: list[Prepared] = []

    def __call__(self, *args: Any) -> list[Prepared]:
        self.started.set()
        self.go_on.wait(STEP)
        result = prepare(*args)
        self.made.extend(result)
        return result


@pytest.fixture
def slow_prepare(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlowPrepare]:
    from aiores_sim import _cloud

    slow = SlowPrepare()
    monkeypatch.setattr(_cloud, "prepare", slow)
    yield slow
    slow.go_on.set()  # never leave the thread waiting


def _acquire_args(count: int, **more: Any) -> dict[str, Any]:
    """An acquire request as the adaptor sends it (a throwaway client key)."""
    key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    faults = {"boot_delay": "0.01"} | more.pop("faults", {})
    return {"count": count, "user": "tester", "authorized_keys": key, "faults": faults} | more


@pytest.mark.asyncio
async def test_stop_ends_every_vm_when_more_ended_than_are_kept(tmp_path: Path) -> None:
    cloud = Cloud(tmp_path / "sim", keep_ended=1)
    await cloud.start()
    try:
        client = CloudClient(cloud.directory)
        try:
            made = await client.call("acquire", _acquire_args(4))
        finally:
            await client.close()
        vms = [cloud.vms[item["id"]] for item in made]
        async with asyncio.timeout(STEP):
            while any(vm.state is not ResourceState.ACTIVE for vm in vms):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    finally:
        async with asyncio.timeout(STEP):
            await cloud.stop()
    assert all(vm.state is ResourceState.CANCELED for vm in vms)
    assert all(vm.gone.is_set() for vm in vms)
    assert all(vm.acceptor is None for vm in vms)
    assert not any([await asyncio.to_thread(vm.disk.exists) for vm in vms])
    assert len(cloud.vms) == 1  # the newest ended record is kept, once torn down


@pytest.mark.asyncio
async def test_stopping_during_an_acquire_discards_what_it_made(
    tmp_path: Path, slow_prepare: SlowPrepare
) -> None:
    started, go_on, made = slow_prepare.started, slow_prepare.go_on, slow_prepare.made
    cloud = Cloud(tmp_path / "sim")
    await cloud.start()
    client = CloudClient(cloud.directory)
    try:
        acquire = asyncio.ensure_future(client.call("acquire", _acquire_args(3)))
        await asyncio.to_thread(started.wait, STEP)  # the cloud is making the VMs now
        stopping = asyncio.ensure_future(cloud.stop())
        # The stop closes the connection as it cancels the requests being answered.
        with pytest.raises(aiores.AioresError):
            async with asyncio.timeout(STEP):
                await acquire
        assert not stopping.done()  # it waits for the cancelled acquire's cleanup
        go_on.set()
        async with asyncio.timeout(STEP):
            await stopping
        assert len(made) == 3  # the cleanup ended before the stop: nothing to poll for
    finally:
        go_on.set()
        await client.close()
        await cloud.stop()
    assert [item.sock.fileno() for item in made] == [-1, -1, -1]  # ports let go of
    assert not any([await asyncio.to_thread(item.disk.exists) for item in made])


@pytest.mark.asyncio
async def test_a_vm_has_stopped_listening_when_its_end_is_announced(cloud: Cloud) -> None:
    seen: list[tuple[str, bool]] = []
    announce = cloud._changed

    def changed(vm: Any) -> None:
        seen.append((vm.state.name, vm.acceptor is None and vm.sock is None))
        announce(vm)

    cloud._changed = changed  # type: ignore[method-assign]
    client = CloudClient(cloud.directory)
    try:
        made = await client.call("acquire", _acquire_args(2, duration=0.3))
        await client.call("destroy", {"ids": [made[0]["id"]]})
        async with asyncio.timeout(STEP):
            await cloud.vms[made[1]["id"]].gone.wait()
    finally:
        await client.close()
    assert [closed for state, closed in seen if state in ("CANCELED", "EXPIRED")] == [True, True]


async def _active(cloud: Cloud, vm_id: str) -> Any:
    vm = cloud.vms[vm_id]
    async with asyncio.timeout(STEP):
        while vm.state is ResourceState.PENDING:  # noqa: ASYNC110 (the cloud's own record)
            await asyncio.sleep(0.01)
    return vm


@pytest.mark.asyncio
async def test_a_vm_whose_server_cannot_start_fails(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiores_sim import _vm

    async def listen(self: Any, host_key: Any = None) -> None:
        raise OSError("no port for you")

    monkeypatch.setattr(_vm.VM, "listen", listen)
    client = CloudClient(cloud.directory)
    try:
        [made] = await client.call("acquire", _acquire_args(1))
        vm = cloud.vms[made["id"]]
        async with asyncio.timeout(2):
            await vm.gone.wait()
    finally:
        await client.close()
    assert vm.state is ResourceState.FAILED
    assert "no port for you" in vm.detail


@pytest.mark.asyncio
async def test_a_command_started_while_its_vm_ends_is_killed(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiores_sim import _vm

    key = asyncssh.generate_private_key("ssh-ed25519")
    client = CloudClient(cloud.directory)
    try:
        args = _acquire_args(1, authorized_keys=key.export_public_key().decode())
        [made] = await client.call("acquire", args)
    finally:
        await client.close()
    vm = await _active(cloud, made["id"])
    spawn = _vm.VM._spawn

    async def spawn_during_destroy(
        self: Any, argv: list[str], env: dict[str, str], login: _vm.Login
    ) -> Any:
        proc = await spawn(self, argv, env, login)
        await until_sleeping("5151", 1)  # out of the VM's disk, without its marker
        cloud._end(self, ResourceState.CANCELED, "terminated")  # a destroy meanwhile
        await self.gone.wait()  # ... whose teardown did not see this command yet
        return proc

    monkeypatch.setattr(_vm.VM, "_spawn", spawn_during_destroy)
    known = asyncssh.import_known_hosts(f"[127.0.0.1]:{vm.port} {made['host_key']}\n")
    async with asyncssh.connect(
        "127.0.0.1", vm.port, username="tester", client_keys=[key], known_hosts=known, config=None
    ) as conn:
        # The VM goes away under it: the channel closes, with no exit status.
        with contextlib.suppress(asyncssh.Error):
            result = await conn.run("cd / && exec env -i sleep 300.5151")
            assert result.exit_status is None
    await until_none("5151")


# Run in a process of its own: a subreaper cloud adopts (and at its stop kills) every
# descendant of its process, which in pytest's would be the suite's servers.
_FULL_WAKEUP = """
import asyncio, os, signal, socket, sys
from pathlib import Path
from aiores_sim import Cloud

async def main(directory):
    reported = []
    sys.unraisablehook = reported.append
    async with Cloud(directory, subreaper=True) as cloud:
        assert cloud.subreaper
        # The loop's own end of its wakeup pair (asking signal for it would reset it).
        fd = asyncio.get_running_loop()._csock.fileno()
        wakeup = socket.socket(fileno=os.dup(fd))
        wakeup.setblocking(False)
        try:
            while True:  # zeros: the loop reads them as wake-ups, not signals
                wakeup.send(b"\\0" * 4096)
        except BlockingIOError:
            pass
        signal.raise_signal(signal.SIGCHLD)
        wakeup.close()
        for _ in range(3):
            await asyncio.sleep(0)
    print("reported", len(reported))

asyncio.run(main(Path(sys.argv[1])))
"""


@pytest.mark.asyncio
async def test_a_sigchld_into_a_full_wakeup_buffer_is_not_reported(tmp_path: Path) -> None:
    """asyncio reports a full wakeup buffer from the C signal handler by a pending call,
    which deadlocked a busy cloud (a lock the interrupted thread held): the cloud
    asks for no report."""
    out = await python_child(_FULL_WAKEUP, str(tmp_path / "sim"))
    assert out.split() == ["reported", "0"]


@pytest.mark.asyncio
async def test_a_vm_machine_that_outlives_its_kill_does_not_stop_the_teardowns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The teardown waits for a killed VM machine only so long: one that is still
    there then is logged, and that VM and every later one are still torn down."""
    from aiores_sim import _cloud, _isolation

    # The suite runs as root (./scripts/test installs its servers so): the fork
    # server's machines are available there, and this test needs them.
    assert os.geteuid() == 0, "needs root"
    assert _isolation.choose("auto").on, "needs namespaces"
    monkeypatch.setattr(_cloud, "CLEANUP_TIMEOUT", 0.3)
    cloud = Cloud(tmp_path / "sim", isolation="namespaces")
    await cloud.start()
    spared: list[_isolation.Holder] = []
    try:
        client = CloudClient(cloud.directory)
        try:
            first, second = await client.call("acquire", _acquire_args(2))
            vms = [cloud.vms[first["id"]], cloud.vms[second["id"]]]
            async with asyncio.timeout(STEP):
                while any(vm.state is not ResourceState.ACTIVE for vm in vms):  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            stubborn = vms[0].holder
            assert stubborn is not None
            spared.append(stubborn)
            stubborn.killed = True  # its kill does nothing now: as a machine stuck in D
            async with asyncio.timeout(STEP):
                await client.call("destroy", {"ids": [first["id"]]})
                await client.call("destroy", {"ids": [second["id"]]})
        finally:
            await client.close()
        assert all(vm.gone.is_set() for vm in vms)
        assert not await asyncio.to_thread(vms[1].disk.exists)
    finally:
        for holder in spared:
            holder.killed = False
            holder.kill()
        async with asyncio.timeout(STEP):
            await cloud.stop()
