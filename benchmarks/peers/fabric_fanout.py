"""Fabric's side of ``ssh_side.py``: ``python fabric_fanout.py TARGETS``.

Runs under the Fabric virtualenv (``venvs.py``); ``TARGETS`` as for ``ssh_own.py``.
One ``ThreadingGroup`` of ``Connection`` s (paramiko; one thread per host per call),
``group.run("true", hide=True)`` (cold: new connections), then again on the same
group (warm: its open connections). Fabric's default missing-host-key policy is
paramiko's ``AutoAddPolicy``: an unknown host key is accepted, so the run does not
verify host keys (as Fabric does by default; no known_hosts file is given). Prints one
line of JSON as ``ssh_own.py`` does.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

# Fabric lives in the peer's own virtualenv, not in aiores's (where mypy runs).
from fabric import Connection, ThreadingGroup  # type: ignore[import-not-found]


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main(path: str) -> None:
    targets: dict[str, Any] = json.loads(Path(path).read_text())
    connect = {"key_filename": targets["key"], "look_for_keys": False, "allow_agent": False}
    group = ThreadingGroup.from_connections(
        [
            Connection("127.0.0.1", user=targets["user"], port=port, connect_kwargs=connect)
            for port in targets["ports"]
        ]
    )

    def run_all() -> tuple[dict[str, float], int]:
        cpu, wall = time.process_time(), time.perf_counter()
        done = group.run("true", hide=True, warn=True)
        ok = sum(result.exited == 0 for result in done.values())
        return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}, ok

    before = rss()
    cold, ok = run_all()
    warm, ok_warm = run_all()
    grown = rss() - before
    group.close()
    print(json.dumps({"cold": cold, "warm": warm, "ok": min(ok, ok_warm), "rss_delta": grown}))


if __name__ == "__main__":
    main(sys.argv[1])
