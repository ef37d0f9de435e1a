"""``aiores run`` prints each host's lines as they arrive, and keeps them on Ctrl-C."""

from __future__ import annotations

import select
import signal
import subprocess
from collections.abc import Iterator

import pytest

from .conftest import COMMAND_TIMEOUT, Cli

URL = "sim://?boot_delay=0.05"
#: Written before the first line; the test finds the VM's home directory by it.
HERE = "streaming-here"
#: The command waits for this file (created by the test) before going on.
GO = "streaming-go"
WAITS = f"while [ ! -e {GO} ]; do sleep 0.05; done; rm -f {GO} {HERE}"


@pytest.fixture
def host(cli: Cli) -> Iterator[str]:
    """One ACTIVE sim VM tagged ``stream`` (its native id), released at the end."""
    made = cli("provision", URL, "-t", "stream", "--wait")
    assert made.returncode == 0, made.stderr
    try:
        yield made.stdout.split("]-[")[1].strip().rstrip("]")
    finally:
        assert cli("deprovision", "-t", "stream").returncode == 0


def start(cli: Cli, command: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cli.argv("run", "-t", "stream", "--", command),
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def first_line(proc: subprocess.Popen[str]) -> str:
    """The first line the command prints on standard output (bounded)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], COMMAND_TIMEOUT)
    assert ready, "no line came"
    return proc.stdout.readline()


def release(cli: Cli) -> None:
    """Create the file the command waits for, beside the one it made first."""
    (here,) = cli.sim.glob(f"vms/*/**/{HERE}")
    (here.parent / GO).touch()


def test_lines_come_while_the_command_still_runs(cli: Cli, host: str) -> None:
    proc = start(cli, f"touch {HERE}; echo first; echo warn >&2; {WAITS}; echo second")
    try:
        assert first_line(proc) == f"[{host}] first\n"  # printed while the command waits
        release(cli)
        out, errs = proc.communicate(timeout=COMMAND_TIMEOUT)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, errs
    assert out == f"[{host}] second\n"  # the first line was read above
    assert f"[{host}] warn\n" in errs
    assert "command: 1 hosts: 1 ok, 0 failed" in errs


def test_ctrl_c_keeps_what_was_printed(cli: Cli, host: str) -> None:
    # One write: the line and the unfinished one after it come together.
    proc = start(cli, f"touch {HERE}; printf 'first\\nunfinished'; {WAITS}; echo never")
    try:
        assert first_line(proc) == f"[{host}] first\n"
        proc.send_signal(signal.SIGINT)
        out, errs = proc.communicate(timeout=COMMAND_TIMEOUT)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, errs
    assert out == f"[{host}] unfinished\n"  # shown, though no newline came
    assert f"stopped the command on {host}" in errs
    assert "interrupted: 0 hosts finished, stopped on 1" in errs
    assert list(cli.sim.glob(f"vms/*/**/{HERE}"))  # stopped while it waited: no clean-up ran
