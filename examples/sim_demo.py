"""Simulated VMs with aiores, top to bottom: boot two tagged groups, fan out, tear down.

The same as ``aiores demo``, without the progress display. Run it with:

    python examples/sim_demo.py

The simulated cloud runs in a process of its own, started on demand; if this program
started it, it stops it at the end (VMs otherwise outlive the program that asked).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import aiores
from aiores import ComputeDescription, ResourceState
from aiores_sim import cloud_dir, cloud_pid, stop_cloud


async def main() -> None:
    started = time.perf_counter()
    directory = cloud_dir(aiores.state_dir())
    cloud_was_running = await cloud_pid(directory) is not None
    try:
        # No credentials to set up: each simulated VM authorizes an aiores-managed key
        # (made on first use) and names it, with its host key, for ssh:// to use.
        async with aiores.Session() as session:
            # One manager; boot delays of 0.5 to 2 s. The cloud process starts on demand.
            mgr = session.manager("sim://?boot_delay=0.5-2")

            # Two tagged groups, acquired at once; each call returns as soon as the cloud
            # accepted its VMs (PENDING, with their address and host key already known).
            # Both run to their end, so that if one fails the other's VMs are destroyed.
            web, db = await asyncio.gather(
                mgr.acquire_many(ComputeDescription(template="small", tags={"web"}), 12),
                mgr.acquire_many(ComputeDescription(template="medium", tags={"db"}), 8),
                return_exceptions=True,
            )
            vms = [vm for group in (web, db) if isinstance(group, list) for vm in group]
            try:
                if isinstance(web, BaseException):
                    raise web
                if isinstance(db, BaseException):
                    raise db
                # ACTIVE means usable: SSH answers, with the host key the cloud published.
                await asyncio.gather(*(vm.wait(ResourceState.ACTIVE, timeout=60) for vm in vms))
                print(f"{len(vms)} VMs up after {time.perf_counter() - started:.1f} s")

                # A file and a command to each group, all hosts at once.
                with tempfile.TemporaryDirectory() as tmp:
                    page = Path(tmp, "index.html")
                    await asyncio.to_thread(page.write_text, "<h1>hello from aiores</h1>\n")
                    await asyncio.gather(*(vm.put(page, "index.html") for vm in web))
                results = await asyncio.gather(
                    *(vm.run("wc -c < index.html") for vm in web),
                    *(vm.run(["uname", "-s"]) for vm in db),
                )
                for vm, result in zip(vms, results, strict=True):
                    group = ",".join(sorted(vm.tags))
                    print(
                        f"{group:4} {vm.native_id}  exit {result.exit_status}  "
                        f"{result.stdout.strip()}"
                    )
            finally:
                # Destroying ends each VM: its processes are killed and its disk removed.
                # Bounded, and carried out even when the program is being cancelled.
                async with asyncio.timeout(60):
                    await mgr.destroy(vms)
        print(f"all {len(vms)} destroyed; {time.perf_counter() - started:.1f} s in all")
    finally:
        if not cloud_was_running:
            async with asyncio.timeout(60):
                await stop_cloud(directory)


if __name__ == "__main__":
    asyncio.run(main())
