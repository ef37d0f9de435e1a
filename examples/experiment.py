"""A tagged experiment in the manner of precip: provision, bootstrap, run by role, fetch.

Run it with:

    python examples/experiment.py [RESULTS_DIR] [--workers N] [--cloud CLOUD_URL]

Boots N "worker" machines (3 by default) and one "coordinator" on the simulated
cloud (CLOUD_URL: ``sim://`` by default, e.g. ``"sim://?boot_delay=0.1"``), puts a
set-up script on every machine and runs it, runs each role's command, fetches each
machine's result file into RESULTS_DIR (``experiment-results`` by default), prints
a summary and destroys every machine: also when a step fails or on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import aiores
from aiores import ComputeDescription

#: The bootstrap every machine runs: its own work directory, and a note of its role.
SETUP = """\
set -eu
mkdir -p experiment
echo "$1" > experiment/role
"""

#: Each role's command (run in the machine's home directory, as every command is).
#: Workers measure something (and say where they ran); the coordinator records whom
#: it coordinates.
COMMANDS = {
    "worker": (
        "cd experiment && "
        "awk 'BEGIN { s = 0; for (i = 1; i <= 100000; i++) s += i % 7; print \"sum\", s }'"
        ' > result.txt && echo "in $PWD" >> result.txt'
    ),
    "coordinator": 'cd experiment && echo "coordinating $WORKERS" > result.txt',
}


async def experiment(cloud: str, workers: int, results: Path) -> None:
    started = time.perf_counter()
    async with aiores.Session() as session, session.fleet() as fleet:
        desc = ComputeDescription(template="small")
        fleet.provision(cloud, desc, count=workers, tags={"worker"})
        fleet.provision(cloud, desc.replace(template="medium"), count=1, tags={"coordinator"})
        machines = await fleet.wait(timeout=120)
        print(f"{len(machines)} machines ACTIVE after {time.perf_counter() - started:.1f} s")

        # Bootstrap: the script to every machine, then each runs it with its role.
        # (Group.copy_and_run does both in one call; here they are two steps.)
        script = results / "setup.sh"
        await asyncio.to_thread(script.write_text, SETUP)
        await fleet.select().put(script, "setup.sh", timeout=30)
        for role in COMMANDS:
            await fleet.select(role).run(["sh", "setup.sh", role], timeout=30)
        print("bootstrapped")

        # The experiment: each role's command on all its machines at once, the workers
        # first. A failure on any machine raises FanOutError (once every machine of the
        # role has finished), which ends the experiment.
        env = {"WORKERS": " ".join(vm.id for vm in fleet.list("worker"))}
        for role, command in COMMANDS.items():
            await fleet.select(role).run(command, env=env, timeout=60)

        # Fetch each machine's result file: with several machines, a group's get puts
        # each copy beside the local name, suffixed with the machine's id (local_path).
        print("results:")
        for role in COMMANDS:
            group = fleet.select(role)
            target = results / f"{role}.txt"
            await group.get("experiment/result.txt", target, timeout=30)
            for vm in group:
                path = group.local_path(target, vm)
                text = await asyncio.to_thread(path.read_text)
                print(f"  {role:11}  {vm.id}  {path.name}: {'; '.join(text.splitlines())}")
    # Here every machine is destroyed (also on failure or cancellation).
    print(f"{workers + 1} machines destroyed; {time.perf_counter() - started:.1f} s in all")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", type=Path, default=Path("experiment-results"))
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--cloud", default="sim://")
    args = parser.parse_args()
    args.results.mkdir(parents=True, exist_ok=True)
    try:
        asyncio.run(experiment(args.cloud, args.workers, args.results))
    except aiores.AioresError as exc:  # the fleet was torn down before this
        print(f"experiment failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; the fleet's teardown ran on the way out", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
