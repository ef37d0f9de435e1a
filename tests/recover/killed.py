"""Kill a program in the middle of acquiring sim VMs (shared by the recover and cli tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

__all__ = ["CHILD", "kill_mid_acquire"]

CHILD = Path(__file__).with_name("acquire_child.py")


def _disks(sim_dir: Path) -> set[str]:
    try:
        return set(os.listdir(sim_dir / "vms"))
    except FileNotFoundError:
        return set()


def kill_mid_acquire(
    count: int,
    tag: str,
    sim_dir: Path,
    timeout: float = 30.0,
    env: Mapping[str, str] | None = None,
) -> None:
    """Start the acquiring child and SIGKILL it once the cloud makes its first VM disk.

    The journal's intent is durable before the backend call, so by then it is there
    (``pending``); the acquire itself is not finished (the cloud makes disks one by one
    and answers once all are made). Blocking: not for the event loop.
    """
    before = _disks(sim_dir)
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(count), tag],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=None if env is None else dict(env),
    )
    deadline = time.monotonic() + timeout
    try:
        while not (_disks(sim_dir) - before):
            if child.poll() is not None:
                raise AssertionError(f"the child ended early: {child.communicate()}")
            if time.monotonic() > deadline:
                raise AssertionError("the child made no VM in time")
            time.sleep(0.002)
    finally:
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=timeout)
    assert child.returncode == -signal.SIGKILL
    assert b"acquired" not in out, "the acquire finished before the kill"
