"""The cost of sim VM isolation: N VMs with ``AIORES_SIM_ISOLATION=none`` vs ``namespaces``.

Each round starts a sim cloud process of its own with one mode, then in one session:
acquire N VMs and wait until all are ACTIVE (boot delay 0.05 s), measure what the
cloud's process tree holds (processes, their summed PSS from ``smaps_rollup``, the
cloud's open file descriptors), run ``true`` on all (one ``Group.run``), destroy
them all, stop the cloud. The modes alternate (none, namespaces, namespaces, none,
...); medians and spreads (min-max) per mode are printed, with the load average
before and after. Needs root for namespaces (else the round is refused)::

    .venv/bin/python benchmarks/sim_isolation.py [--vms 1000] [--rounds 2] [--modes ...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import aiores
from aiores import ComputeDescription, Group, ResourceState
from aiores_sim import cloud_pid, start_cloud, stop_cloud
from aiores_sim._procs import descendants, scan

MODES = ("none", "namespaces")


def tree(pid: int) -> list[int]:
    """The cloud process and every live descendant of it."""
    table = scan()
    return [pid, *(p for p in descendants(table, pid) if not table[p].zombie)]


def pss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            continue
    return total


async def one_round(mode: str, count: int) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="aiores-sim-iso-"))
    os.environ["AIORES_STATE_DIR"] = str(work / "state")
    os.environ["AIORES_SIM_DIR"] = str(work / "sim")
    os.environ["AIORES_SIM_ISOLATION"] = mode
    directory = work / "sim"
    figures: dict[str, float] = {}
    try:
        await start_cloud(directory)
        pid = await cloud_pid(directory)
        assert pid is not None
        idle = tree(pid)
        idle_pss = pss_kib(idle)
        async with aiores.Session() as session:
            mgr = session.manager("sim://?boot_delay=0.05")
            start = time.perf_counter()
            vms = await mgr.acquire_many(ComputeDescription(), count)
            await asyncio.gather(*(vm.wait(ResourceState.ACTIVE, timeout=600) for vm in vms))
            figures["active_s"] = time.perf_counter() - start
            pids = tree(pid)
            figures["processes"] = len(pids)
            figures["pss_kib_per_vm"] = (pss_kib(pids) - idle_pss) / count
            figures["cloud_fds"] = len(os.listdir(f"/proc/{pid}/fd"))
            computes = [vm for vm in vms if isinstance(vm, aiores.Compute)]
            start = time.perf_counter()
            results = await Group(computes).run("true", check=True)
            figures["true_s"] = time.perf_counter() - start
            assert all(r.exit_status == 0 for r in results)
            start = time.perf_counter()
            await mgr.destroy(vms)
            figures["destroy_s"] = time.perf_counter() - start
            figures["left"] = len(tree(pid)) - len(idle)
    finally:
        await stop_cloud(directory)
        shutil.rmtree(work, ignore_errors=True)
    return figures


async def main(count: int, rounds: int, modes: tuple[str, ...] = MODES) -> None:
    load_before = os.getloadavg()
    seen: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    order = [modes if r % 2 == 0 else modes[::-1] for r in range(rounds)]
    for modes in order:
        for mode in modes:
            figures = await one_round(mode, count)
            seen[mode].append(figures)
            print(f"{mode:>10}: " + ", ".join(f"{k}={v:.2f}" for k, v in figures.items()))
    print(f"\n{count} VMs, {rounds} rounds per mode: median (min-max)")
    for key in seen[modes[0]][0]:
        cells = []
        for mode in modes:
            values = [f[key] for f in seen[mode]]
            cells.append(
                f"{mode} {statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"
            )
        print(f"  {key:>15}: " + " | ".join(cells))
    print(f"load average before {load_before}, after {os.getloadavg()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--modes", nargs="+", choices=MODES, default=list(MODES), help="(default: both)"
    )
    args = parser.parse_args()
    asyncio.run(main(args.vms, args.rounds, tuple(args.modes)))
