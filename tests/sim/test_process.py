"""The cloud process: started on demand, outliving its client, found again, stopped clean."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import stat
import textwrap
import threading
from pathlib import Path
from typing import IO

import asyncssh
import psutil
import pytest

import aiores
from aiores import ComputeDescription, JobDescription, JobState, ResourceState
from aiores_sim import MANAGED_KEY, Cloud, CloudClient, cloud_pid, managed_key, stop_cloud
from aiores_sim._keys import authorized_keys
from aiores_sim._protocol import socket_path
from aiores_sim.testing import SimCloudProcess

from .conftest import (
    STEP,
    booted,
    hide_jobs,
    listening,
    pinned_context,
    port_of,
    python_child,
    sleeps,
    until_sleeping,
)

CHILD = textwrap.dedent(
    """
    import asyncio, aiores

    async def main():
        async with aiores.Session() as session:
            mgr = session.manager("sim://?boot_delay=0.05")
            vm = await mgr.acquire(aiores.ComputeDescription(ready=None, tags={"child"}))
            await vm.wait(aiores.ResourceState.ACTIVE, timeout=20)
            print(vm.id, flush=True)

    asyncio.run(main())
    """
)


@pytest.mark.asyncio
async def test_vms_outlive_the_process_that_asked_and_are_found_again(
    own_cloud: Path, state_dir: Path
) -> None:
    assert await cloud_pid(own_cloud) is None
    vm_id = (await python_child(CHILD)).strip()
    pid = await cloud_pid(own_cloud)
    assert pid is not None  # started on demand by the child, running on after it
    async with aiores.Session() as session:
        mgr = session.manager("sim://?boot_delay=0.05")
        vm = await mgr.get(vm_id)
        assert vm.state_detail == "running"
        assert vm.tags == {"child"}
        assert [found.id for found in await mgr.list(tags="child")] == [vm.id]
    # ... and usable over SSH from this process, its host key pinned.
    async with aiores.Session(contexts=[pinned_context(state_dir, [vm])]) as session:
        again = await session.manager("sim://?boot_delay=0.05").get(vm_id)
        assert isinstance(again, aiores.Compute)
        await again.wait(ResourceState.ACTIVE, timeout=STEP)
        result = await again.run("cat .sim/vm.json")
        assert again.native_id in result.stdout
        await again.destroy()
    assert await cloud_pid(own_cloud) == pid  # one cloud throughout


@pytest.mark.asyncio
async def test_concurrent_starts_make_one_cloud(own_cloud: Path) -> None:
    clients = [CloudClient(own_cloud) for _ in range(4)]
    try:
        hellos = await asyncio.gather(*(c.call("hello") for c in clients))
    finally:
        for client in clients:
            await client.close()
    assert len({hello["pid"] for hello in hellos}) == 1
    assert await cloud_pid(own_cloud) == hellos[0]["pid"]


@pytest.mark.asyncio
async def test_stop_leaves_no_process_port_or_file(own_cloud: Path, state_dir: Path) -> None:
    async with booted(3, "sim://?boot_delay=0.05", state_dir=state_dir) as (_, vms):
        ports = [port_of(vm) for vm in vms]
        pid = await cloud_pid(own_cloud)
        assert pid is not None
        cloud = SimCloudProcess(own_cloud, pid)
        # Something running on each VM: a detached job, a command, a stopped job.
        sleep = JobDescription(executable="sleep", arguments=["301.7373"])
        job = await vms[0].job_service().submit(sleep)
        stopped = await vms[2].job_service().submit(sleep.replace(arguments=["302.7373"]))
        await stopped.suspend()
        running = asyncio.ensure_future(vms[1].run("sleep 303.7373"))
        await until_sleeping("7373", 3)
        assert len(await asyncio.to_thread(cloud.leftovers)) > 3
        assert all(listening(port, pid) for port in ports)
        assert await stop_cloud(own_cloud) is True
        with pytest.raises((aiores.ConnectionLost, aiores.NoSuccess)):
            await running
        assert await asyncio.to_thread(cloud.leftovers) == []
        assert await asyncio.to_thread(sleeps, "7373") == []
        assert not any(listening(port, pid) for port in ports)
        assert await asyncio.to_thread(lambda: list((own_cloud / "vms").iterdir())) == []
        assert job.state is JobState.RUNNING  # what this session last knew
        # The session's VMs are gone with the cloud: destroy (in booted) is a no-op.
    assert await cloud_pid(own_cloud) is None
    assert await stop_cloud(own_cloud) is False


@pytest.mark.asyncio
async def test_describe_without_a_cloud_finds_nothing(own_cloud: Path) -> None:
    async with aiores.Session() as session:
        mgr = session.manager("sim://?boot_delay=30")
        vm = await mgr.acquire(ComputeDescription(ready=None))
        assert await stop_cloud(own_cloud) is True
        # The cloud said so as it stopped.
        assert await vm.wait(timeout=STEP) is ResourceState.CANCELED
        assert vm.state_detail == "the cloud stopped"
        assert await mgr.list() == []
        await vm.destroy()  # nothing to do: not an error
    async with aiores.Session() as session:
        with pytest.raises(aiores.DoesNotExist):
            await session.manager("sim://").get(vm.native_id)
    assert await cloud_pid(own_cloud) is None  # asking did not start a new cloud


@pytest.mark.asyncio
async def test_stop_after_a_crash_wipes_what_the_cloud_left(
    own_cloud: Path, state_dir: Path
) -> None:
    mark = "4242"
    async with booted(1, "sim://?boot_delay=0.05", state_dir=state_dir) as (_, [vm]):
        running = asyncio.ensure_future(vm.run(f"sleep 300.{mark}"))
        assert (await vm.run(hide_jobs(mark))).exit_status == 0
        await until_sleeping(mark, 4)
        pid = await cloud_pid(own_cloud)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(aiores.AioresError):
            await running
        async with asyncio.timeout(STEP):
            while await cloud_pid(own_cloud) is not None:  # noqa: ASYNC110 (another process)
                await asyncio.sleep(0.02)
        assert await asyncio.to_thread(sleeps, mark)  # the VMs' processes outlived it
        assert await stop_cloud(own_cloud) is True
        assert await asyncio.to_thread(sleeps, mark) == []
        assert await asyncio.to_thread(lambda: sorted(p.name for p in own_cloud.iterdir())) == [
            "cloud.lock",
            "cloud.log",
            "vms",
        ]
        assert await asyncio.to_thread(lambda: list((own_cloud / "vms").iterdir())) == []
        assert await stop_cloud(own_cloud) is False  # nothing left now


def _hold_lock(directory: Path) -> IO[bytes]:
    """Hold the cloud lock of ``directory`` as a cloud that is stopping does."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = open(directory / "cloud.lock", "ab")  # noqa: SIM115 (the caller closes it)
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return lock


@pytest.mark.asyncio
async def test_a_client_arriving_while_the_cloud_stops_starts_it_again(
    own_cloud: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiores_sim import _client

    monkeypatch.setattr(_client, "CONNECT_PATIENCE", 5.0)
    lock = await asyncio.to_thread(_hold_lock, own_cloud)  # stopping: no socket, locked
    asyncio.get_running_loop().call_later(0.5, lock.close)  # ... and then gone
    client = CloudClient(own_cloud)
    try:
        hello = await client.call("hello")
    finally:
        await client.close()
    assert hello["pid"] == await cloud_pid(own_cloud)


@pytest.mark.asyncio
async def test_a_cloud_that_never_comes_is_an_aiores_timeout(
    own_cloud: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiores_sim import _client

    monkeypatch.setattr(_client, "CONNECT_PATIENCE", 0.5)
    lock = await asyncio.to_thread(_hold_lock, own_cloud)
    client = CloudClient(own_cloud)
    try:
        with pytest.raises(aiores.Timeout, match="aiores sim stop"):
            await client.call("hello")
    finally:
        await client.close()
        lock.close()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.asyncio
async def test_keys_socket_and_directories_are_private(own_cloud: Path, state_dir: Path) -> None:
    await asyncio.to_thread(own_cloud.chmod, 0o755)  # made by someone else's umask
    async with aiores.Session() as session:
        vm = await session.manager("sim://?boot_delay=30").acquire(ComputeDescription(ready=None))
        await vm.destroy()
    key = state_dir / MANAGED_KEY
    modes = await asyncio.to_thread(
        lambda: {
            "key": _mode(key),
            "key directory": _mode(key.parent),
            "sim directory": _mode(own_cloud),
            "disks": _mode(own_cloud / "vms"),
            "log": _mode(own_cloud / "cloud.log"),
            "socket": _mode(socket_path(own_cloud)),
        }
    )
    assert modes == {
        "key": 0o600,
        "key directory": 0o700,
        "sim directory": 0o700,
        "disks": 0o700,
        "log": 0o600,
        "socket": 0o600,
    }
    await asyncio.to_thread(key.chmod, 0o644)
    await asyncio.to_thread(key.parent.chmod, 0o755)
    assert await asyncio.to_thread(managed_key, state_dir) == key
    assert await asyncio.to_thread(lambda: (_mode(key), _mode(key.parent))) == (0o600, 0o700)


@pytest.mark.asyncio
async def test_a_sim_directory_of_another_user_is_refused(own_cloud: Path) -> None:
    await asyncio.to_thread(os.chown, own_cloud, 65534, 65534)
    cloud = Cloud(own_cloud)
    try:
        with pytest.raises(aiores.PermissionDenied, match="not this user's"):
            await cloud.start()
    finally:
        await cloud.stop()  # had it started


@pytest.mark.asyncio
async def test_concurrent_makers_of_the_managed_key_end_with_one_key(tmp_path: Path) -> None:
    for round in range(5):
        state_dir = tmp_path / str(round)
        barrier = threading.Barrier(3)

        def make(state_dir: Path = state_dir, barrier: threading.Barrier = barrier) -> str:
            barrier.wait(STEP)  # all three make the key at once
            text, files = authorized_keys(state_dir, None)
            assert files == [str(state_dir / MANAGED_KEY)]
            return text

        texts = await asyncio.gather(*(asyncio.to_thread(make) for _ in range(3)))
        key = state_dir / MANAGED_KEY
        private = await asyncio.to_thread(asyncssh.read_private_key, key)
        public = private.export_public_key().decode().strip() + "\n"
        assert texts == [public] * 3  # each maker authorizes the one key that stayed
        assert await asyncio.to_thread((state_dir / "keys" / "id_ed25519.pub").read_text) == public
        assert await asyncio.to_thread(sorted, (p.name for p in key.parent.iterdir())) == [
            "id_ed25519",
            "id_ed25519.pub",
        ]  # no temp file left
        pub = key.with_name(key.name + ".pub")
        modes = [await asyncio.to_thread(_mode, path) for path in (key, pub, key.parent)]
        assert modes == [0o600, 0o600, 0o700]


def _launchers(directory: Path) -> list[psutil.Process]:
    """Children of this process launching the cloud of ``directory`` (zombies left out)."""
    found = []
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            cmdline = child.cmdline()
            if (
                "--daemon" in cmdline
                and str(directory) in cmdline
                and child.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(child)
    return found


@pytest.mark.asyncio
async def test_a_client_waits_on_close_for_the_launcher_of_a_cancelled_start(
    own_cloud: Path,
) -> None:
    client = CloudClient(own_cloud)
    connecting = asyncio.ensure_future(client.connect())
    try:
        async with asyncio.timeout(STEP):
            # A process we did not start: nothing announces it.
            while not await asyncio.to_thread(_launchers, own_cloud):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        connecting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await connecting
    finally:
        async with asyncio.timeout(STEP):
            await client.close()
    assert await asyncio.to_thread(_launchers, own_cloud) == []  # close waited for it
