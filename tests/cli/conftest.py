"""The ``aiores`` command end to end: subprocesses against a sim cloud of this module.

Each test module gets a state directory and a sim cloud directory of its own (passed
to every ``aiores`` subprocess through ``$AIORES_STATE_DIR`` and ``$AIORES_SIM_DIR``);
the cloud is stopped at the end and must leave nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aiores._journal import read_journal
from aiores_sim.testing import start_sim_cloud

__all__ = ["Cli"]

#: Seconds one aiores command may take in these tests.
COMMAND_TIMEOUT = 60.0


@dataclass
class Cli:
    """Runs ``aiores`` in a subprocess with this module's state and cloud."""

    state: Path
    sim: Path

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            AIORES_STATE_DIR=str(self.state),
            AIORES_SIM_DIR=str(self.sim),
            COLUMNS="200",
            PYTHONASYNCIODEBUG="",
        )
        return env

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "aiores", *args]

    def __call__(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            env=self.env,
            capture_output=True,
            text=True,
            input=input,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )

    def json(self, *args: str) -> Any:
        done = self(*args, "--json")
        assert done.returncode in (0, 1), done.stderr
        return json.loads(done.stdout)

    def journal(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of a read-only query of the journal (none before the command made it)."""
        path = self.state / "journal.sqlite"
        if not path.exists():
            return []
        try:
            db = read_journal(path)
        except sqlite3.OperationalError:
            return []  # being created by the command at this moment
        try:
            return db.execute(sql, params).fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            db.close()

    def live(self, tag: str) -> list[dict[str, Any]]:
        """VMs the sim cloud holds (not ended) carrying ``tag``, from ``aiores sim``."""
        import socket

        from aiores_sim._protocol import socket_path

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(COMMAND_TIMEOUT)
            sock.connect(str(socket_path(self.sim)))
            sock.sendall(json.dumps({"id": 1, "op": "list", "args": {"tags": [tag]}}).encode())
            sock.sendall(b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                assert chunk, "the sim cloud closed the connection"
                data += chunk
        answer = json.loads(data)
        assert answer["ok"], answer
        result: list[dict[str, Any]] = answer["result"]
        return result


@pytest.fixture(scope="module")
def cli() -> Iterator[Cli]:
    state = Path(tempfile.mkdtemp(prefix="aiores-cli-state-"))
    sim = Path(tempfile.mkdtemp(prefix="aiores-cli-sim-"))
    cloud = start_sim_cloud(sim, watch_pid=os.getpid())
    try:
        yield Cli(state, sim)
    finally:
        cloud.stop()
        left = cloud.leftovers()
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(sim, ignore_errors=True)
        assert not left, f"the sim cloud left: {left}"
