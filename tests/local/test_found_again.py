"""local:// jobs outlive their program: two programs, the second a fresh interpreter.

Program 1 (a subprocess) submits and ends; program 2 (another subprocess, same
``$AIORES_STATE_DIR``) finds the job again through the journal or by id, and waits
for it, cancels it or reaps it. The jobs hold on a file the test makes ("go"), so
nothing here depends on timing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from .conftest import group_members, kill_group

#: Seconds one program may take.
PROGRAM = 60.0

PRELUDE = """
import asyncio, json, sys
import aiores
from aiores import JobDescription
def sh(script):
    return JobDescription(executable="/bin/sh", arguments=["-c", script])
def say(**what):
    print(json.dumps(what), flush=True)
"""


def program(body: str, *args: str) -> dict[str, object]:
    """Run ``body`` (the inside of ``async def main()``) in a fresh interpreter; the
    last JSON line it printed."""
    code = (
        PRELUDE + "async def main():\n" + textwrap.indent(body, "    ") + "\nasyncio.run(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=PROGRAM
    )
    assert done.returncode == 0, done.stderr
    said: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return said


def until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Look again after each short pause until ``predicate`` holds (what the keeper
    or the kernel does announces itself to nobody here); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.02)


def waiting_job(go: Path, then: str) -> str:
    """A shell script that waits for ``go`` to exist, then runs ``then``."""
    return f"while [ ! -e {go} ]; do sleep 0.02; done; {then}"


SUBMIT = """
async with aiores.Session() as session:
    job = await session.job_service("local://?grace=0.5").submit(sh(sys.argv[1]))
    say(id=job.id, native=job.native_id, pid=job.extra["pid"], state=job.state.name)
"""


def record_of(state_dir: Path, native: str) -> Path:
    """The job's record file: one ``KEY VALUE`` line per fact."""
    return state_dir / "local" / "jobs" / native


def recorded(record: Path, key: str) -> str | None:
    """The value of the record's first complete ``key`` line, or None."""
    text = record.read_text()
    for line in text[: text.rfind("\n") + 1].splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return value
    return None


@pytest.mark.timeout(120)
def test_found_running_by_recover_then_waited_with_exit_code_and_output(tmp_path: Path) -> None:
    go = tmp_path / "go"
    first = program(SUBMIT, waiting_job(go, "echo out; echo err >&2; exit 7"))
    assert first["state"] == "RUNNING"
    second = program(
        """
async with aiores.Session() as session:
    found = await session.recover()
    (job,) = [j for j in found.jobs if j.id == sys.argv[1]]
    before = job.state.name
    open(sys.argv[2], "w").close()
    state = await job.wait(timeout=30)
    say(before=before, state=state.name, code=job.exit_code, out=job.stdout, err=job.stderr,
        gone=found.gone)
""",
        str(first["id"]),
        str(go),
    )
    assert second == {
        "before": "RUNNING",
        "state": "FAILED",
        "code": 7,
        "out": "out\n",
        "err": "err\n",
        "gone": [],
    }


@pytest.mark.timeout(120)
def test_cancelled_from_the_second_program_group_gone(tmp_path: Path) -> None:
    # The job's shell and its child both ignore TERM: the KILL after the grace period
    # must come from the second program.
    first = program(SUBMIT, "trap '' TERM; sleep 30 & wait; wait")
    pgid = int(str(first["pid"]))
    try:
        assert group_members(pgid)
        second = program(
            """
async with aiores.Session() as session:
    job = await session.job_service("local://?grace=0.5").get(sys.argv[1])
    before = job.state.name
    await job.cancel()
    state = await job.wait(timeout=30)
    say(before=before, state=state.name, code=job.exit_code)
""",
            str(first["id"]),
        )
        assert second == {"before": "RUNNING", "state": "CANCELED", "code": -signal.SIGKILL}
        assert group_members(pgid) == []
    finally:
        kill_group(pgid)


@pytest.mark.timeout(120)
def test_job_that_ended_while_no_program_ran_is_found_with_its_exit_code(
    tmp_path: Path, state_dir: Path
) -> None:
    go = tmp_path / "go"
    first = program(SUBMIT, waiting_job(go, "echo late; exit 3"))
    go.touch()
    record = record_of(state_dir, str(first["native"]))
    until(lambda: recorded(record, "exit") == "3", "the keeper recorded the exit")
    second = program(
        """
async with aiores.Session() as session:
    found = await session.recover()
    (job,) = [j for j in found.jobs if j.id == sys.argv[1]]
    say(state=job.state.name, code=job.exit_code, out=job.stdout)
""",
        str(first["id"]),
    )
    assert second == {"state": "FAILED", "code": 3, "out": "late\n"}


@pytest.mark.timeout(120)
def test_a_reused_pid_is_not_taken_for_the_job(tmp_path: Path, state_dir: Path) -> None:
    first = program(SUBMIT, "exec sleep 30")
    pid = int(str(first["pid"]))
    record = record_of(state_dir, str(first["native"]))
    try:
        # Nothing records its exit any more (its keeper is gone), and the record now
        # names a process started at another time: the pid of another process.
        keeper = int(str(recorded(record, "keeper")).split()[0])
        os.kill(keeper, signal.SIGKILL)
        leader = f"leader {recorded(record, 'leader')}\n"
        _, start, boot = leader.split()[1:]
        record.write_text(
            record.read_text().replace(leader, f"leader {pid} {int(start) + 1} {boot}\n")
        )
        assert recorded(record, "leader") == f"{pid} {int(start) + 1} {boot}"
        second = program(
            """
async with aiores.Session() as session:
    job = await session.job_service("local://").get(sys.argv[1])
    try:
        await job.cancel()
        cancel = "cancelled"
    except aiores.IncorrectState:
        cancel = "IncorrectState"
    say(state=job.state.name, detail=job.state_detail, cancel=cancel)
""",
            str(first["id"]),
        )
        assert second["state"] == "FAILED"
        assert "nothing recorded its exit status" in str(second["detail"])
        assert second["cancel"] == "IncorrectState"
        assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE  # never signalled
    finally:
        kill_group(pid)


@pytest.mark.timeout(120)
def test_program_killed_mid_submit_then_reap_stops_the_job(tmp_path: Path) -> None:
    # Program 1 dies (SIGKILL) after the keeper started the job and before the
    # journal recorded the submit's outcome: only the token names the job.
    code = PRELUDE + textwrap.dedent(
        """
        from aiores_local import LocalJobAdaptor
        real = LocalJobAdaptor.submit
        async def submit(self, description, token, *, hold):
            info = await real(self, description, token, hold=hold)
            say(pid=info.extra["pid"])
            await asyncio.Event().wait()  # killed here
        LocalJobAdaptor.submit = submit
        async def main():
            async with aiores.Session() as session:
                await session.job_service("local://?grace=0.5").submit(sh("exec sleep 30"))
        asyncio.run(main())
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pgid = 0
    try:
        assert proc.stdout is not None
        pgid = json.loads(proc.stdout.readline())["pid"]
        proc.kill()
        proc.wait(timeout=PROGRAM)
        assert group_members(pgid)
        second = program(
            """
async with aiores.Session() as session:
    reaped = await session.reap()
    say(kinds=[leak.kind for leak in reaped.leaks], released=len(reaped.released),
        problems=[str(p) for p in reaped.problems])
"""
        )
        assert second == {"kinds": ["job"], "released": 1, "problems": []}
        until(lambda: group_members(pgid) == [], "the job stopped")
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if pgid:
            kill_group(pgid)
