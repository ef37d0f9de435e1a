"""radical.saga's side of ``local_side.py``: N ``/bin/true`` through ``fork://localhost``.

Runs under the radical.saga virtualenv (``venvs.py``): ``python saga_local.py N``.
One ``job.Service``, N ``create_job`` + ``run`` one by one, then ``wait`` on all;
prints one line of JSON: ``{"wall": s, "cpu": s, "ok": jobs DONE}`` (CPU:
``time.process_time``, all threads of this process, from after the service started).
"""

from __future__ import annotations

import json
import sys
import time

# radical.saga lives in the peer's own virtualenv, not in aiores's (where mypy runs).
import radical.saga as rs  # type: ignore[import-not-found]


def main(n: int) -> None:
    service = rs.job.Service("fork://localhost")
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        jobs = []
        for _ in range(n):
            desc = rs.job.Description()
            desc.executable = "/bin/true"
            job = service.create_job(desc)
            job.run()
            jobs.append(job)
        for job in jobs:
            job.wait()
        ok = sum(job.state == rs.job.DONE for job in jobs)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        service.close()
    print(json.dumps({"wall": wall, "cpu": cpu, "ok": ok}))


if __name__ == "__main__":
    main(int(sys.argv[1]))
