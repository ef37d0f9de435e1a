"""An elastic pool with revocations against a fixed fleet: the same tasks on sim://.

Starts a sim cloud process of its own (temporary directory). N tasks, each a shell
command sleeping a random 0.1-1 s (seeded), run in one process, in turn:

- pool: ``session.pool("sim://", min=0, max=M)`` and ``pool.map(tasks)``; 5% of the
  first M machines it acquires (at least one; places drawn, seeded) are revoked: they
  boot with the sim's preemption fault (``preempt_after`` 2-15 s after ACTIVE,
  ``preempt_notice`` 2 s), which the pool drains (no new work; work still running at
  the deadline is stopped and run again elsewhere);
- fleet: M machines with ``session.fleet().provision`` (no revocation), then a work
  queue of this program's own: one worker per machine taking the next task.

Every attempt of a task appends ``start <id> <time>`` and, on any exit, ``end <id>
<time>`` to a log on the host (sim machines are processes of this host), and the
task prints its id. Columns: makespan (acquire to last answer), machine-seconds used
(pool: its ``stats().machine_seconds``; fleet: M x the makespan), tasks lost (no
answer with their own id; must be 0), tasks run twice in parallel (two attempts
whose start-end overlap; must be 0; an attempt killed without an end line counts as
open until the next attempt starts, and is counted apart), revocations, requeues,
and the event loop's lag p99 (10 ms ticker). Rounds alternate which goes first; the
last lines give medians, the ratios pool / fleet and the load average::

    .venv/bin/python benchmarks/pool.py [--tasks 2000] [--max 50] [--seed 1]
        [--rounds 1] [--quick]   # --quick: 200 tasks, max 10
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sim_boot import Lag  # type: ignore[import-not-found]  # a script beside this one

import aiores
from aiores import Compute, ComputeDescription
from aiores_sim import start_cloud, stop_cloud

URL = "sim://?boot_delay=0.5-1.5"
#: Share of the pool's machines revoked.
REVOKED = 0.05


@dataclass
class Outcome:
    method: str
    makespan: float
    machine_seconds: float
    lost: int
    twice: int
    unended: int
    revoked: int
    requeued: int
    lag_p99: float


def task_command(log: Path, task: int, seconds: float) -> str:
    # The trap writes the end line however the attempt ends (a stop sends SIGHUP/TERM).
    mark = f"'{log}'"
    return (
        f"trap 'echo \"end {task} $(date +%s.%N)\" >> {mark}' EXIT; "
        f"trap 'exit 143' HUP TERM INT; "
        f'echo "start {task} $(date +%s.%N)" >> {mark}; '
        f"sleep {seconds:.3f}; echo {task}"
    )


def overlaps(log: Path, tasks: int) -> tuple[int, int]:
    """Tasks with two attempts overlapping in time, and attempts without an end line."""
    spans: dict[int, list[list[float]]] = {}
    for line in log.read_text().splitlines():
        kind, task, at = line.split()
        attempts = spans.setdefault(int(task), [])
        if kind == "start":
            attempts.append([float(at), float("inf")])
        else:  # the end of the last attempt still open
            for span in reversed(attempts):
                if span[1] == float("inf"):
                    span[1] = float(at)
                    break
    twice = unended = 0
    for attempts in spans.values():
        attempts.sort()
        unended += sum(1 for s in attempts if s[1] == float("inf"))
        for first, second in itertools.pairwise(attempts):
            end = first[1] if first[1] != float("inf") else second[0]
            if second[0] < end:
                twice += 1
                break
    return twice, unended


def lost(answers: dict[int, str], tasks: int) -> int:
    return sum(1 for t in range(tasks) if answers.get(t, "").strip() != str(t))


async def with_pool(work: Path, durations: Sequence[float], size: int, seed: int) -> Outcome:
    log = work / "pool.log"
    log.touch()
    draw = random.Random(seed)
    answers: dict[int, str] = {}
    lag = Lag()
    lag.start()
    start = time.perf_counter()
    async with aiores.Session() as session:
        mgr = session.manager(URL)
        plain_acquire = mgr.acquire_many

        chosen = set(draw.sample(range(size), math.ceil(REVOKED * size)))
        made = 0

        async def acquire_many(desc: ComputeDescription, count: int) -> list[Compute]:
            """As the manager's, but the machines acquired in ``chosen`` places (5% of
            the first ``size``) boot to be revoked mid-run."""
            nonlocal made
            places = range(made, made + count)
            made += count
            revoked = [p for p in places if p in chosen]
            calls = [plain_acquire(desc, count - len(revoked))] if count > len(revoked) else []
            for _ in revoked:
                after = draw.uniform(2.0, 15.0)
                fault = desc.replace(user_data=f"#sim: preempt_after={after:.1f} preempt_notice=2")
                calls.append(plain_acquire(fault, 1))
            return [vm for vms in await asyncio.gather(*calls) for vm in vms]

        mgr.acquire_many = acquire_many  # type: ignore[method-assign,assignment]
        desc = ComputeDescription(template="tiny", tags={"pool-bench"})
        async with session.pool(mgr, desc, min=0, max=size, tick=0.5) as pool:
            commands = [task_command(log, t, s) for t, s in enumerate(durations)]
            async for index, result in pool.map(commands):
                answers[index] = result.stdout if result.ok else f"failed: {result.error}"
            makespan = time.perf_counter() - start
            stats = pool.stats()
    p99, _ = await lag.stop()
    twice, unended = await asyncio.to_thread(overlaps, log, len(durations))
    return Outcome(
        "pool",
        makespan,
        stats.machine_seconds,
        lost(answers, len(durations)),
        twice,
        unended,
        stats.revoked,
        stats.requeued,
        p99,
    )


async def with_fleet(work: Path, durations: Sequence[float], size: int) -> Outcome:
    log = work / "fleet.log"
    log.touch()
    answers: dict[int, str] = {}
    lag = Lag()
    lag.start()
    start = time.perf_counter()
    async with aiores.Session() as session, session.fleet() as fleet:
        fleet.provision(URL, ComputeDescription(template="tiny"), size, tags="fleet-bench")
        group = await fleet.wait(timeout=600)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for task in range(len(durations)):
            queue.put_nowait(task)

        async def worker(vm: Compute) -> None:
            while not queue.empty():
                task = queue.get_nowait()
                result = await vm.run(task_command(log, task, durations[task]))
                answers[task] = result.stdout if result.ok else f"exit {result.exit_status}"

        async with asyncio.TaskGroup() as workers:
            for vm in group:
                workers.create_task(worker(vm))
        makespan = time.perf_counter() - start
    p99, _ = await lag.stop()
    twice, unended = await asyncio.to_thread(overlaps, log, len(durations))
    return Outcome(
        "fleet",
        makespan,
        size * makespan,
        lost(answers, len(durations)),
        twice,
        unended,
        0,
        0,
        p99,
    )


async def main(tasks: int, size: int, seed: int, rounds: int) -> int:
    load_before = os.getloadavg()
    draw = random.Random(seed)
    durations = [round(draw.uniform(0.1, 1.0), 3) for _ in range(tasks)]
    work = Path(tempfile.mkdtemp(prefix="aiores-pool-bench-"))
    os.environ["AIORES_STATE_DIR"] = str(work / "state")
    os.environ["AIORES_SIM_DIR"] = str(work / "sim")
    outcomes: list[Outcome] = []
    print(
        f"pool benchmark: {tasks} tasks of 0.1-1 s (sum {sum(durations):.0f} s), max {size} "
        f"machines, {REVOKED:.0%} of the pool's revoked, seed {seed}, {os.cpu_count()} CPUs, "
        f"load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}"
    )
    print(
        "| round | method | makespan  | machine-s | lost | twice | unended | revoked "
        "| requeued | lag p99  |"
    )
    print(
        "|-------|--------|-----------|-----------|------|-------|---------|---------"
        "|----------|----------|"
    )
    await start_cloud(work / "sim")
    try:
        for r in range(rounds):
            order = ["pool", "fleet"] if r % 2 == 0 else ["fleet", "pool"]
            for method in order:
                rundir = work / f"round{r}-{method}"
                rundir.mkdir()
                if method == "pool":
                    outcome = await with_pool(rundir, durations, size, seed + r)
                else:
                    outcome = await with_fleet(rundir, durations, size)
                outcomes.append(outcome)
                o = outcome
                print(
                    f"| {r + 1:5d} | {o.method:<6} | {o.makespan:7.2f} s "
                    f"| {o.machine_seconds:9.0f} "
                    f"| {o.lost:4d} | {o.twice:5d} | {o.unended:7d} | {o.revoked:7d} "
                    f"| {o.requeued:8d} | {o.lag_p99 * 1000:5.0f} ms |",
                    flush=True,
                )
    finally:
        await stop_cloud(work / "sim")
        await asyncio.to_thread(shutil.rmtree, work, True)

    def median(method: str, field: str) -> float:
        return float(statistics.median(getattr(o, field) for o in outcomes if o.method == method))

    for field, what in (("makespan", "makespan"), ("machine_seconds", "machine-seconds")):
        pool, fleet = median("pool", field), median("fleet", field)
        spread = [getattr(o, field) for o in outcomes if o.method == "pool"]
        print(
            f"{what}: pool {pool:.1f} (range {min(spread):.1f}-{max(spread):.1f}), "
            f"fleet {fleet:.1f}, ratio pool / fleet {pool / fleet:.2f}"
        )
    load_after = os.getloadavg()
    print(
        "load average before: {:.2f} {:.2f} {:.2f}, after: {:.2f} {:.2f} {:.2f}".format(
            *load_before, *load_after
        )
    )
    bad = sum(o.lost + o.twice for o in outcomes)
    return 1 if bad else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--max", type=int, default=50, help="the pool's max, the fleet's size")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="200 tasks, max 10")
    args = parser.parse_args()
    tasks, size = (200, 10) if args.quick else (args.tasks, args.max)
    sys.exit(asyncio.run(main(tasks, size, args.seed, args.rounds)))
