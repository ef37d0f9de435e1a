"""PSI/J's side of benchmarks/slurm_jobs.py: N ``/bin/true`` jobs through its Slurm executor.

Runs under the psij-python virtualenv that :mod:`benchmarks.peers.psij_venv` makes (not
aiores's): ``python psij_slurm.py N INTERVAL WORKDIR``. It submits the N jobs one by
one (PSI/J's ``submit`` runs sbatch and returns), waits for all, and prints one line of
JSON: ``{"jobs": N, "submitted": s, "done": s, "states": {...}}`` (seconds from start).
The caller sets PATH (a counting shim first), SLURM_CONF and a temporary HOME.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

# psij lives in the peer's own virtualenv, not in aiores's (where mypy runs).
from psij import Job, JobExecutor, JobSpec  # type: ignore[import-not-found]
from psij.executors.batch.slurm import SlurmExecutorConfig  # type: ignore[import-not-found]


def main(count: int, interval: int, workdir: Path) -> None:
    config = SlurmExecutorConfig(
        work_directory=workdir, queue_polling_interval=interval, initial_queue_polling_delay=2
    )
    executor = JobExecutor.get_instance("slurm", config=config)
    started = time.monotonic()
    jobs = []
    for _ in range(count):
        job = Job(JobSpec(executable="/bin/true"))
        executor.submit(job)
        jobs.append(job)
    submitted = time.monotonic() - started
    states: dict[str, int] = {}
    for job in jobs:
        status = job.wait()
        name = str(status.state if status is not None else None)
        states[name] = states.get(name, 0) + 1
    done = time.monotonic() - started
    print(json.dumps({"jobs": count, "submitted": submitted, "done": done, "states": states}))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
