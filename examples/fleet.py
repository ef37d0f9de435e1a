"""The README's Fleet API on the simulated cloud: tagged groups, a command, a file.

Run it with:

    python examples/fleet.py [CLOUD_URL]

CLOUD_URL is ``sim://`` by default; its query sets the simulated faults, e.g.
``"sim://?boot_delay=0.1"`` for quick boots or ``"sim://?boot_failure=0.3"`` to see
failed boots reported. No cloud account is needed: each sim VM is an SSH server on
this machine, run by a cloud process that starts on demand and stops by itself after
ten idle minutes (or at once with ``aiores sim stop``).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import aiores
from aiores import ComputeDescription


async def main(cloud: str) -> None:
    started = time.perf_counter()
    # Leaving this block destroys every machine the fleet booted: also when a step
    # raises or the program is cancelled (Ctrl-C), shielded and bounded.
    async with aiores.Session() as session, session.fleet() as fleet:
        desc = ComputeDescription(image="sim-linux", template="small")
        # provision() returns at once: both groups boot together, in the background.
        fleet.provision(cloud, desc, count=3, tags={"web"})
        fleet.provision(cloud, desc.replace(template="medium"), count=2, tags={"db"})

        # The barrier: every machine ACTIVE (SSH answers, with the host key the cloud
        # published), else a FanOutError that names each machine that failed to boot.
        machines = await fleet.wait(timeout=120)
        print(f"{len(machines)} machines ACTIVE after {time.perf_counter() - started:.1f} s")

        # A file to one group: one copy per machine, all at once.
        web = fleet.select("web")
        with tempfile.TemporaryDirectory() as tmp:
            page = Path(tmp, "index.html")
            await asyncio.to_thread(page.write_text, "<h1>hello from aiores</h1>\n")
            await web.put(page, "index.html", timeout=30)

        # A command per group. check=False: a machine that failed gets a result saying
        # so (exit_status, or error) instead of raising; none is ever dropped.
        for tag, command in (("web", "wc -c < index.html"), ("db", "uname -s")):
            result = await fleet.select(tag).run(command, timeout=30, check=False)
            for r in result:
                said = r.stdout.strip() if r.error is None else repr(r.error)
                print(f"{tag:3}  {r.host}  exit {r.exit_status}  {said}")
            print(f"{tag:3}  {len(result) - len(result.failed)}/{len(result)} ok")
    print(f"all destroyed; {time.perf_counter() - started:.1f} s in all")


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "sim://"))
    except aiores.AioresError as exc:  # one line, not a traceback
        sys.exit(f"fleet.py: {exc}")
