"""Shared test set-up: a private state directory, and asyncio debug checks.

Every event loop runs in asyncio debug mode; a callback that blocks the loop for
longer than ``SLOW_CALLBACK`` seconds fails the test that caused it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

# The servers every part of the suite shares, registered here only, so each starts
# once per test session (a fixture a sub-directory's conftest also registered would
# start again for that directory).
from aiores_sim.testing import aiores_sim_cloud
from tests.docker.podman import podman
from tests.shared import SHARED
from tests.slurm.cluster import slurm_cluster
from tests.ssh.servers import keys, sshd

__all__ = ["SHARED", "aiores_sim_cloud", "keys", "podman", "slurm_cluster", "sshd"]

os.environ["PYTHONASYNCIODEBUG"] = "1"

SLOW_CALLBACK = 0.5
_TOOK = re.compile(r"took (\d+\.\d+) seconds")


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own aiores state directory (journal, keys)."""
    path = tmp_path / "aiores-state"
    monkeypatch.setenv("AIORES_STATE_DIR", str(path))
    return path


class _SlowCallbacks(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.slow: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        match = _TOOK.search(message)
        if match and float(match[1]) > SLOW_CALLBACK:
            self.slow.append(message)


@pytest.fixture(autouse=True)
def no_blocking_of_the_loop() -> Iterator[None]:
    handler = _SlowCallbacks()
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    assert not handler.slow, f"the event loop was blocked: {handler.slow}"
