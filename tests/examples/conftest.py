"""The programs in ``examples/`` end to end: subprocesses against a sim cloud of this module.

The module's state directory and sim cloud are those of the ``aiores`` command's
tests (the ``cli`` fixture of ``tests/cli/conftest.py``: directories of its own,
passed through ``$AIORES_STATE_DIR`` and ``$AIORES_SIM_DIR``; the cloud is stopped at
the end and must leave nothing behind). After each test the cloud must hold no VM,
and no process that an example started (its local jobs included: they carry a
marker in their environment) may still run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aiores_sim import CloudClient
from tests.cli.conftest import Cli, cli

__all__ = ["EXAMPLES", "Examples", "cli"]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
#: Seconds one example program may take in these tests.
PROGRAM_TIMEOUT = 50.0
#: The environment variable that marks every process an example started.
MARKER = "AIORES_EXAMPLES_TEST"


@dataclass
class Examples:
    """Runs ``examples/<name>`` in a subprocess with this module's state and cloud."""

    cli: Cli
    mark: str

    @property
    def state(self) -> Path:
        return self.cli.state

    @property
    def sim(self) -> Path:
        return self.cli.sim

    def env(self, **extra: str) -> dict[str, str]:
        """The ``aiores`` command's environment, marked, unbuffered, plus ``extra``."""
        return {**self.cli.env, MARKER: self.mark, "PYTHONUNBUFFERED": "1", **extra}

    def argv(self, name: str, *args: str) -> list[str]:
        return [sys.executable, str(EXAMPLES / name), *args]

    def __call__(
        self, name: str, *args: str, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(name, *args),
            env=dict(env) if env is not None else self.env(),
            capture_output=True,
            text=True,
            timeout=PROGRAM_TIMEOUT,
            check=False,
        )

    def vms(self, *tags: str) -> list[dict[str, Any]]:
        """The VMs the sim cloud holds (not ended) carrying all ``tags``, as it records them."""

        async def ask() -> list[dict[str, Any]]:
            client = CloudClient(self.sim)
            try:
                vms: list[dict[str, Any]] = await client.call(
                    "list", {"tags": list(tags)}, start=False
                )
                return vms
            finally:
                await client.close()

        return asyncio.run(ask())

    def destroy(self, vms: list[dict[str, Any]]) -> None:
        """Destroy VMs the sim cloud holds (those a failed test left)."""

        async def destroy() -> None:
            client = CloudClient(self.sim)
            try:
                await client.call("destroy", {"ids": [vm["id"] for vm in vms]}, start=False)
            finally:
                await client.close()

        asyncio.run(destroy())

    def processes(self) -> dict[int, str]:
        """Processes still running that an example started (marked): their commands."""
        marker = f"{MARKER}={self.mark}".encode()
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:  # gone meanwhile, or not ours to read
                continue
            if marker in environ:
                found[int(entry.name)] = command.decode(errors="replace").strip()
        return found


@pytest.fixture
def examples(cli: Cli) -> Iterator[Examples]:
    """A runner with the module's cloud; after the test, nothing it made may be left.

    What is left is reported, then removed, so that the next test starts clean.
    """
    runner = Examples(cli, secrets.token_hex(8))
    yield runner
    vms = runner.vms()
    processes = runner.processes()
    if vms:
        runner.destroy(vms)
    for pid in processes:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not vms, f"the sim cloud still holds VMs after the test: {vms}"
    assert not processes, f"processes started by the examples still run: {processes}"
