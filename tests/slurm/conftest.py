"""Fixtures for the slurm:// tests: a real single-node Slurm cluster, started once.

``slurm_cluster`` (session scope) starts munged, slurmctld and slurmd in a private
directory with private ports (see :mod:`aiores_slurm.testing`), and at the end
cancels every job and stops them all; ``slurm_accounting`` is a second one with
accounting (MariaDB, slurmdbd), for the tests of sacct only. ``slurm_url`` is a
``slurm://`` URL that reaches it (``conf=`` names its slurm.conf; ``dir=`` a job files
directory of the test; ``interval=`` a short floor so tests do not wait seconds per
tick).

The ``shim`` fixture puts a directory of wrapper scripts first on PATH: each logs its
call, then runs the real Slurm command, so a test counts the scheduler calls made.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

import aiores
from aiores_slurm.testing import Cluster, Shim, available, make_shim
from tests.ssh.servers import Sshd, ensure_user

__all__ = [
    "STEP",
    "Shim",
    "slurm_accounting",
    "slurm_url",
    "until",
]

#: Seconds any one await in these tests may take before the test fails.
STEP = 30.0


@pytest.fixture(scope="session")
def slurm_accounting() -> Iterator[Cluster]:
    """A second cluster, with accounting (MariaDB and slurmdbd, sacct answers) and a
    MinJobAge of 2 s: only for the few tests of reading jobs from sacct (the
    ordinary cluster keeps the path without accounting tested)."""
    why = available(accounting=True)
    if why is not None:
        pytest.fail(f"Slurm with accounting cannot run here: {why}")
    cluster = Cluster(accounting=True)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def jobs_dir(tmp_path: Path) -> Path:
    """The job files directory of this test (readable by the ssh test user too)."""
    path = tmp_path / "slurm-jobs"
    path.mkdir(mode=0o777)
    path.chmod(0o777)
    # The ssh test user writes here: every parent must be searchable.
    for parent in path.parents:
        if parent == Path("/tmp") or parent == Path("/"):
            break
        parent.chmod(parent.stat().st_mode | stat.S_IXOTH)
    return path


@pytest.fixture
def slurm_url(slurm_cluster: Cluster, jobs_dir: Path) -> str:
    return f"slurm://?interval=0.3&conf={slurm_cluster.conf}&dir={jobs_dir}"


@pytest_asyncio.fixture
async def no_jobs_left(slurm_cluster: Cluster) -> AsyncIterator[None]:
    """Fails the test if it left a job pending or running (cancelling them first)."""
    before = set(await asyncio.to_thread(slurm_cluster.live_jobs))
    yield
    left = set(await asyncio.to_thread(slurm_cluster.live_jobs)) - before
    if left:
        await asyncio.to_thread(slurm_cluster.run, "scancel", *sorted(left))
    assert not left, f"the test left Slurm jobs {sorted(left)}"


@pytest.fixture
def shim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Shim:
    made = make_shim(tmp_path / "shim")
    monkeypatch.setenv("PATH", f"{made.bin}{os.pathsep}{os.environ['PATH']}")
    return made


@pytest.fixture(scope="session")
def slurm_sshd(sshd: Sshd) -> Sshd:
    """The default-limits sshd of tests/ssh; its test user must exist for slurmd."""
    ensure_user()
    return sshd


async def until(predicate: Callable[[], bool], timeout: float = STEP) -> None:
    """Await ``predicate()`` becoming true, checking as the loop turns (bounded)."""
    async with asyncio.timeout(timeout):
        # The condition lives in the cluster (a job's state): nothing to await.
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


def session() -> aiores.Session:
    return aiores.Session()
