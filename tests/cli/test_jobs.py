"""``aiores jobs``: submit and wait on local://, and a local:// or a VM's job found again by
later commands."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import Cli


def test_jobs_submit_and_wait_on_local(cli: Cli, tmp_path: Path) -> None:
    ok = cli(
        "jobs", "submit", "--wait", "local://", "--", "/bin/sh", "-c", "echo out; echo err >&2"
    )
    assert ok.returncode == 0, ok.stderr
    job_id, out = ok.stdout.splitlines()
    assert job_id.startswith("[local://]-[")
    assert out == "out"
    assert "err" in ok.stderr
    assert f"{job_id}: DONE, exit code 0" in ok.stderr
    failed = cli("jobs", "submit", "--wait", "--json", "local://", "--", "/bin/sh", "-c", "exit 4")
    assert failed.returncode == 4
    assert '"state": "FAILED"' in failed.stdout
    missing = cli("jobs", "submit", "--wait", "local://", "--", "/no/such/program")
    assert missing.returncode == 1
    assert "DoesNotExist" in missing.stderr
    # A local:// job outlives the command that submitted it: later commands find it.
    waited = cli("jobs", "wait", "--timeout", "30", job_id)
    assert waited.returncode == 0, waited.stderr
    assert waited.stdout.strip() == f"{job_id} DONE 0"
    # Left running by its command (it waits for a file the test makes: no timing).
    go = tmp_path / "go"
    left = cli(
        "jobs",
        "submit",
        "local://",
        "--",
        "/bin/sh",
        "-c",
        f"while [ ! -e {go} ]; do sleep 0.02; done",
    )
    assert left.returncode == 0, left.stderr
    left_id = left.stdout.strip()
    first = cli.json("recover")
    assert first["gone"] == []  # its program is over, yet the job is found again
    assert first["problems"] == []
    found = {j["id"]: j["state"] for j in first["jobs"]}
    assert found[left_id] == "RUNNING"
    go.touch()
    done = cli("jobs", "wait", "--timeout", "30", left_id)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{left_id} DONE 0"
    again = cli.json("recover")
    assert again["gone"] == []
    every = {j["id"]: j["state"] for j in cli.json("jobs", "ls", "--all")}
    assert every[left_id] == "DONE"
    assert every[job_id] == "DONE"


def test_a_job_on_a_vm_is_waited_for_and_cancelled_by_later_commands(cli: Cli) -> None:
    made = cli("provision", "sim://?boot_delay=0.05", "-t", "jobs", "--wait")
    assert made.returncode == 0, made.stderr
    (vm,) = cli.json("ls", "-t", "jobs")
    access = vm["access"]
    submitted = cli("jobs", "submit", access, "--", "/bin/sh", "-c", "sleep 0.5; exit 0")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    long = cli("jobs", "submit", access, "--", "/bin/sleep", "300")
    long_id = long.stdout.strip()
    shown = cli("jobs", "ls", "--all", "--json")
    listed = {j["id"]: j["state"] for j in json.loads(shown.stdout)}
    assert job_id in listed, shown.stderr
    assert listed[job_id] in ("QUEUED", "RUNNING", "DONE")
    assert listed[long_id] in ("QUEUED", "RUNNING")
    waited = cli("jobs", "wait", "--timeout", "30", job_id)
    assert waited.returncode == 0, waited.stderr
    assert waited.stdout.strip() == f"{job_id} DONE 0"
    cancelled = cli("jobs", "cancel", long_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"{long_id} cancelled" in cancelled.stdout
    finished = cli("jobs", "cancel", job_id)  # it ended DONE: it cannot be cancelled
    assert finished.returncode == 1, finished.stderr
    assert finished.stdout == ""
    assert f"aiores: {job_id}: " in finished.stderr
    ended = cli("jobs", "wait", "--timeout", "30", long_id)
    assert ended.returncode == 1
    assert "CANCELED" in ended.stdout
    every = {j["id"]: j for j in cli.json("jobs", "ls", "--all")}
    assert (every[job_id]["state"], every[job_id]["exit_code"]) == ("DONE", 0)
    assert every[job_id]["created"] is not None
    assert every[long_id]["state"] == "CANCELED"
    table = cli("jobs", "ls", "--all")
    (row,) = [line for line in table.stdout.splitlines() if job_id in line]
    assert row.split()[1:3] == ["DONE", "0"]
    assert cli("deprovision", "-t", "jobs").returncode == 0
