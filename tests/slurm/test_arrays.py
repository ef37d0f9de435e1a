"""slurm:// native arrays (one ``sbatch --array``), native sbatch options, and the
cluster's queues and machines (``sinfo``), against the real single-node Slurm."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import aiores
from aiores import JobDescription, JobState
from aiores_slurm.testing import CPUS, Cluster

from .conftest import STEP, Shim

pytestmark = [pytest.mark.asyncio, pytest.mark.usefixtures("no_jobs_left")]

SLEEP = JobDescription(executable="/bin/sleep", arguments=["60"])


def most_at_once(log: str) -> int:
    """The most members running at once, from the ``S|E <index> <time>`` lines they
    wrote: a start at the same time as an end counts both (an upper bound)."""
    events: list[tuple[float, int]] = []
    for line in log.splitlines():
        kind, _, when = line.split()
        # At one instant starts (0) sort before ends (1): both count.
        events.append((float(when), 0 if kind == "S" else 1))
    running = most = 0
    for _, event in sorted(events):
        running += 1 if event == 0 else -1
        most = max(most, running)
    return most


async def test_an_array_of_20_runs_at_most_3_at_once(
    slurm_url: str, shim: Shim, tmp_path: Path
) -> None:
    log = tmp_path / "members.log"
    member = JobDescription.shell(
        f'echo "S $AIORES_ARRAY_INDEX $(date +%s.%N)" >> {log}; sleep 0.3; '
        f'echo "E $AIORES_ARRAY_INDEX $(date +%s.%N)" >> {log}; echo "$AIORES_ARRAY_INDEX"'
    )
    async with aiores.Session() as session:
        js = session.job_service(slurm_url)
        array = await js.submit_array(member, count=20, max_parallel=3)
        assert shim.counts()["sbatch"] == 1
        base = str(array[0].native_id).split("_")[0]
        assert [job.native_id for job in array] == [f"{base}_{i}" for i in range(20)]
        assert await array.wait(timeout=90) == [JobState.DONE] * 20
        assert [job.stdout for job in array] == [f"{i}\n" for i in range(20)]
    text = log.read_text()
    assert len(text.splitlines()) == 40
    assert 1 <= most_at_once(text) <= 3
    calls = shim.counts()
    assert calls["sbatch"] == 1
    squeues = [line for line in shim.log.read_text().splitlines() if line.startswith("squeue")]
    # One squeue per tick for the whole array: the first names every member, and the
    # member that ended last (Slurm need not run them in order) is in every one but
    # perhaps the last (another may have been seen ending after it).
    assert all(f"{base}_{i}" in squeues[0] for i in range(20)), squeues[0]
    last = max(
        (float(when), index)
        for kind, index, when in map(str.split, text.splitlines())
        if kind == "E"
    )[1]
    assert all(f"{base}_{last}" in line for line in squeues[:-1]), (last, squeues)


test_an_array_of_20_runs_at_most_3_at_once = pytest.mark.timeout(120)(
    test_an_array_of_20_runs_at_most_3_at_once
)


async def test_hold_release_and_cancel_a_whole_array(slurm_url: str) -> None:
    async with aiores.Session() as session:
        js = session.job_service(slurm_url)
        array = await js.submit_array(SLEEP, count=4, max_parallel=1)
        await array[0].wait(JobState.RUNNING, timeout=STEP)
        # Slurm holds pending members only: the running one is named.
        with pytest.raises(aiores.IncorrectState, match="could not hold 1 of 4") as caught:
            await array.hold()
        assert array[0].id in str(caught.value)
        for job in array[1:]:
            assert await job.wait(JobState.HELD, timeout=STEP) is JobState.HELD
        await array[3].release()
        assert array[3].state is JobState.QUEUED
        await array.cancel()
        assert [job.state for job in array] == [JobState.CANCELED] * 4
        assert await array.wait(timeout=STEP) == [JobState.CANCELED] * 4


async def test_a_cancelled_array_submit_leaves_no_job(
    slurm_url: str, slurm_cluster: Cluster
) -> None:
    before = set(await asyncio.to_thread(slurm_cluster.live_jobs))
    async with aiores.Session() as session:
        js = session.job_service(slurm_url)
        for delay in (0.0, 0.02, 0.05, 0.1):
            task = asyncio.create_task(js.submit_array(SLEEP, count=5, max_parallel=2))
            await asyncio.sleep(delay)
            task.cancel()
            try:
                array = await task
            except asyncio.CancelledError:
                continue
            await array.cancel()  # it was accepted before the cancel arrived
    assert set(await asyncio.to_thread(slurm_cluster.live_jobs)) <= before


async def test_native_options_reach_sbatch(slurm_url: str, slurm_cluster: Cluster) -> None:
    async with aiores.Session() as session:
        js = session.job_service(slurm_url)
        job = await js.submit(SLEEP.replace(native=["--nice=10"]))
        shown = await asyncio.to_thread(
            slurm_cluster.run, "scontrol", "show", "job", str(job.native_id)
        )
        assert "Nice=10" in shown.stdout
        await job.cancel()
        with pytest.raises(aiores.BadParameter, match=r"native\[0\]"):
            await js.submit(SLEEP.replace(native=["nice=10"]))  # not an option
        with pytest.raises(aiores.BadParameter, match="sets"):
            await js.submit(SLEEP.replace(native=["--comment=mine"]))  # the token's place
        with pytest.raises(aiores.BadParameter):
            await js.submit(SLEEP.replace(native=["--no-such-option"]))  # sbatch refuses
        # Other backends refuse native options before anything runs.
        with pytest.raises(aiores.NotSupported, match=r"JobDescription\.native"):
            await session.job_service("local://").submit(SLEEP.replace(native=["--nice=1"]))


async def test_queues_and_machines_from_one_sinfo_each(slurm_url: str, shim: Shim) -> None:
    async with aiores.Session() as session:
        js = session.job_service(slurm_url)
        queues = {queue.name: queue for queue in await js.queues()}
        assert shim.counts()["sinfo"] == 1
        machines = await js.machines()
        assert shim.counts()["sinfo"] == 2
    assert set(queues) == {"debug", "other"}
    debug = queues["debug"]
    assert (debug.state, debug.default, debug.nodes, debug.cpus) == ("up", True, 1, CPUS)
    assert debug.memory == 20000
    assert debug.walltime is None  # MaxTime=INFINITE
    assert not queues["other"].default
    (machine,) = machines
    assert machine.cpus == CPUS
    assert machine.memory == 20000
    assert machine.queues == ("debug", "other")
    assert machine.state in ("idle", "mixed", "allocated")
