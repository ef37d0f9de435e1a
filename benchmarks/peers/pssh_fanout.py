"""parallel-ssh's side of ``ssh_side.py``: ``python pssh_fanout.py TARGETS``.

Runs under the parallel-ssh virtualenv (``venvs.py``); ``TARGETS`` as for
``ssh_own.py``. One ``ParallelSSHClient`` (its native libssh2 client, gevent, default
pool size 100) over every port, ``run_command("true")`` + ``join`` (cold: new
connections), then again on the same client (warm: its open sessions). parallel-ssh
does not check host keys by default (it reads no known_hosts file): the run does not
verify them. Prints one line of JSON as ``ssh_own.py`` does.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

# parallel-ssh lives in the peer's own virtualenv, not in aiores's (where mypy runs).
from pssh.clients import ParallelSSHClient  # type: ignore[import-not-found]
from pssh.config import HostConfig  # type: ignore[import-not-found]


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main(path: str) -> None:
    targets: dict[str, Any] = json.loads(Path(path).read_text())
    ports: list[int] = targets["ports"]
    client = ParallelSSHClient(
        ["127.0.0.1"] * len(ports),
        host_config=[
            HostConfig(port=port, user=targets["user"], private_key=targets["key"])
            for port in ports
        ],
    )

    def run_all() -> tuple[dict[str, float], int]:
        cpu, wall = time.process_time(), time.perf_counter()
        output = client.run_command("true", stop_on_errors=True)
        client.join(output, consume_output=True)
        ok = sum(host.exit_code == 0 for host in output)
        return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}, ok

    before = rss()
    cold, ok = run_all()
    warm, ok_warm = run_all()
    grown = rss() - before
    print(json.dumps({"cold": cold, "warm": warm, "ok": min(ok, ok_warm), "rss_delta": grown}))


if __name__ == "__main__":
    main(sys.argv[1])
