"""Submits cancelled at random points, many times, on OpenSSH and on a sim:// VM.

The suite runs 40 trials per backend (``tests/ssh/test_cancel.py``,
``tests/sim/test_cancel.py``); this program runs as many as asked with the same
checks (see :mod:`tests.cancel_trials`): it starts its own OpenSSH sshd (logging in as
the ``aiores-test`` user, made if missing: run it as root) and its own sim cloud, and
prints, per backend, how many submits were cancelled inside, how many jobs were left
running and how the journal closed the submit intents. Exits 1 if any job was left
running or any intent left pending::

    .venv/bin/python tests/stress/cancel_submit.py [--trials 200] [--seed 2024]
        [--backend ssh --backend sim]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))

import aiores  # noqa: E402
from aiores_sim.testing import start_sim_cloud  # noqa: E402
from tests.cancel_trials import Trials, cancel_submits  # noqa: E402
from tests.sim.conftest import booted  # noqa: E402
from tests.ssh.servers import PERMISSIVE, Keys, Sshd, private_dir, remove_dir  # noqa: E402


def progress(i: int) -> None:
    if (i + 1) % 20 == 0:
        print(f"  {i + 1} trials", flush=True)


async def on_openssh(trials: int, seed: int, work: Path) -> Trials:
    keys = Keys.make(private_dir("aiores-stress-sshd-"))
    sshd = Sshd(keys, "stress", PERMISSIVE)
    await asyncio.to_thread(sshd.start)
    try:
        async with aiores.Session(
            journal=work / "ssh-journal.db", contexts=[sshd.context()]
        ) as session:
            service = session.job_service(sshd.url())
            return await cancel_submits(
                session, service, trials=trials, seed=seed, on_trial=progress
            )
    finally:
        await asyncio.to_thread(sshd.stop)
        remove_dir(keys.directory)


async def on_sim(trials: int, seed: int, work: Path) -> Trials:
    state = work / "sim-state"
    os.environ["AIORES_STATE_DIR"] = str(state)
    cloud = await asyncio.to_thread(start_sim_cloud, work / "sim", watch_pid=os.getpid())
    os.environ["AIORES_SIM_DIR"] = str(cloud.directory)
    try:
        async with booted(1, state_dir=state) as (session, [vm]):
            return await cancel_submits(
                session, vm.job_service(), trials=trials, seed=seed, on_trial=progress
            )
    finally:
        await asyncio.to_thread(cloud.stop)
        left = cloud.leftovers()
        if left:
            print(f"  the sim cloud left: {left}")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--backend", action="append", choices=["ssh", "sim"])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="aiores-stress-"))
    failed = False
    try:
        for backend in args.backend or ["ssh", "sim"]:
            print(f"{backend}: {args.trials} trials", flush=True)
            run = on_openssh if backend == "ssh" else on_sim
            found = await run(args.trials, args.seed, work)
            print(f"{backend}: {found}", flush=True)
            failed |= bool(found.left_running) or "pending" in found.statuses
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
