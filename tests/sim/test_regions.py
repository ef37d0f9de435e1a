"""A cloud past one process: its limit of open files raised, VMs served by regions."""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

import aiores
from aiores import Compute, ComputeDescription, ResourceState
from aiores_sim import CloudClient
from aiores_sim._regions import FDS_PER_VM, RESERVED_FDS, default_capacity
from aiores_sim.testing import SimCloudProcess, start_sim_cloud

from .conftest import STEP


def open_files_limit(pid: int) -> tuple[int, int]:
    """(soft, hard) limit of open files of ``pid``."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError(f"no open files limit for {pid}")


def listeners(ports: set[int]) -> dict[int, int]:
    """Port -> pid of the process listening on it, for ``ports``."""
    return {
        conn.laddr.port: conn.pid
        for conn in psutil.net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN
        and conn.laddr
        and conn.laddr.port in ports
        and conn.pid is not None
    }


async def say_hello(directory: Path) -> dict[str, Any]:
    """The cloud's answer to ``hello`` (its pid, live VMs, processes)."""
    client = CloudClient(directory)
    try:
        hello: dict[str, Any] = await client.call("hello", start=False)
    finally:
        await client.close()
    return hello


def test_the_cloud_raises_its_limit_of_open_files_to_the_hard_limit(own_cloud: Path) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 65536  # a finite hard limit the cloud can raise its soft limit to
    soft = min(256, hard // 2)

    def lowered() -> None:  # the cloud starts with a soft limit below its hard one
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    argv = [sys.executable, "-m", "aiores_sim.server", "--daemon", "--dir", str(own_cloud)]
    argv += ["--watch-pid", str(os.getpid())]
    done = subprocess.run(argv, capture_output=True, timeout=60, check=False, preexec_fn=lowered)
    assert done.returncode == 0, done.stderr
    pid = int((own_cloud / "cloud.pid").read_text())
    assert open_files_limit(pid) == (hard, hard)
    # One process serves what that limit allows at FDS_PER_VM descriptors a VM.
    assert default_capacity() == max(
        100, (resource.getrlimit(resource.RLIMIT_NOFILE)[0] - RESERVED_FDS) // FDS_PER_VM
    )
    SimCloudProcess(own_cloud, pid).stop()


@pytest.mark.asyncio
async def test_vms_past_one_process_are_served_by_regions_found_again_destroyed(
    own_cloud: Path, state_dir: Path
) -> None:
    cloud = start_sim_cloud(own_cloud, watch_pid=os.getpid(), region_capacity=3)
    url = "sim://?boot_delay=0.05"
    desc = ComputeDescription(template="tiny", tags={"regions"})
    async with aiores.Session() as session:
        mgr = session.manager(url)
        vms = await mgr.acquire_many(desc, 7)  # 3 here, 3 and 1 in two regions
        computes = [vm for vm in vms if isinstance(vm, Compute)]
        assert len(computes) == 7
        async with asyncio.timeout(STEP):
            # ACTIVE means each answered over SSH, whichever process serves it.
            await asyncio.gather(*(vm.wait(ResourceState.ACTIVE) for vm in computes))
            results = await asyncio.gather(*(vm.run("hostname") for vm in computes))
        assert [r.stdout.strip() for r in results] == [vm.native_id for vm in computes]
        ports = {int(vm.extra["port"]) for vm in computes}
        serving = listeners(ports)
        assert set(serving) == ports
        pids = set(serving.values())
        assert len(pids) == 3
        assert cloud.pid in pids
        for pid in pids:  # the regions descend from the first process
            assert pid == cloud.pid or cloud.pid in {p.pid for p in psutil.Process(pid).parents()}
        hello = await say_hello(own_cloud)
        assert hello["regions"] == 3
        assert hello["vms"] == 7

    # Another program finds them all again on the one control socket.
    async with aiores.Session() as session:
        mgr = session.manager(url)
        listed = await mgr.list(tags="regions")
        assert sorted(vm.id for vm in listed) == sorted(vm.id for vm in computes)
        again = [await mgr.get(vm.id) for vm in computes]
        assert [vm.state for vm in again] == [ResourceState.ACTIVE] * 7
        async with asyncio.timeout(STEP):
            await mgr.destroy(again)
        assert [vm.state for vm in again] == [ResourceState.CANCELED] * 7
        assert await mgr.list(tags="regions") == []
        assert listeners(ports) == {}
        # Room freed in every process: a new acquire starts no region.
        more = await mgr.acquire_many(desc, 6)
        async with asyncio.timeout(STEP):
            await mgr.destroy(more)
    hello = await say_hello(own_cloud)
    assert hello == {**hello, "regions": 3, "vms": 0}
    region_pids = pids - {cloud.pid}
    await asyncio.to_thread(cloud.stop)
    assert not cloud.leftovers()
    assert not [pid for pid in region_pids if psutil.pid_exists(pid)]
    assert not list((own_cloud / "vms").iterdir())
