"""docker:// machines on a real podman: fleet fan-out, files, leases, reconnect."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import aiores
from aiores import ComputeDescription, ResourceState

from .podman import IMAGE, Podman, check_stdin

pytestmark = pytest.mark.asyncio

STEP = 60.0


async def test_fleet_fan_out_over_20_containers(podman: Podman, tmp_path: Path) -> None:
    note = tmp_path / "note.txt"
    await asyncio.to_thread(note.write_text, "hello\n")
    async with aiores.Session(journal=None) as session, session.fleet() as fleet:
        fleet.provision("docker://", ComputeDescription(image=IMAGE), count=20, tags={"web"})
        await fleet.wait(timeout=STEP)
        web = fleet.select("web")
        assert len(web.resources) == 20
        await web.put(note, "/tmp/note.txt")
        result = await web.run("cat /tmp/note.txt; hostname", timeout=STEP)
        assert len(result) == 20
        hostnames = set()
        for r in result:
            assert r.exit_status == 0, r
            text, host = r.stdout.splitlines()
            assert text == "hello"
            hostnames.add(host)
        assert len(hostnames) == 20  # one container each
        vm = web.resources[0]
        assert vm.access is not None
        assert vm.access.startswith("docker:///")
        assert "web" in vm.tags
        await vm.get("/tmp/note.txt", tmp_path / "back.txt")
        assert await asyncio.to_thread((tmp_path / "back.txt").read_text) == "hello\n"
    assert podman.containers() == []  # the fleet destroyed its machines


async def test_a_lease_ends_on_the_machine_and_reconnect(podman: Podman) -> None:
    async with aiores.Session(journal=None) as first:
        vm = await first.manager("docker://").acquire(ComputeDescription(image=IMAGE, duration=1))
        assert vm.state is ResourceState.ACTIVE
        vm_id = vm.id
    async with aiores.Session(journal=None) as second:
        found = await second.manager("docker://").get(vm_id)
        assert await found.wait(timeout=STEP) is ResourceState.EXPIRED
        await found.destroy()
    assert podman.containers() == []


async def test_commands_stop_when_cancelled_and_a_missing_container(podman: Podman) -> None:
    async with aiores.Session(journal=None) as session:
        mgr = session.manager(f"docker://?image={IMAGE}")
        async with mgr.acquired(ComputeDescription()) as vm:
            with pytest.raises(aiores.Timeout):
                await vm.run("sleep 1000.313131", timeout=0.5)
            check = await vm.run("ps -o args | grep -c '^sleep 1000.313131' || true")
            assert check.stdout.strip() == "0"
            assert vm.access is not None
        runner = await session.command_runner(vm.access)
        with pytest.raises(aiores.DoesNotExist):
            await runner.run("true")
        with pytest.raises(aiores.DoesNotExist, match="pull or build it first"):
            await mgr.acquire(ComputeDescription(image="localhost/no-such-image:1"))
    assert podman.containers() == []


async def test_a_command_reads_its_stdin(podman: Podman) -> None:
    async with (
        aiores.Session(journal=None) as session,
        session.manager(f"docker://?image={IMAGE}").acquired(ComputeDescription()) as vm,
    ):
        await check_stdin(vm)
    assert podman.containers() == []
