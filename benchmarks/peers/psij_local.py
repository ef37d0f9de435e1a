"""PSI/J's side of ``local_side.py``: N ``/bin/true`` through its ``local`` executor.

Runs under the psij-python virtualenv (``venvs.py``): ``python psij_local.py N``.
Submits the N jobs one by one (``submit`` starts the process), waits for all, prints
one line of JSON: ``{"wall": s, "cpu": s, "ok": jobs COMPLETED}`` (CPU:
``time.process_time``, all threads of this process, from after the imports).
"""

from __future__ import annotations

import json
import sys
import time

# psij lives in the peer's own virtualenv, not in aiores's (where mypy runs).
from psij import Job, JobExecutor, JobSpec  # type: ignore[import-not-found]


def main(n: int) -> None:
    executor = JobExecutor.get_instance("local")
    cpu, wall = time.process_time(), time.perf_counter()
    jobs = []
    for _ in range(n):
        job = Job(JobSpec(executable="/bin/true"))
        executor.submit(job)
        jobs.append(job)
    ok = 0
    for job in jobs:
        status = job.wait()
        ok += status is not None and str(status.state) == "COMPLETED"
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({"wall": wall, "cpu": cpu, "ok": ok}))


if __name__ == "__main__":
    main(int(sys.argv[1]))
