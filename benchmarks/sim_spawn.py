"""Starting a command in an isolated sim VM: three ways, from a large process.

One VM's machine is made by the cloud's fork server; then ``/bin/true`` is started
in it, and waited for, ``--count`` times per way, the ways alternating in rounds:

- ``forkserver``: what the cloud does (:class:`aiores_sim._spawner.Spawner`: the
  small server joins the VM and forks once);
- ``nsenter``: ``nsenter --target PID --mount --uts --pid --root --wd -- true``
  spawned by asyncio with no pre-exec code (CPython can vfork), nsenter forking
  once more for the PID namespace (its child is no process-group leader the caller
  could signal before nsenter itself has forked: a race the cloud would have to
  handle);
- ``preexec``: the former way, a pre-exec hook in the big process's own spawn
  (:func:`aiores_sim._isolation.enter`: CPython forks the whole process).

The process carries ``--ballast`` MiB of touched heap, as a cloud with many VMs
does. Prints the median and spread (min-max) of milliseconds per command (start to
exit) per way, and the load average before and after. Needs root::

    .venv/bin/python benchmarks/sim_spawn.py [--count 100] [--rounds 3] [--ballast 400]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiores_sim._isolation import _MACHINE, Holder, enter
from aiores_sim._spawner import Spawner

ENV = {"PATH": os.environ.get("PATH", os.defpath)}


async def by_forkserver(spawner: Spawner, init: int) -> None:
    command = await spawner.spawn(init, ["/bin/true"], ENV, "/")
    for stream in (command.stdout, command.stderr):
        assert stream is not None
        await stream.read()
    assert command.stdin is not None
    command.stdin.close()
    assert await command.wait() == 0


async def by_nsenter(init: int) -> None:
    argv = ["nsenter", "--target", str(init), "--mount", "--uts", "--pid", "--root", "--wd"]
    process = await asyncio.create_subprocess_exec(
        *argv, "--", "/bin/true", env=ENV, start_new_session=True
    )
    assert await process.wait() == 0


async def by_preexec(holder: Holder) -> None:
    process = await asyncio.create_subprocess_exec(
        "/bin/true", env=ENV, preexec_fn=enter(holder, "/"), start_new_session=True
    )
    assert await process.wait() == 0


async def timed(count: int, one: Callable[[], Awaitable[None]]) -> float:
    """Milliseconds per command, ``count`` commands one after another."""
    start = time.perf_counter()
    for _ in range(count):
        await one()
    return (time.perf_counter() - start) * 1000 / count


async def main(count: int, rounds: int, ballast_mib: int) -> None:
    load_before = os.getloadavg()
    ballast = bytearray(ballast_mib << 20)
    for offset in range(0, len(ballast), 4096):
        ballast[offset] = 1  # touched: the pages are the process's own
    owned: set[asyncio.Task[None]] = set()
    spawner = Spawner()
    await spawner.start(dict(ENV), lambda coro, what: owned.add(asyncio.ensure_future(coro)))
    disk = Path(tempfile.mkdtemp(prefix="aiores-sim-spawn-"))
    try:
        init, ended = await spawner.holder(disk, _MACHINE, ["vm-spawn", str(disk), ""], ENV)
        holder = Holder(init, False, ended=ended)
        ways: dict[str, Callable[[], Awaitable[None]]] = {
            "forkserver": lambda: by_forkserver(spawner, init),
            "nsenter": lambda: by_nsenter(init),
            "preexec": lambda: by_preexec(holder),
        }
        seen: dict[str, list[float]] = {name: [] for name in ways}
        names = list(ways)
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                seen[name].append(await timed(count, ways[name]))
        holder.kill()
        await holder.wait()
    finally:
        await spawner.close()
        for task in owned:
            task.cancel()
        await asyncio.gather(*owned, return_exceptions=True)
        os.chmod(disk / ".sim" / "work" / "work", 0o700)
        shutil.rmtree(disk, ignore_errors=True)
    print(
        f"/bin/true in an isolated VM, {count} per round, {rounds} rounds, {ballast_mib} MiB heap"
    )
    for name, values in seen.items():
        print(
            f"  {name:>10}: {statistics.median(values):6.2f} ms per command"
            f" ({min(values):.2f}-{max(values):.2f})"
        )
    print(f"load average before {load_before}, after {os.getloadavg()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ballast", type=int, default=400, help="MiB of heap")
    args = parser.parse_args()
    asyncio.run(main(args.count, args.rounds, args.ballast))
