"""``aiores gc`` after a killed provision; Ctrl-C during provision and run."""

from __future__ import annotations

import signal
import subprocess
import time

import psutil

from tests.recover.killed import kill_mid_acquire

from .conftest import COMMAND_TIMEOUT, Cli

#: A sleep no other test runs, to find its processes by.
SLEEP = "300.4243"


def _sleeping() -> list[int]:
    return [
        p.pid
        for p in psutil.process_iter(["cmdline", "status"])
        if p.info["cmdline"] == ["sleep", SLEEP] and p.info["status"] != psutil.STATUS_ZOMBIE
    ]


def _until(check: object, what: str) -> None:
    deadline = time.monotonic() + COMMAND_TIMEOUT
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_gc_releases_every_vm_of_a_provision_killed_midway(cli: Cli) -> None:
    kill_mid_acquire(50, "killed", cli.sim, env=cli.env)
    assert len(cli.journal("SELECT token FROM intents WHERE status = 'pending'")) == 1
    dry = cli.json("gc")
    assert len(dry["leaks"]) == 50
    assert dry["released"] == []
    assert {leak["reason"] for leak in dry["leaks"]} == {"intent never completed"}
    declined = cli("gc", input="n\n")
    assert declined.returncode == 0, declined.stderr
    assert "release these 50 resources?" in declined.stdout
    assert len(cli.live("killed")) == 50
    done = cli("gc", "--yes")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("released ") == 50
    assert "gc: 50 leaked, 50 released, 0 kept, 1 unfinished calls closed" in done.stderr
    assert cli.live("killed") == []
    assert cli.journal("SELECT token FROM intents WHERE status = 'pending'") == []
    ((status, ids),) = cli.journal("SELECT status, ids FROM intents WHERE op = 'acquire'")
    assert status == "released"
    assert ids.count("vm-") == 50
    again = cli.json("gc")
    assert again["leaks"] == []


def test_ctrl_c_during_provision_releases_the_booting_machines(cli: Cli) -> None:
    proc = subprocess.Popen(
        cli.argv("provision", "sim://?boot_delay=60", "-n", "3", "-t", "slow", "--wait"),
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _until(
        lambda: len(cli.journal("SELECT id FROM objects WHERE data LIKE '%slow%'")) == 3,
        "the machines to be recorded",
    )
    proc.send_signal(signal.SIGINT)
    out, errs = proc.communicate(timeout=COMMAND_TIMEOUT)
    assert proc.returncode == 130, errs
    assert errs.count("(still booting)") == 3
    assert "interrupted: released 3, kept 0" in errs
    assert out == ""
    assert cli.live("slow") == []


def test_ctrl_c_during_run_stops_the_command_everywhere(cli: Cli) -> None:
    made = cli("provision", "sim://?boot_delay=0.05", "-n", "2", "-t", "sleepy", "--wait")
    assert made.returncode == 0, made.stderr
    proc = subprocess.Popen(
        cli.argv("run", "-t", "sleepy", "--", f"echo started >> started.txt; sleep {SLEEP}"),
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _until(lambda: len(list(cli.sim.glob("vms/*/**/started.txt"))) == 2, "both to start")
    proc.send_signal(signal.SIGINT)
    _, errs = proc.communicate(timeout=COMMAND_TIMEOUT)
    assert proc.returncode == 130, errs
    assert errs.count("stopped the command on vm-") == 2
    assert "interrupted: 0 hosts finished, stopped on 2" in errs
    _until(lambda: not _sleeping(), "the commands to end")
    assert cli("deprovision", "-t", "sleepy").returncode == 0


def test_ctrl_c_during_the_acquire_releases_what_was_being_acquired(cli: Cli) -> None:
    before = set(cli.sim.glob("vms/*"))
    proc = subprocess.Popen(
        cli.argv("provision", "sim://?boot_delay=60", "-n", "100", "-t", "cut"),
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _until(lambda: set(cli.sim.glob("vms/*")) - before, "the cloud to make a VM")
    proc.send_signal(signal.SIGINT)
    out, errs = proc.communicate(timeout=COMMAND_TIMEOUT)
    assert proc.returncode == 130, errs
    assert "released 100 machines being acquired at sim://?boot_delay=60" in errs
    assert "interrupted: released 100, kept 0" in errs
    assert out == ""
    assert cli.live("cut") == []
    ((status,),) = cli.journal("SELECT status FROM intents WHERE payload LIKE '%cut%'")
    assert status == "released"


def test_gc_asks_and_releases_once_confirmed(cli: Cli) -> None:
    kill_mid_acquire(5, "asked", cli.sim, env=cli.env)
    done = cli("gc", input="y\n")
    assert done.returncode == 0, done.stderr
    assert "release these 5 resources?" in done.stdout
    assert done.stdout.count("released ") == 5
    assert cli.live("asked") == []
    assert cli.journal("SELECT token FROM intents WHERE status = 'pending'") == []
