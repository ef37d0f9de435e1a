"""Benchmark: N ``/bin/true`` container jobs through ``docker://`` against plain aiodocker.

Each round runs both, in alternating order, in this one process, against one Docker
daemon (``$DOCKER_HOST``, or ``--docker-host``) and one image that has ``/bin/true``:

- raw: a minimal aiodocker script: for each job ``containers.create``, ``start``,
  ``wait`` and ``delete``, all N at once with ``asyncio.gather``;
- aiores: ``session.job_service("docker://")``, N ``submit`` calls at once, then
  ``job.wait()`` and ``job.reap()`` for each (a journalled Session, as users run it;
  the end of each container comes from the daemon's event stream, then its output is
  read).

It prints the wall time of each run, the event loop's lag (p99 lateness of a 10 ms
ticker running alongside) and the median ratio aiores / raw (goal: <= 1.15).

A private podman service to run it against (as tests/docker/conftest.py starts one)::

    CONTAINERS_CONF=<file with [containers] default_ulimits = [] and netns = "none">
    podman --runtime runc --root R --runroot RR system service --time=0 unix:///tmp/p.sock &
    DOCKER_HOST=unix:///tmp/p.sock .venv/bin/python benchmarks/container_jobs.py \\
        --image localhost/aiores-test:1 --jobs 200 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiodocker

import aiores

GOAL = 1.15
TICK = 0.010


def raw_run(image: str) -> Callable[[int], Awaitable[None]]:
    async def run(n: int) -> None:
        async with aiodocker.Docker() as docker:

            async def one() -> None:
                container = await docker.containers.create(
                    {"Image": image, "Entrypoint": ["/bin/true"], "Cmd": []}
                )
                await container.start()
                answer = await container.wait()
                assert answer["StatusCode"] == 0, answer
                await container.delete()

            await asyncio.gather(*(one() for _ in range(n)))

    return run


def aiores_run(journal: Path, image: str) -> Callable[[int], Awaitable[None]]:
    async def run(n: int) -> None:
        async with aiores.Session(journal=journal) as session:
            js = session.job_service("docker://")
            desc = aiores.JobDescription(executable="/bin/true", category=image)

            async def one() -> None:
                job = await js.submit(desc)
                assert await job.wait() is aiores.JobState.DONE, job.state
                await job.reap()

            await asyncio.gather(*(one() for _ in range(n)))

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


async def main(n: int, rounds: int, image: str) -> int:
    with tempfile.TemporaryDirectory(prefix="aiores-bench-") as tmp:
        os.environ["AIORES_STATE_DIR"] = tmp
        methods: dict[str, Callable[[int], Awaitable[None]]] = {
            "raw": raw_run(image),
            "aiores": aiores_run(Path(tmp) / "journal.sqlite", image),
        }
        await methods["raw"](min(n, 5))  # warm up: imports, the daemon's caches
        walls: dict[str, list[float]] = {name: [] for name in methods}
        print(f"{n} /bin/true container jobs, {rounds} rounds, load {os.getloadavg()}")
        print(f"{'round':>5}  {'method':<7} {'wall s':>8} {'jobs/s':>8} {'lag p99 ms':>11}")
        for r in range(rounds):
            order = list(methods) if r % 2 == 0 else list(reversed(methods))
            for name in order:
                wall, lag = await measure(methods[name], n)
                walls[name].append(wall)
                print(f"{r + 1:>5}  {name:<7} {wall:8.3f} {n / wall:8.1f} {lag * 1000:11.1f}")
    ratio = statistics.median(walls["aiores"]) / statistics.median(walls["raw"])
    verdict = "ok" if ratio <= GOAL else "OVER GOAL"
    print(
        f"median wall: raw {statistics.median(walls['raw']):.3f} s, "
        f"aiores {statistics.median(walls['aiores']):.3f} s; "
        f"ratio aiores/raw {ratio:.2f} (goal <= {GOAL}: {verdict}); load {os.getloadavg()}"
    )
    return 0 if ratio <= GOAL else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200, help="jobs per run (default 200)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both (default 3)")
    parser.add_argument(
        "--image", default="localhost/aiores-test:1", help="an image with /bin/true"
    )
    parser.add_argument("--docker-host", help="the daemon (default: $DOCKER_HOST)")
    args = parser.parse_args()
    if args.docker_host:
        os.environ["DOCKER_HOST"] = args.docker_host
    sys.exit(asyncio.run(main(args.jobs, args.rounds, args.image)))
