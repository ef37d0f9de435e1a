"""The raw asyncssh and aiores sides of ``ssh_side.py``: ``python ssh_own.py METHOD TARGETS``.

Runs under aiores's own virtualenv. ``TARGETS`` is the JSON file ``ssh_side.py``
writes (``key``, ``known_hosts``, ``user``, ``ports``: one SSH endpoint on 127.0.0.1
per port). Both verify host keys against that known_hosts file.

- ``raw``: one ``SSHClientConnectionOptions`` (known_hosts and key read once),
  ``connect`` (at most 64 handshakes at a time, as aiores's pool) + ``run("true")``
  on every port at once (cold), then ``run("true")`` again on the open connections
  (warm);
- ``aiores``: one ``Session`` with an ``SSHContext``, ``session.command_runner(url)``
  per port (made before timing), ``run("true")`` on all at once (cold: new pooled
  connections), then again on the pool (warm).

Prints one line of JSON: ``{"cold": {"wall", "cpu"}, "warm": {...}, "ok": N,
"rss_delta": bytes}`` (CPU: ``time.process_time``, all threads of this process;
``rss_delta``: resident memory with all connections open minus before the cold run).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncssh

import aiores

HANDSHAKES = 64  # aiores_ssh's pool bound on handshakes in flight


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def measure(fn: Callable[[], Awaitable[int]]) -> tuple[dict[str, float], int]:
    cpu, wall = time.process_time(), time.perf_counter()
    ok = await fn()
    return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}, ok


async def raw(targets: dict[str, Any]) -> dict[str, Any]:
    options = await asyncssh.SSHClientConnectionOptions.construct(
        known_hosts=targets["known_hosts"],
        client_keys=[targets["key"]],
        config=[],
        username=targets["user"],
    )
    conns: list[asyncssh.SSHClientConnection] = []
    gate = asyncio.Semaphore(HANDSHAKES)

    async def one(port: int) -> bool:
        async with gate:
            conn = await asyncssh.connect("127.0.0.1", port, options=options)
        conns.append(conn)
        result = await conn.run("true")
        return result.exit_status == 0

    async def cold() -> int:
        return sum(await asyncio.gather(*(one(port) for port in targets["ports"])))

    async def warm() -> int:
        done = await asyncio.gather(*(conn.run("true") for conn in conns))
        return sum(r.exit_status == 0 for r in done)

    before = rss()
    try:
        cold_s, ok = await measure(cold)
        warm_s, ok_warm = await measure(warm)
        grown = rss() - before
    finally:
        for conn in conns:
            conn.close()
        await asyncio.gather(*(conn.wait_closed() for conn in conns))
    return {"cold": cold_s, "warm": warm_s, "ok": min(ok, ok_warm), "rss_delta": grown}


async def via_aiores(targets: dict[str, Any]) -> dict[str, Any]:
    ctx = aiores.SSHContext(
        key_files=[targets["key"]], known_hosts=[targets["known_hosts"]], config=[]
    )
    async with aiores.Session(journal=None, contexts=[ctx]) as session:
        user = targets["user"]
        runners = [
            await session.command_runner(f"ssh://{user}@127.0.0.1:{port}")
            for port in targets["ports"]
        ]

        async def run_all() -> int:
            done = await asyncio.gather(*(r.run("true") for r in runners))
            return sum(r.ok for r in done)

        before = rss()
        cold_s, ok = await measure(run_all)
        warm_s, ok_warm = await measure(run_all)
        grown = rss() - before
    return {"cold": cold_s, "warm": warm_s, "ok": min(ok, ok_warm), "rss_delta": grown}


async def main(method: str, targets: dict[str, Any]) -> None:
    run = {"raw": raw, "aiores": via_aiores}[method]
    print(json.dumps(await run(targets)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], json.loads(Path(sys.argv[2]).read_text())))
