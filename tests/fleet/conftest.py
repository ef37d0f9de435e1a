"""Fixtures for the fleet tests: the simulated cloud, real sshds, remote processes.

Every test here reaches one sim cloud for the test session (``aiores_sim_cloud`` from
:mod:`aiores_sim.testing`, which fails the run if the cloud leaves anything behind). The
real OpenSSH sshd fixtures (``keys``, ``sshd``) are those of ``tests/ssh``.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
import pytest_asyncio

import aiores
from aiores import SSHContext
from aiores_sim import managed_key
from aiores_sim.testing import SimCloudProcess

__all__ = [
    "FAST",
    "STEP",
    "mark",
    "running",
    "session",
    "until_gone",
    "until_running",
]

#: Seconds any one await in these tests may take before the test fails.
STEP = 20.0
#: A sim cloud whose VMs boot at once (the tests are about what comes after).
FAST = "sim://?boot_delay=0.01-0.05"


@pytest.fixture(autouse=True)
def _cloud(aiores_sim_cloud: SimCloudProcess) -> SimCloudProcess:
    """Every fleet test reaches the session's sim cloud."""
    return aiores_sim_cloud


@pytest_asyncio.fixture
async def session(state_dir: Path) -> AsyncIterator[aiores.Session]:
    """A session with no journal (fleets clean up after themselves).

    Its SSH context names the aiores-managed key, which the sim VMs then authorize,
    and no known_hosts or ssh_config files: the VMs' published host keys are pinned.
    """
    key = await asyncio.to_thread(managed_key, state_dir)
    ctx = SSHContext(key_files=[str(key)], known_hosts=[], config=[])
    async with aiores.Session(journal=None, contexts=[ctx]) as opened:
        yield opened


@pytest.fixture
def mark() -> str:
    """Digits that make a test's remote ``sleep`` commands its own (``sleep 30.<mark>``)."""
    return str(secrets.randbelow(10**8)).zfill(8)


def running(mark: str, *, sleeps_only: bool = False) -> list[int]:
    """Live processes (on this machine: sim VMs and sshd run here) whose command line
    carries ``mark``; only ``sleep`` processes if ``sleeps_only``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] == psutil.STATUS_ZOMBIE or not cmdline:
            continue
        if sleeps_only and not (cmdline[0].endswith("sleep") and mark in cmdline[-1]):
            continue
        if any(mark in arg for arg in cmdline):
            found.append(proc.pid)
    return found


async def until_running(mark: str, count: int) -> None:
    """Wait (bounded) until ``count`` ``sleep`` processes carry ``mark``."""
    async with asyncio.timeout(STEP):
        while len(await asyncio.to_thread(running, mark, sleeps_only=True)) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def until_gone(mark: str, timeout: float = STEP) -> None:
    """Wait (bounded) until no process carries ``mark``."""
    async with asyncio.timeout(timeout):
        while await asyncio.to_thread(running, mark):  # noqa: ASYNC110 (processes elsewhere)
            await asyncio.sleep(0.02)
