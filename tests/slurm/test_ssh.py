"""slurm+ssh://: the same Slurm commands through the ssh:// runner (a real sshd on
loopback, logged in as the ssh tests' user), one pooled connection for all."""

from __future__ import annotations

import pytest

import aiores
from aiores import JobDescription, JobState
from aiores_slurm.testing import Cluster
from tests.ssh.servers import Sshd

from .conftest import STEP

pytestmark = [pytest.mark.asyncio, pytest.mark.usefixtures("no_jobs_left")]


async def test_basics_over_ssh(slurm_cluster: Cluster, slurm_sshd: Sshd) -> None:
    url = f"slurm+ssh://{slurm_sshd.user}@127.0.0.1:{slurm_sshd.port}?interval=0.3"
    url += f"&conf={slurm_cluster.conf}"
    logins = slurm_sshd.log_count("Accepted publickey")
    async with aiores.Session(contexts=[slurm_sshd.context()]) as session:
        js = session.job_service(url)
        ok = await js.submit(JobDescription.shell("echo hi from $(id -un); exit 5"))
        held = await js.submit(JobDescription(executable="/bin/sleep", arguments=["60"]), hold=True)
        assert await ok.wait(timeout=STEP) is JobState.FAILED
        assert ok.exit_code == 5
        assert ok.stdout == f"hi from {slurm_sshd.user}\n"
        assert held.state is JobState.HELD
        await held.release()
        await held.wait(JobState.RUNNING, timeout=STEP)
        with pytest.raises(aiores.PermissionDenied):
            await held.suspend()  # Slurm lets only operators and admins suspend
        await held.cancel()
        assert held.state is JobState.CANCELED
        found = await js.list()
        assert {ok.native_id, held.native_id} <= {job.native_id for job in found}
    # Every sbatch, squeue, scontrol and scancel went over one pooled connection.
    assert slurm_sshd.log_count("Accepted publickey") == logins + 1


async def test_slurm_urls_are_checked() -> None:
    async with aiores.Session() as session:
        with pytest.raises(aiores.IncorrectURL):
            await session.job_service("slurm+ssh://").list()
        with pytest.raises(aiores.IncorrectURL):
            await session.job_service("slurm://somehost").list()
