"""``aiores jobs`` with DRMAA2 job sessions: --session on submit and ls, ``jobs sessions``."""

from __future__ import annotations

from .conftest import Cli


def test_job_sessions_on_local(cli: Cli) -> None:
    done = cli("jobs", "submit", "--session", "s1", "--wait", "local://", "--", "/bin/echo", "hi")
    assert done.returncode == 0, done.stderr
    done_id, out = done.stdout.splitlines()
    assert out == "hi"
    # Reopened by name: the URL may be left out.
    long = cli("jobs", "submit", "--session", "s1", "--", "/bin/sleep", "60")
    assert long.returncode == 0, long.stderr
    long_id = long.stdout.strip()
    assert long_id.startswith("[local://]-[")
    other = cli("jobs", "submit", "--session", "s2", "local://", "--", "/bin/true")
    assert other.returncode == 0, other.stderr
    listed = {j["id"]: j for j in cli.json("jobs", "ls", "--all", "--session", "s1")}
    assert set(listed) == {done_id, long_id}
    assert (listed[done_id]["state"], listed[done_id]["exit_code"]) == ("DONE", 0)
    assert listed[long_id]["state"] in ("QUEUED", "RUNNING")
    running = cli.json("jobs", "ls", "--session", "s1")
    assert [j["id"] for j in running] == [long_id]
    sessions = {s["name"]: s for s in cli.json("jobs", "sessions")}
    assert set(sessions) == {"s1", "s2"}
    assert (sessions["s1"]["url"], sessions["s1"]["jobs"]) == ("local://", 2)
    table = cli("jobs", "sessions")
    assert table.returncode == 0
    assert any(line.split()[:3] == ["s1", "local://", "2"] for line in table.stdout.splitlines())
    assert "2 job sessions" in table.stderr
    # Another URL for an existing name: bad input, both URLs named, nothing submitted.
    clash = cli("jobs", "submit", "--session", "s1", "local://?max_running=2", "--", "/bin/true")
    assert clash.returncode == 2
    assert clash.stderr.count("\n") == 1
    assert "local://?max_running=2" in clash.stderr
    assert "exists at local://" in clash.stderr
    refused = cli("jobs", "submit", "--session", "x" * 201, "local://", "--", "/bin/true")
    assert refused.returncode == 2, refused.stderr
    assert "BadParameter: name" in refused.stderr
    unknown = cli("jobs", "ls", "--session", "nope")
    assert unknown.returncode == 1
    assert "DoesNotExist" in unknown.stderr
    assert "'nope'" in unknown.stderr
    no_command = cli("jobs", "submit", "--session", "s1", "local://")
    assert no_command.returncode == 2
    assert "COMMAND" in no_command.stderr
    assert len(cli.json("jobs", "ls", "--all", "--session", "s1")) == 2
    cancelled = cli("jobs", "cancel", long_id)
    assert cancelled.returncode == 0, cancelled.stderr
    ended = {j["id"]: j["state"] for j in cli.json("jobs", "ls", "--all", "--session", "s1")}
    assert ended[long_id] == "CANCELED"


def test_a_job_session_on_a_vm(cli: Cli) -> None:
    made = cli("provision", "sim://?boot_delay=0.05", "-t", "jsvm", "--wait")
    assert made.returncode == 0, made.stderr
    (vm,) = cli.json("ls", "-t", "jsvm")
    access = vm["access"]
    try:
        first = cli("jobs", "submit", "--session", "vm", access, "--", "/bin/sh", "-c", "exit 5")
        assert first.returncode == 0, first.stderr
        first_id = first.stdout.strip()
        second = cli("jobs", "submit", "--session", "vm", "--", "/bin/sleep", "0.2")
        assert second.returncode == 0, second.stderr
        second_id = second.stdout.strip()
        assert second_id.startswith(f"[{access}]-[")
        waited = cli("jobs", "wait", "--timeout", "30", first_id, second_id)
        assert waited.returncode == 1  # the first ended FAILED
        listed = {j["id"]: j for j in cli.json("jobs", "ls", "--all", "--session", "vm")}
        assert (listed[first_id]["state"], listed[first_id]["exit_code"]) == ("FAILED", 5)
        assert listed[second_id]["state"] == "DONE"
        sessions = {s["name"]: s["url"] for s in cli.json("jobs", "sessions")}
        assert sessions["vm"] == access
    finally:
        assert cli("deprovision", "-t", "jsvm").returncode == 0
