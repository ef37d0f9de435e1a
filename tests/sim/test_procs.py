"""A VM's processes are found and killed however they hide (env -i, nohup, setsid)."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest

import aiores
from aiores import Compute, ComputeDescription, ResourceState
from aiores_sim import cloud_pid, stop_cloud
from aiores_sim.testing import SimCloudProcess

from .conftest import STEP, booted, hide_jobs, pinned_context, sleeps, until_none, until_sleeping

D = ComputeDescription(ready=None)
URL = "sim://?boot_delay=0.05"


@pytest.mark.asyncio
async def test_destroy_expiry_and_death_kill_detached_jobs(state_dir: Path) -> None:
    async with aiores.Session() as first:
        mgr = first.manager(URL)
        vms = [
            await mgr.acquire(D),
            await mgr.acquire(D.replace(duration=3)),
            await mgr.acquire(D.replace(user_data="#sim: die_after=3\n")),
        ]
        async with asyncio.timeout(STEP):
            await asyncio.gather(*(vm.wait(ResourceState.ACTIVE) for vm in vms))
    marks = [secrets.token_hex(3).translate(str.maketrans("abcdef", "123456")) for _ in vms]
    async with aiores.Session(contexts=[pinned_context(state_dir, vms)]) as session:
        mgr = session.manager(URL)
        destroyed, expiring, dying = again = [await mgr.get(vm.id) for vm in vms]
        assert all(isinstance(vm, Compute) for vm in again)
        results = await asyncio.gather(
            *(vm.run(hide_jobs(mark)) for vm, mark in zip(again, marks, strict=True))  # type: ignore[attr-defined]
        )
        assert [r.exit_status for r in results] == [0, 0, 0]
        for mark in marks:
            await until_sleeping(mark, 3)
        await destroyed.destroy()
        assert await asyncio.to_thread(sleeps, marks[0]) == []  # gone once destroy returns
        async with asyncio.timeout(STEP):
            assert await expiring.wait() is ResourceState.EXPIRED
            assert await dying.wait() is ResourceState.FAILED
        await until_none(marks[1])
        await until_none(marks[2])


@pytest.mark.asyncio
async def test_leftover_check_sees_hidden_jobs_and_stop_kills_them(
    own_cloud: Path, state_dir: Path
) -> None:
    mark = secrets.token_hex(3).translate(str.maketrans("abcdef", "123456"))
    async with booted(1, URL, state_dir=state_dir) as (_, [vm]):
        assert (await vm.run(hide_jobs(mark, everything=True))).exit_status == 0
        pids = await until_sleeping(mark, 4)
        pid = await cloud_pid(own_cloud)
        assert pid is not None
        cloud = SimCloudProcess(own_cloud, pid)
        left = await asyncio.to_thread(cloud.leftovers)
        assert all(f"VM process {p}" in left for p in pids), left
        assert await stop_cloud(own_cloud) is True
        assert await asyncio.to_thread(sleeps, mark) == []
        assert await asyncio.to_thread(cloud.leftovers) == []
