"""A VM's processes are found and killed however they hide (env -i, nohup, setsid)."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import psutil
import pytest

import aiores
from aiores import Compute, ComputeDescription, ResourceState
from aiores.testing import SimCloudProcess
from aiores_sim import cloud_pid, stop_cloud

from .conftest import STEP, booted, pinned_context

D = ComputeDescription(ready=None)
URL = "sim://?boot_delay=0.05"


def _hide(mark: str, *, everything: bool = False) -> str:
    """Detached jobs that drop the VM's environment marker (and more, if ``everything``)."""
    command = (
        f"nohup env -i sleep 301.{mark} >/dev/null 2>&1 &"
        f" env -i sh -c 'sleep 302.{mark} & exit 0' >/dev/null 2>&1;"
        f" setsid env -i sleep 303.{mark} >/dev/null 2>&1 </dev/null &"
    )
    if everything:  # its own session, no marker, out of the disk, its parent gone
        command += f" (cd / && setsid env -i sleep 304.{mark} >/dev/null 2>&1 </dev/null &);"
    return command + " exit 0"


def _sleeps(mark: str) -> list[int]:
    """Live processes running ``sleep <n>.<mark>``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if (
            len(cmdline) == 2
            and cmdline[0] == "sleep"
            and cmdline[1].endswith(f".{mark}")
            and proc.info["status"] != psutil.STATUS_ZOMBIE
        ):
            found.append(proc.pid)
    return found


async def _until_sleeping(mark: str, count: int) -> list[int]:
    async with asyncio.timeout(STEP):
        while len(pids := await asyncio.to_thread(_sleeps, mark)) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    return pids


async def _until_none(mark: str) -> None:
    async with asyncio.timeout(STEP):
        while await asyncio.to_thread(_sleeps, mark):  # noqa: ASYNC110 (processes elsewhere)
            await asyncio.sleep(0.02)


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
            *(vm.run(_hide(mark)) for vm, mark in zip(again, marks, strict=True))  # type: ignore[attr-defined]
        )
        assert [r.exit_status for r in results] == [0, 0, 0]
        for mark in marks:
            await _until_sleeping(mark, 3)
        await destroyed.destroy()
        assert await asyncio.to_thread(_sleeps, marks[0]) == []  # gone once destroy returns
        async with asyncio.timeout(STEP):
            assert await expiring.wait() is ResourceState.EXPIRED
            assert await dying.wait() is ResourceState.FAILED
        await _until_none(marks[1])
        await _until_none(marks[2])


@pytest.mark.asyncio
async def test_leftover_check_sees_hidden_jobs_and_stop_kills_them(
    own_cloud: Path, state_dir: Path
) -> None:
    mark = secrets.token_hex(3).translate(str.maketrans("abcdef", "123456"))
    async with booted(1, URL, state_dir=state_dir) as (_, [vm]):
        assert (await vm.run(_hide(mark, everything=True))).exit_status == 0
        pids = await _until_sleeping(mark, 4)
        pid = await cloud_pid(own_cloud)
        assert pid is not None
        cloud = SimCloudProcess(own_cloud, pid)
        left = await asyncio.to_thread(cloud.leftovers)
        assert all(f"VM process {p}" in left for p in pids), left
        assert await stop_cloud(own_cloud) is True
        assert await asyncio.to_thread(_sleeps, mark) == []
        assert await asyncio.to_thread(cloud.leftovers) == []
