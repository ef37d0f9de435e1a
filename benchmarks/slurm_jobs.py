"""Benchmark: N ``/bin/true`` Slurm jobs through ``slurm://`` against PSI/J's Slurm executor.

It starts a private single-node Slurm cluster (:class:`aiores_slurm.testing.Cluster`:
munged, slurmctld, slurmd; needs root and ``slurm-wlm munge``) and runs, one after
another on that one cluster:

- aiores, single: ``session.job_service("slurm://")``, N ``submit`` calls at once
  (``asyncio.gather``), then ``job.wait()`` for all;
- aiores, array: one ``submit_array(count=N)`` (one ``sbatch --array``), then
  ``array.wait()``;
- PSI/J (psij-python, in a virtualenv of its own under the benchmark's temporary
  directory, with a temporary HOME): N ``executor.submit(job)`` one by one, then
  ``job.wait()`` for all, at its default queue polling interval (30 s) and at the
  interval aiores starts from (``--interval``).

Each run has its own counting shim first on PATH (:func:`aiores_slurm.testing.make_shim`),
so the table shows the sbatch, squeue, scontrol, sacct and scancel calls each made,
and the wall time from the first submit to the last job seen done. Goal: aiores no
slower than PSI/J, with at least 10x fewer scheduler calls.

    .venv/bin/python benchmarks/slurm_jobs.py --jobs 1000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiores
from aiores_slurm.testing import Cluster, Shim, available, make_shim

PEERS = Path(__file__).parent / "peers"
PEER = PEERS / "psij_slurm.py"
#: The client commands that ask the controller, besides sbatch.
SCHEDULER = ("squeue", "sacct", "scontrol", "scancel")


def counts(shim: Shim) -> dict[str, int]:
    """The shim's counts, with ``scontrol show hostnames`` apart: PSI/J's batch script
    runs it inside each job, and it expands a host list without asking the controller."""
    found = shim.counts()
    in_job = 0
    if shim.log.exists():
        in_job = sum(
            line.startswith("scontrol show hostnames") for line in shim.log.read_text().splitlines()
        )
    found["scontrol"] -= in_job
    found["in job"] = in_job
    return found


def psij_python(directory: Path) -> Path:
    """The python of the psij-python virtualenv in ``directory`` (made by the helper)."""
    made = subprocess.run(
        [sys.executable, PEERS / "psij_venv.py", str(directory)],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(made.stdout.strip().splitlines()[-1])


def url(cluster: Cluster, directory: Path, interval: float) -> str:
    return f"slurm://?interval={interval}&conf={cluster.conf}&dir={directory}"


async def aiores_single(service: aiores.JobService, n: int) -> None:
    desc = aiores.JobDescription(executable="/bin/true")
    jobs = await asyncio.gather(*(service.submit(desc) for _ in range(n)))
    states = await asyncio.gather(*(job.wait() for job in jobs))
    assert set(states) == {aiores.JobState.DONE}, states


async def aiores_array(service: aiores.JobService, n: int) -> None:
    desc = aiores.JobDescription(executable="/bin/true")
    array = await service.submit_array(desc, count=n)
    states = await array.wait()
    assert set(states) == {aiores.JobState.DONE}, states


def with_shim(shim: Shim) -> dict[str, str]:
    return {**os.environ, "PATH": f"{shim.bin}{os.pathsep}{os.environ['PATH']}"}


async def run_aiores(
    run: Callable[[aiores.JobService, int], Awaitable[None]],
    cluster: Cluster,
    work: Path,
    name: str,
    n: int,
    interval: float,
) -> dict[str, object]:
    slug = name.replace(" ", "-")
    shim = make_shim(work / f"shim-{slug}")
    jobs_dir = work / f"jobs-{slug}"
    jobs_dir.mkdir()
    old_path = os.environ["PATH"]
    os.environ["PATH"] = with_shim(shim)["PATH"]  # the local runner's commands inherit it
    try:
        async with aiores.Session(journal=work / f"journal-{slug}.sqlite") as session:
            service = session.job_service(url(cluster, jobs_dir, interval))
            started = time.monotonic()
            await run(service, n)
            wall = time.monotonic() - started
    finally:
        os.environ["PATH"] = old_path
    return {"run": name, "wall": wall, **counts(shim)}


def run_psij(
    python: Path, cluster: Cluster, work: Path, name: str, n: int, interval: int
) -> dict[str, object]:
    slug = "".join(c if c.isalnum() else "-" for c in name)
    shim = make_shim(work / f"shim-{slug}")
    home = work / f"home-{slug}"
    jobs_dir = work / f"jobs-{slug}"
    home.mkdir()
    jobs_dir.mkdir()
    env = {**with_shim(shim), "HOME": str(home), **cluster.env}
    started = time.monotonic()
    done = subprocess.run(
        [python, PEER, str(n), str(interval), str(jobs_dir)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=jobs_dir,
    )
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"PSI/J failed: {done.stderr[-2000:]}")
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["states"] == {"COMPLETED": n}, answer
    # From its first submit to the last job done (its interpreter's start left out).
    return {"run": name, "wall": float(answer["done"]), "process": wall, **counts(shim)}


def drained(cluster: Cluster) -> None:
    """Wait until the cluster runs nothing (between runs)."""
    deadline = time.monotonic() + 120
    while cluster.live_jobs():
        if time.monotonic() > deadline:
            raise RuntimeError("jobs of an earlier run are still in the queue")
        time.sleep(0.5)


def table(rows: list[dict[str, object]]) -> str:
    """Wall time and calls per run; ``calls`` is every call that asks the controller."""
    columns = ("sbatch", *SCHEDULER)
    head = f"{'run':<20} {'wall s':>7} " + " ".join(f"{c:>8}" for c in columns)
    lines = [head + f" {'calls':>7} {'in job':>7}"]
    for row in rows:
        calls = sum(int(str(row[c])) for c in columns)
        line = f"{row['run']!s:<20} {float(str(row['wall'])):>7.1f} "
        line += " ".join(f"{row[c]!s:>8}" for c in columns)
        lines.append(line + f" {calls:>7} {row['in job']!s:>7}")
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=3.0, help="aiores's polling floor")
    parser.add_argument("--psij-venv", type=Path, help="reuse this psij-python virtualenv")
    parser.add_argument("--no-psij", action="store_true", help="aiores only")
    args = parser.parse_args()
    why = available()
    if why is not None:
        sys.exit(f"cannot start Slurm here: {why}")
    with tempfile.TemporaryDirectory(prefix="aiores-slurm-bench-") as tmp:
        work = Path(tmp)
        os.chmod(tmp, 0o755)  # the cluster and its jobs read below it
        python = None
        if not args.no_psij:
            python = await asyncio.to_thread(psij_python, args.psij_venv or work / "psij-venv")
        cluster = Cluster(work / "cluster")
        await asyncio.to_thread(cluster.start)
        rows: list[dict[str, object]] = []
        load = [os.getloadavg()[0]]
        try:
            n, interval = args.jobs, args.interval
            for name, run in (("aiores single", aiores_single), ("aiores array", aiores_array)):
                rows.append(await run_aiores(run, cluster, work, name, n, interval))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
                await asyncio.to_thread(drained, cluster)
                load.append(os.getloadavg()[0])
            if python is not None:
                for name, every in (("PSI/J (30 s polls)", 30), (f"PSI/J ({interval:g} s)", 0)):
                    every = every or max(1, round(interval))
                    row = await asyncio.to_thread(run_psij, python, cluster, work, name, n, every)
                    rows.append(row)
                    print(table(rows[-1:]).splitlines()[-1], flush=True)
                    await asyncio.to_thread(drained, cluster)
                    load.append(os.getloadavg()[0])
        finally:
            await asyncio.to_thread(cluster.stop)
    print()
    print(f"{args.jobs} /bin/true jobs, Slurm {CLUSTER_NOTE}; load average (1 min) per run end:")
    print("  " + ", ".join(f"{x:.2f}" for x in load))
    print(table(rows))


CLUSTER_NOTE = "single node, 64 CPUs claimed, on this host"

if __name__ == "__main__":
    asyncio.run(main())
