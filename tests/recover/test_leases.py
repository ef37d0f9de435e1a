"""Leases after their program died: expired, not lost; ending, reported; still reaped.

Each test has a sim cloud and a state directory (journal) of its own: "the cloud forgot
a machine" is a cloud restarted on the same directory (it keeps nothing of the VMs it
ran), and the programs that die are fresh interpreters ending with their session
still open (their process gone: reap counts their sessions as gone).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import aiores
from aiores import ResourceState
from aiores._recover import ENDING_WITHIN, _lease_end, _lease_of, describe_lease
from aiores.adaptor import ResourceInfo
from aiores_sim.testing import SimCloudProcess, start_sim_cloud

from .conftest import STEP, in_another_program

pytestmark = pytest.mark.asyncio

URL = "sim://?boot_delay=0.05"


@dataclass
class Cloud:
    """This test's sim cloud, restartable."""

    directory: Path
    process: SimCloudProcess

    def restart(self) -> None:
        """Stop it (every VM ends and is forgotten) and start it again (blocking)."""
        self.process.stop()
        self.process = start_sim_cloud(self.directory, watch_pid=os.getpid())


@pytest.fixture
def cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cloud]:
    directory = tmp_path / "sim"
    monkeypatch.setenv("AIORES_SIM_DIR", str(directory))
    monkeypatch.setenv("AIORES_STATE_DIR", str(tmp_path / "state"))
    made = Cloud(directory, start_sim_cloud(directory, watch_pid=os.getpid()))
    try:
        yield made
    finally:
        made.process.stop()
    assert made.process.leftovers() == []


async def _acquired_by_a_dead_program(durations: dict[str, float | None]) -> dict[str, str]:
    """Machines (by name: their lease, or None) acquired by a program that then dies."""
    return dict(
        await in_another_program(
            f"""
            mgr = session.manager({URL!r})
            ids = {{}}
            for name, duration in {durations!r}.items():
                vm = await mgr.acquire(ComputeDescription(template="tiny", duration=duration))
                await vm.wait(ResourceState.ACTIVE, timeout=30)
                ids[name] = vm.id
            return ids
            """,
            dies=True,
        )
    )


async def _until_expired(rid: str) -> None:
    async with aiores.Session(journal=None) as watcher:
        vm = await watcher.get(rid)
        assert await vm.wait(timeout=STEP) is ResourceState.EXPIRED


async def _states() -> dict[str, tuple[str, str]]:
    async with aiores.Session() as session:
        assert session.journal is not None
        return {
            o["id"]: (o["state"], o["detail"]) for o in await session.journal.objects("resource")
        }


def _aiores(*args: str) -> subprocess.CompletedProcess[str]:
    """The ``aiores`` command (blocking), on this test's state and cloud."""
    return subprocess.run(
        [sys.executable, "-m", "aiores", *args],
        env={**os.environ, "COLUMNS": "200", "PYTHONASYNCIODEBUG": ""},
        capture_output=True,
        text=True,
        timeout=STEP * 2,
        check=False,
    )


async def test_a_lease_that_ended_and_was_forgotten_is_expired_not_gone(cloud: Cloud) -> None:
    ids = await _acquired_by_a_dead_program({"leased": 1.0, "plain": None})
    await _until_expired(ids["leased"])
    await asyncio.to_thread(cloud.restart)  # the cloud forgets both
    async with aiores.Session() as session:
        found = await session.recover()
        assert found.problems == []
        assert found.expired == [ids["leased"]]
        assert found.gone == [ids["plain"]]
        assert (found.resources, found.ending) == ([], [])
        reaped = await session.reap()
        assert (reaped.leaks, reaped.problems) == ([], [])
    states = await _states()
    assert states[ids["leased"]][0] == "EXPIRED"
    assert states[ids["leased"]][1].startswith("expired: its lease ended at ")
    assert states[ids["plain"]][0] == "CANCELED"
    async with aiores.Session() as session:  # final now: nothing to say again
        again = await session.recover()
        assert (again.expired, again.gone, again.resources) == ([], [], [])


async def test_a_lease_ending_soon_is_reported_and_reap_still_ends_it(cloud: Cloud) -> None:
    ids = await _acquired_by_a_dead_program({"soon": 120.0, "later": 3600.0, "plain": None})
    async with aiores.Session() as session:
        found = await session.recover()
        assert found.problems == []
        assert sorted(r.id for r in found.resources) == sorted(ids.values())
        (ending,) = found.ending
        assert ending.id == ids["soon"]
        assert isinstance(ending, aiores.Compute)
        assert ending.expires_at is not None
        assert 0 < ending.expires_at - time.time() <= 120
        assert found.expired == found.gone == []
        # A lease bounds a leak; it does not make the machine anyone's.
        reaped = await session.reap()
        leaks = {leak.id: leak for leak in reaped.leaks}
        assert set(leaks) == set(ids.values())
        assert {leak.reason for leak in leaks.values()} == {"session gone"}
        assert leaks[ids["plain"]].expires_at is None
        soon, later = leaks[ids["soon"]].expires_at, leaks[ids["later"]].expires_at
        assert soon is not None
        assert later is not None
        assert soon < later
        assert ENDING_WITHIN < later - time.time() <= 3600
        assert sorted(reaped.released) == sorted(ids.values())
    states = await _states()
    assert {states[rid][0] for rid in ids.values()} == {"CANCELED"}
    async with aiores.Session(journal=None) as other:
        assert await other.manager("sim://").list() == []


async def test_the_commands_say_expired_and_ending_and_gc_ends_the_leased(
    cloud: Cloud,
) -> None:
    first = await _acquired_by_a_dead_program({"leased": 1.0})
    await _until_expired(first["leased"])
    await asyncio.to_thread(cloud.restart)
    second = await _acquired_by_a_dead_program({"soon": 120.0})
    shown = await asyncio.to_thread(_aiores, "recover")
    assert shown.returncode == 0, shown.stderr
    assert f"expired {first['leased']} (its lease ended)" in shown.stdout
    assert f"ending {second['soon']} (lease ends in " in shown.stdout
    assert f"resource {second['soon']} ACTIVE" in shown.stdout
    assert "0 gone, 1 expired, 1 ending" in shown.stderr
    gc = await asyncio.to_thread(_aiores, "gc", "--yes")
    assert gc.returncode == 0, gc.stderr
    assert f"released {second['soon']}" in gc.stdout
    assert "1 leaked, 1 released" in gc.stderr
    async with aiores.Session(journal=None) as other:
        assert await other.manager("sim://").list() == []


async def test_a_lease_end_that_is_no_time_counts_as_none() -> None:
    """A backend's or a journal's ``expires_at`` that is no finite number is no lease
    (a listing of an infinite one failed; NaN compared as never ended)."""
    for value in (float("nan"), float("inf"), -float("inf"), True, "soon", None):
        info = ResourceInfo(id="i-1", state=ResourceState.ACTIVE, extra={"expires_at": value})
        assert _lease_of(info) is None, value
        assert _lease_end({"data": json.dumps({"expires_at": value})}) is None, value
    info = ResourceInfo(id="i-1", state=ResourceState.ACTIVE, extra={"expires_at": 1e9})
    assert _lease_of(info) == 1e9
    assert describe_lease(_lease_of(info), now=1e9 + 1) == "lease ended"
