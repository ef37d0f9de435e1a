"""sim:// VMs through the ssh:// adaptor: commands, files, jobs, signals, pinned host keys."""

from __future__ import annotations

import asyncio
import os
import shlex
import time
from pathlib import Path

import asyncssh
import psutil
import pytest

import aiores
from aiores import ComputeDescription, JobDescription, JobState, ResourceState
from aiores.adaptor import URL
from aiores_sim import MANAGED_KEY

from .conftest import STEP, booted, pinned_context, port_of


def _vm_processes(vm_id: str) -> list[int]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("AIORES_SIM_VM") == vm_id and proc.status() != "zombie":
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _connections_to(port: int) -> set[int]:
    """The local ports of this process's TCP connections to 127.0.0.1:``port``."""
    return {
        conn.laddr.port
        for conn in psutil.Process().net_connections(kind="tcp")
        if conn.raddr and conn.raddr.port == port and conn.status == psutil.CONN_ESTABLISHED
    }


@pytest.mark.asyncio
async def test_run_in_the_vm_home_with_env_stdin_and_exit_codes(state_dir: Path) -> None:
    async with booted(2, state_dir=state_dir) as (_, vms):
        vm = vms[0]
        result = await vm.run('echo "$HOME"; pwd; echo "$AIORES_SIM_VM"; echo oops >&2; exit 3')
        assert result.exit_status == 3
        home, cwd, marker = result.stdout.split()
        assert home == cwd == vm.extra["disk"]
        assert marker == vm.native_id
        assert result.stderr == "oops\n"
        result = await vm.run(["printf", "%s|", "a b", "$HOME"], env={"GREETING": "hi there"})
        assert result.stdout == "a b|$HOME|"
        assert (await vm.run('echo "$GREETING"', env={"GREETING": "hi there"})).stdout == (
            "hi there\n"
        )
        assert (await vm.run("tr a-z A-Z", stdin="shout\n")).stdout == "SHOUT\n"
        # Two VMs, two disks.
        other = await vms[1].run("pwd")
        assert other.stdout.strip() == vms[1].extra["disk"] != home


@pytest.mark.asyncio
async def test_put_and_get_files_rooted_in_the_disk(state_dir: Path, tmp_path: Path) -> None:
    local = tmp_path / "in.txt"
    local.write_text("payload\n")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "f").write_text("deep\n")
    async with booted(1, state_dir=state_dir) as (_, [vm]):
        await vm.put(local, "in.txt")
        await vm.put(tree, "/tree")  # absolute on the VM: the disk is its SFTP root
        result = await vm.run("cat in.txt tree/sub/f")
        assert result.stdout == "payload\ndeep\n"
        await vm.run("echo made here > out.txt")
        await vm.get("out.txt", tmp_path / "out.txt")
        assert (tmp_path / "out.txt").read_text() == "made here\n"
        with pytest.raises(aiores.DoesNotExist):
            await vm.get("missing.txt", tmp_path / "missing.txt")
        with pytest.raises(aiores.DoesNotExist):
            await vm.get("/etc/hostname", tmp_path / "hostname")  # not outside the disk


@pytest.mark.asyncio
async def test_jobs_through_the_vm_job_service(state_dir: Path) -> None:
    async with booted(1, state_dir=state_dir) as (_, [vm]):
        js = vm.job_service()
        job = await js.submit(JobDescription.shell("echo out; echo err >&2; exit 0"))
        assert await job.wait(timeout=STEP) is JobState.DONE
        assert job.stdout == "out\n"
        assert job.stderr == "err\n"
        failing = await js.submit(JobDescription.shell("exit 7"))
        assert await failing.wait(timeout=STEP) is JobState.FAILED
        assert failing.exit_code == 7
        sleeper = await js.submit(JobDescription(executable="sleep", arguments=["60"]))
        await sleeper.suspend()
        assert sleeper.state is JobState.SUSPENDED
        await sleeper.resume()
        await sleeper.cancel()
        assert await sleeper.wait(timeout=STEP) is JobState.CANCELED
        # Jobs live in the VM's disk, detached from the channel that started them.
        listing = await vm.run("ls .aiores/jobs | wc -l")
        assert listing.stdout.strip() == "3"


@pytest.mark.asyncio
async def test_fan_out_over_several_vms(state_dir: Path) -> None:
    async with booted(6, state_dir=state_dir) as (_, vms):
        results = await asyncio.gather(*(vm.run("cat .sim/vm.json") for vm in vms))
        assert [r.exit_status for r in results] == [0] * 6
        assert all(vm.native_id in r.stdout for vm, r in zip(vms, results, strict=True))


@pytest.mark.asyncio
async def test_cancelled_run_stops_the_vm_process(state_dir: Path) -> None:
    async with booted(1, state_dir=state_dir) as (_, [vm]):
        task = asyncio.ensure_future(vm.run("echo started; exec sleep 60"))
        async with asyncio.timeout(STEP):
            while not _vm_processes(vm.native_id):  # noqa: ASYNC110 (a process on the VM side)
                await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with asyncio.timeout(STEP):
            while _vm_processes(vm.native_id):  # noqa: ASYNC110
                await asyncio.sleep(0.02)


@pytest.mark.asyncio
async def test_ssh_signals_reach_the_process_group(state_dir: Path) -> None:
    async with booted(1, state_dir=state_dir) as (_, [vm]):
        port = port_of(vm)
        known = asyncssh.import_known_hosts(f"[127.0.0.1]:{port} {vm.host_keys[0]}\n")
        async with asyncssh.connect(
            "127.0.0.1",
            port,
            username=URL.parse(vm.access or "").user,  # a user the VM knows: its owner
            client_keys=[str(state_dir / MANAGED_KEY)],
            known_hosts=known,
            config=None,
        ) as conn:
            proc = await conn.create_process("sleep 60 & sleep 60; wait", encoding=None)
            async with asyncio.timeout(STEP):
                while len(_vm_processes(vm.native_id)) < 3:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            proc.send_signal("STOP")
            proc.send_signal("CONT")
            proc.send_signal("TERM")
            await asyncio.wait_for(proc.wait_closed(), STEP)
            assert proc.exit_signal is not None
            assert proc.exit_signal[0] == "TERM"
        async with asyncio.timeout(STEP):
            while _vm_processes(vm.native_id):  # noqa: ASYNC110
                await asyncio.sleep(0.02)


@pytest.mark.asyncio
async def test_a_vm_showing_another_host_key_fails(state_dir: Path) -> None:
    url = "sim://?boot_delay=0.05&wrong_host_key=1"
    # Not journalled: the second session knows nothing of how it was acquired, so
    # its get holds the VM PENDING until SSH answers (a journalled ready=None would not).
    async with aiores.Session(journal=None) as first:
        vm = await first.manager(url).acquire(ComputeDescription(ready=None))
        await vm.wait(ResourceState.ACTIVE, timeout=STEP)
    async with aiores.Session(contexts=[pinned_context(state_dir, [vm])]) as session:
        again = await session.manager(url).get(vm.id)
        assert isinstance(again, aiores.Compute)
        # The waiter hears of the refusal; the machine never counts as usable.
        with pytest.raises(aiores.HostKeyError, match="not the key its backend published"):
            await again.wait(ResourceState.ACTIVE, timeout=STEP)
        assert again.state is not ResourceState.ACTIVE
        with pytest.raises(aiores.HostKeyError):
            await again.run("true")
        await again.destroy()


@pytest.mark.asyncio
async def test_a_host_key_that_changes_is_refused(state_dir: Path) -> None:
    async with booted(1, state_dir=state_dir) as (session, [vm]):
        assert (await vm.run("true")).exit_status == 0
        adaptor = await session.resource_adaptor("sim://?boot_delay=0.05")
        from aiores_sim import SimResourceAdaptor

        assert isinstance(adaptor, SimResourceAdaptor)
        new_key = await adaptor.rekey(vm.native_id)
        assert new_key != vm.host_keys[0]
        refusal: aiores.HostKeyError | None = None
        for _ in range(3):  # the pooled connection dropped with the rekey: then a new one
            try:
                await vm.run("true")
            except aiores.HostKeyError as exc:
                refusal = exc
                break
            except aiores.ConnectionLost:
                continue
        assert refusal is not None
        assert f"127.0.0.1:{port_of(vm)}" in str(refusal)


@pytest.mark.asyncio
async def test_slow_ssh(state_dir: Path) -> None:
    url = "sim://?boot_delay=0.05&ssh_delay=0.4"
    # Not journalled: the second session knows nothing of how it was acquired, so
    # its get holds the VM PENDING until SSH answers (a journalled ready=None would not).
    async with aiores.Session(journal=None) as first:
        vm = await first.manager(url).acquire(ComputeDescription(ready=None))
        await vm.wait(ResourceState.ACTIVE, timeout=STEP)
    async with aiores.Session(contexts=[pinned_context(state_dir, [vm])]) as session:
        again = await session.manager(url).get(vm.id)
        assert isinstance(again, aiores.Compute)
        start = time.monotonic()
        await again.wait(ResourceState.ACTIVE, timeout=STEP)  # the probe logs in, slowly
        assert time.monotonic() - start >= 0.4
        port = port_of(again)
        probes = await asyncio.to_thread(_connections_to, port)
        assert len(probes) == 1
        assert (await again.run("true")).exit_status == 0
        assert await asyncio.to_thread(_connections_to, port) == probes  # no new (slow) login
        await again.destroy()


@pytest.mark.asyncio
async def test_files_cannot_leave_the_disk_through_a_symlink(
    state_dir: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host file\n")
    local = tmp_path / "in.txt"
    local.write_text("planted\n")
    async with booted(1, state_dir=state_dir) as (_, [vm]):
        links = f"ln -s / hostroot; ln -s {shlex.quote(str(outside))} out"
        await vm.run(f"{links}; mkdir sub; echo in > sub/f; ln -s sub inside; ln -s f sub/link")
        with pytest.raises(aiores.PermissionDenied):
            await vm.get("hostroot/etc/hostname", tmp_path / "hostname")
        with pytest.raises(aiores.PermissionDenied):
            await vm.get("/out/secret", tmp_path / "secret")
        with pytest.raises(aiores.PermissionDenied):
            await vm.put(local, "out/planted")
        with pytest.raises(aiores.PermissionDenied):
            await vm.put(local, "hostroot" + str(outside / "planted"))
        assert not (outside / "planted").exists()
        assert not (tmp_path / "secret").exists()
        # Links that stay in the disk are followed as usual.
        await vm.get("inside/f", tmp_path / "f1")
        assert (tmp_path / "f1").read_text() == "in\n"
        await vm.get("sub", tmp_path / "sub")  # a link in a tree comes as a link
        assert os.readlink(tmp_path / "sub" / "link") == "f"
        await vm.put(local, "inside/g")
        assert (await vm.run("cat sub/g")).stdout == "planted\n"


@pytest.mark.asyncio
async def test_a_plain_session_reaches_a_vm(state_dir: Path) -> None:
    async with aiores.Session() as session:  # no contexts: the VM names its login key
        vm = await session.manager("sim://?boot_delay=0.05").acquire(ComputeDescription())
        assert await vm.wait(ResourceState.ACTIVE, timeout=STEP) is ResourceState.ACTIVE
        assert (await vm.run("echo hi")).stdout == "hi\n"
        job = await vm.job_service().submit(JobDescription.shell("echo job"))
        assert await job.wait(timeout=STEP) is JobState.DONE
        await vm.destroy()
