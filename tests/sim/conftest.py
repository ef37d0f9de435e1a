"""Fixtures for the sim:// tests: one cloud process per test session, private clouds.

Every test here runs against the session's cloud (``aiores_sim_cloud`` from
:mod:`aiores_sim.testing`, which fails the run if the cloud leaves anything behind),
unless it asks for ``own_cloud``: a cloud directory of its own, whose cloud (started
on demand by the code under test) is stopped and checked at the end of the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest

import aiores
from aiores import Compute, ComputeDescription, ResourceState, SSHContext
from aiores_sim import MANAGED_KEY
from aiores_sim.testing import SimCloudProcess

__all__ = [
    "STEP",
    "booted",
    "hide_jobs",
    "listening",
    "pinned_context",
    "port_of",
    "sleeps",
    "until_none",
    "until_sleeping",
]

#: Seconds any one await in these tests may take before the test fails.
STEP = 20.0


@pytest.fixture(autouse=True)
def _cloud(aiores_sim_cloud: SimCloudProcess) -> SimCloudProcess:
    """Every sim test reaches the session's cloud unless it sets up its own."""
    return aiores_sim_cloud


@pytest.fixture
def own_cloud(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private cloud directory (``$AIORES_SIM_DIR``); its cloud is stopped at the end."""
    directory = Path(tempfile.mkdtemp(prefix="aiores-sim-own-"))
    monkeypatch.setenv("AIORES_SIM_DIR", str(directory))
    try:
        yield directory
    finally:
        pid_file = directory / "cloud.pid"
        if pid_file.exists():
            cloud = SimCloudProcess(directory, int(pid_file.read_text().strip()))
            cloud.stop()
            assert not cloud.leftovers()
        shutil.rmtree(directory, ignore_errors=True)


def port_of(vm: aiores.Resource) -> int:
    assert vm.access is not None
    return int(vm.access.rsplit(":", 1)[1])


def pinned_context(state_dir: Path, vms: Sequence[aiores.Resource]) -> SSHContext:
    """An SSHContext that pins each VM's published host key and uses the managed key."""
    return SSHContext(
        key_files=[str(state_dir / MANAGED_KEY)],
        known_hosts=[],
        config=[],
        host_keys={f"127.0.0.1:{port_of(vm)}": list(vm.host_keys) for vm in vms},
    )


def listening(port: int, pid: int | None = None) -> bool:
    """True if the sim cloud (``pid``, default the current one) listens on ``port``.

    Only its own sockets count: other test suites on this machine may bind the port
    as soon as a VM lets go of it.
    """
    if pid is None:
        pid = int((Path(os.environ["AIORES_SIM_DIR"]) / "cloud.pid").read_text())
    return any(
        conn.status == psutil.CONN_LISTEN
        and conn.laddr
        and conn.laddr.port == port
        and conn.pid == pid
        for conn in psutil.net_connections(kind="tcp")
    )


@contextlib.asynccontextmanager
async def booted(
    count: int,
    url: str = "sim://?boot_delay=0.05",
    *,
    state_dir: Path,
    **fields: Any,
) -> AsyncIterator[tuple[aiores.Session, list[Compute]]]:
    """``count`` VMs, ACTIVE over SSH, in a session whose SSH context pins their keys.

    They are acquired in one session (ACTIVE meaning "running"), then found again by
    id in a second session whose SSHContext pins the published host keys: there the
    core probes each over SSH before it is ACTIVE. Destroyed at the end.
    """
    desc = ComputeDescription(ready=None, **fields)
    async with aiores.Session() as first:
        vms = await first.manager(url).acquire_many(desc, count)
        async with asyncio.timeout(STEP):
            await asyncio.gather(*(vm.wait(ResourceState.ACTIVE) for vm in vms))
    async with aiores.Session(contexts=[pinned_context(state_dir, vms)]) as session:
        mgr = session.manager(url)
        again = [await mgr.get(vm.id) for vm in vms]
        computes = [vm for vm in again if isinstance(vm, Compute)]
        try:
            async with asyncio.timeout(STEP):
                await asyncio.gather(*(vm.wait(ResourceState.ACTIVE) for vm in computes))
            yield session, computes
        finally:
            await mgr.destroy(computes)


def hide_jobs(mark: str, *, everything: bool = False) -> str:
    """Detached jobs that drop the VM's environment marker (and more, if ``everything``)."""
    command = (
        f"nohup env -i sleep 301.{mark} >/dev/null 2>&1 &"
        f" env -i sh -c 'sleep 302.{mark} & exit 0' >/dev/null 2>&1;"
        f" setsid env -i sleep 303.{mark} >/dev/null 2>&1 </dev/null &"
    )
    if everything:  # its own session, no marker, out of the disk, its parent gone
        command += f" (cd / && setsid env -i sleep 304.{mark} >/dev/null 2>&1 </dev/null &);"
    return command + " exit 0"


def sleeps(mark: str) -> list[int]:
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


async def until_sleeping(mark: str, count: int) -> list[int]:
    async with asyncio.timeout(STEP):
        while len(pids := await asyncio.to_thread(sleeps, mark)) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    return pids


async def until_none(mark: str) -> None:
    async with asyncio.timeout(STEP):
        while await asyncio.to_thread(sleeps, mark):  # noqa: ASYNC110 (processes elsewhere)
            await asyncio.sleep(0.02)


async def python_child(code: str, *args: str) -> str:
    """Run ``code`` in a Python interpreter of its own (with ``args``); its output.

    The child must succeed within :data:`STEP` seconds (its stderr is the message).
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(STEP):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()
