"""Benchmark: N ``/bin/true`` jobs through ``local://`` against raw asyncio subprocesses.

Each round runs both, in alternating order, in this one process:

- raw: ``asyncio.create_subprocess_exec("/bin/true", stdout=PIPE, stderr=PIPE)`` then
  ``communicate()``, all N at once with ``asyncio.gather``;
- aiores: ``session.job_service("local://")``, N ``submit`` calls at once with
  ``asyncio.gather``, then ``job.wait()`` for all (a journalled Session, as users run it).

It prints the wall time of each run, the event loop's lag (p99 lateness of a 10 ms
ticker running alongside), the process's peak RSS so far, and the median ratio
aiores / raw (goal: <= 1.25).

    .venv/bin/python benchmarks/local_jobs.py --jobs 1000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiores

GOAL = 1.25
TICK = 0.010


async def raw(n: int) -> None:
    async def one() -> None:
        proc = await asyncio.create_subprocess_exec(
            "/bin/true", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        await proc.communicate()
        assert proc.returncode == 0

    await asyncio.gather(*(one() for _ in range(n)))


def aiores_run(journal: Path) -> Callable[[int], Awaitable[None]]:
    async def run(n: int) -> None:
        async with aiores.Session(journal=journal) as session:
            js = session.job_service("local://")
            desc = aiores.JobDescription(executable="/bin/true")
            jobs = await asyncio.gather(*(js.submit(desc) for _ in range(n)))
            states = await asyncio.gather(*(job.wait() for job in jobs))
            assert all(state is aiores.JobState.DONE for state in states), states

    return run


async def measure(run: Callable[[int], Awaitable[None]], n: int) -> tuple[float, float]:
    """Wall seconds of ``run(n)`` and the p99 lateness (s) of a 10 ms ticker meanwhile."""
    loop = asyncio.get_running_loop()
    lateness: list[float] = []

    async def ticker() -> None:
        while True:
            due = loop.time() + TICK
            await asyncio.sleep(TICK)
            lateness.append(loop.time() - due)

    tick = asyncio.ensure_future(ticker())
    await asyncio.sleep(0)  # let the ticker start
    start = time.perf_counter()
    try:
        await run(n)
    finally:
        wall = time.perf_counter() - start
        tick.cancel()
    p99 = statistics.quantiles(lateness, n=100)[98] if len(lateness) >= 2 else float("nan")
    return wall, p99


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def raise_fd_limit(n: int) -> None:
    """Each running job holds up to 3 descriptors (raw asyncio: about as many)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * n + 256))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


async def main(n: int, rounds: int) -> int:
    raise_fd_limit(n)
    with tempfile.TemporaryDirectory(prefix="aiores-bench-") as tmp:
        # Job records (one directory a job, kept until reaped) go there too.
        os.environ["AIORES_STATE_DIR"] = tmp
        methods: dict[str, Callable[[int], Awaitable[None]]] = {
            "raw": raw,
            "aiores": aiores_run(Path(tmp) / "journal.sqlite"),
        }
        await raw(min(n, 50))  # warm up: imports, the child watcher, the page cache
        walls: dict[str, list[float]] = {name: [] for name in methods}
        print(f"{n} /bin/true jobs, {rounds} rounds, python {sys.version.split()[0]}")
        print(
            f"{'round':>5}  {'method':<7} {'wall s':>8} {'jobs/s':>8} {'lag p99 ms':>11} "
            f"{'peak RSS MiB':>13}"
        )
        for r in range(rounds):
            order = list(methods) if r % 2 == 0 else list(reversed(methods))
            for name in order:
                wall, lag = await measure(methods[name], n)
                walls[name].append(wall)
                print(
                    f"{r + 1:>5}  {name:<7} {wall:8.3f} {n / wall:8.0f} {lag * 1000:11.1f} "
                    f"{peak_rss_mib():13.1f}"
                )
    ratio = statistics.median(walls["aiores"]) / statistics.median(walls["raw"])
    verdict = "ok" if ratio <= GOAL else "OVER GOAL"
    print(
        f"median wall: raw {statistics.median(walls['raw']):.3f} s, "
        f"aiores {statistics.median(walls['aiores']):.3f} s; "
        f"ratio aiores/raw {ratio:.2f} (goal <= {GOAL}: {verdict})"
    )
    return 0 if ratio <= GOAL else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000, help="jobs per run (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both (default 3)")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.jobs, args.rounds)))
