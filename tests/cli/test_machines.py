"""provision -> ls -> run -> put/get -> deprovision, each an ``aiores`` subprocess."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from click.testing import CliRunner

from aiores._cli import main

from .conftest import Cli

URL = "sim://?boot_delay=0.05"


def test_provision_ls_run_put_get_deprovision(cli: Cli, tmp_path: Path) -> None:
    web = cli("provision", URL, "--count", "2", "--tag", "web", "--wait")
    assert web.returncode == 0, web.stderr
    odd = cli("provision", URL, "-n", "1", "-t", "web", "-t", "odd", "--template", "tiny")
    assert odd.returncode == 0, odd.stderr
    ids = web.stdout.split() + odd.stdout.split()
    assert len(ids) == 3
    assert all(i.startswith(f"[{URL}]-[vm-") for i in ids)
    assert "provisioned 2 machines" in web.stderr

    listed = cli.json("ls", "--tag", "web")
    assert sorted(m["id"] for m in listed) == sorted(ids)
    for machine in listed:
        assert machine["state"] in ("PENDING", "ACTIVE")
        assert machine["public_address"] == "127.0.0.1"
        assert "web" in machine["tags"]
        assert machine["age"] >= 0
    assert [m["id"] for m in cli.json("ls", "-t", "odd")] == ids[2:]
    table = cli("ls", "--probe")
    assert table.returncode == 0, table.stderr
    for machine in listed:
        assert machine["native_id"] in table.stdout
    assert table.stdout.count("ACTIVE (running)") == 3

    # put to the odd one only; the command fails where the marker is.
    marker = tmp_path / "marker.txt"
    marker.write_text("odd one out\n")
    put = cli("put", "--tag", "odd", str(marker), "marker.txt")
    assert put.returncode == 0, put.stderr
    assert "put: 1 hosts: 1 ok, 0 failed" in put.stderr
    ran = cli("run", "--tag", "web", "--", "echo hello; test ! -e marker.txt || exit 3")
    assert ran.returncode == 1, ran.stderr
    odd_host = listed[[m["id"] for m in listed].index(ids[2])]["native_id"]
    for machine in listed:
        assert f"[{machine['native_id']}] hello" in ran.stdout
    assert f"[{odd_host}] exit 3" in ran.stderr
    assert "command: 3 hosts: 2 ok, 1 failed" in ran.stderr
    as_json = cli("run", "-t", "web", "--json", "--", "test ! -e marker.txt || exit 3")
    assert as_json.returncode == 1
    results = {r["host"]: r["exit_status"] for r in json.loads(as_json.stdout)}
    assert sorted(results.values()) == [0, 0, 3]
    assert results[odd_host] == 3
    grouped = cli("run", "-t", "odd", "--grouped", "--", "cat", "marker.txt")
    assert grouped.returncode == 0, grouped.stderr
    assert f"── {odd_host} exit 0" in grouped.stdout
    assert "odd one out" in grouped.stdout

    got = cli("get", "-t", "odd", "marker.txt", str(tmp_path / "back.txt"))
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "back.txt").read_text() == "odd one out\n"

    gone = cli("deprovision", "--tag", "web")
    assert gone.returncode == 0, gone.stderr
    assert sorted(gone.stdout.split()) == sorted(ids)
    assert cli.json("ls") == []
    assert cli.live("web") == []
    nothing = cli("run", "-t", "web", "--", "true")
    assert nothing.returncode == 1
    assert "no live machine carries the tags web" in nothing.stderr


def test_every_command_has_help_with_examples() -> None:
    runner = CliRunner()
    for command in (
        ["provision"],
        ["ls"],
        ["run"],
        ["put"],
        ["get"],
        ["deprovision"],
        ["jobs", "submit"],
        ["jobs", "ls"],
        ["jobs", "wait"],
        ["jobs", "cancel"],
        ["recover"],
        ["gc"],
        ["pool", "run"],
    ):
        done = runner.invoke(main, [*command, "--help"])
        assert done.exit_code == 0, done.output
        assert "Examples:" in done.output, command
    assert "Examples:" in runner.invoke(main, ["--help"]).output


def _one_line_error(done: subprocess.CompletedProcess[str], status: int, words: str) -> None:
    """The command failed with ``status`` and said why in one line, no traceback."""
    assert done.returncode == status, (done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert "Traceback" not in done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("aiores: ")
    assert words in lines[0]


def test_bad_input_is_one_line_exit_2_and_nothing_is_acquired(cli: Cli) -> None:
    before = cli.journal("SELECT COUNT(*) FROM intents")
    for tag in ("", "a b"):
        done = cli("provision", URL, "-t", tag)
        _one_line_error(done, 2, "BadParameter: ComputeDescription.tags: each tag must be")
    late = cli("provision", URL, "-t", "bad-timeout", "--timeout", "-5", "--wait")
    _one_line_error(late, 2, "BadParameter: timeout must be None or a finite number")
    _one_line_error(cli("provision", URL, "-n", "0", "-t", "bad-count"), 2, "count must be")
    assert cli.journal("SELECT COUNT(*) FROM intents") == before  # nothing was asked for
    assert cli.live("bad-timeout") == cli.live("bad-count") == []
    probe = cli("ls", "--probe", "--timeout", "-1")
    _one_line_error(probe, 2, "timeout must be None or a finite number of seconds >= 0")
    _one_line_error(cli("deprovision", "vm-nope"), 2, "'vm-nope' is not a machine id")
    for command in ("run", "put", "get"):
        args = ["--", "true"] if command == "run" else ["README.md", "x"]
        done = cli(command, "-t", "web", "--timeout", "-1", *args)
        _one_line_error(done, 2, "timeout must be None or a finite number")
    _one_line_error(cli("run", "-t", "web", "--limit", "0", "--", "true"), 2, "limit must be")


def test_provision_wait_releases_the_machines_that_did_not_become_active(cli: Cli) -> None:
    failing = cli("provision", "sim://?boot_failure=1", "-n", "2", "-t", "doomed", "--wait")
    assert failing.returncode == 1, failing.stderr
    assert failing.stdout == ""
    assert failing.stderr.count("did not become ACTIVE: IncorrectState") == 2
    assert failing.stderr.count("(did not become ACTIVE)") == 2
    assert "NoSuccess: 2 of 2 machines did not become ACTIVE: released 2, kept 0" in (
        failing.stderr
    )
    assert cli.live("doomed") == []
    slow = cli("provision", "sim://?boot_delay=30", "-t", "slow", "--wait", "--timeout", "0.2")
    assert slow.returncode == 1, slow.stderr
    assert "did not become ACTIVE: Timeout" in slow.stderr
    assert "released 1, kept 0" in slow.stderr
    assert cli.live("slow") == []
    assert cli.json("ls", "-t", "slow") == []


def test_deprovision_reports_ids_it_does_not_know(cli: Cli) -> None:
    made = cli("provision", URL, "-t", "named")
    assert made.returncode == 0, made.stderr
    (vm_id,) = made.stdout.split()
    nope = "[sim://]-[vm-nope]"
    done = cli("deprovision", vm_id, nope)
    assert done.returncode == 1, done.stderr
    assert done.stdout.split() == [vm_id]  # the known one is released all the same
    assert f"aiores: {nope}: sim:// has no such machine" in done.stderr
    assert "released 1 machines; 1 not found" in done.stderr
    assert cli.live("named") == []
    again = cli("deprovision", vm_id)
    assert again.returncode == 1
    assert vm_id in again.stderr


def test_recover_json_says_when_and_by_whom_as_ls_does(cli: Cli) -> None:
    made = cli("provision", URL, "-t", "recovered")
    assert made.returncode == 0, made.stderr
    (listed,) = cli.json("ls", "-t", "recovered")
    (found,) = [r for r in cli.json("recover")["resources"] if "recovered" in r["tags"]]
    for key in ("created", "session", "age"):
        assert found[key] is not None, key
    assert found["created"] == listed["created"]
    assert found["session"] == listed["session"]
    assert cli("deprovision", "-t", "recovered").returncode == 0


def test_run_and_put_wait_for_machines_still_booting(cli: Cli, tmp_path: Path) -> None:
    # Provisioned without --wait, then used at once: no machine can answer before 5 s,
    # and each command takes about one.
    doomed = cli("provision", "sim://?boot_delay=5&boot_failure=1", "-t", "fresh")
    made = cli("provision", "sim://?boot_delay=5", "-n", "2", "-t", "fresh")
    ran = cli("run", "-t", "fresh", "--timeout", "30", "--", "echo hi")
    assert made.returncode == doomed.returncode == 0, made.stderr + doomed.stderr
    assert ran.returncode == 1, ran.stderr
    assert re.search(r"^waiting for [23] machines to boot$", ran.stderr, re.MULTILINE)
    good = [i.split("]-[")[1].rstrip("]") for i in made.stdout.split()]
    assert sorted(ran.stdout.splitlines()) == sorted(f"[{g}] hi" for g in good)
    bad = doomed.stdout.split("]-[")[1].strip().rstrip("]")
    assert f"[{bad}] NoSuccess: {doomed.stdout.strip()} did not boot" in ran.stderr
    assert "command: 3 hosts: 2 ok, 1 failed" in ran.stderr
    # The failed machine's end is in the journal now: later commands leave it out.
    marker = tmp_path / "m.txt"
    marker.write_text("m\n")
    put = cli("put", "-t", "fresh", str(marker), "m.txt")
    assert put.returncode == 0, put.stderr
    assert sorted(put.stdout.splitlines()) == sorted(f"[{g}] ok" for g in good)
    assert cli("deprovision", "-t", "fresh").returncode == 0
    assert cli.live("fresh") == []


def test_get_into_an_existing_directory_goes_to_one_directory_per_machine(
    cli: Cli, tmp_path: Path
) -> None:
    made = cli("provision", URL, "-n", "3", "-t", "fetch", "--wait")
    one = cli("provision", URL, "-t", "fetch-one", "--wait")
    assert made.returncode == one.returncode == 0, made.stderr + one.stderr
    listed = cli.json("ls", "-t", "fetch")
    (single,) = cli.json("ls", "-t", "fetch-one")
    for tag in ("fetch", "fetch-one"):
        wrote = cli("run", "-t", tag, "--", "echo $AIORES_SIM_VM > f.txt")
        assert wrote.returncode == 0, wrote.stderr
    into = tmp_path / "into"
    for tag, machines in (("fetch", listed), ("fetch-one", [single])):
        into.mkdir()
        got = cli("get", "-t", tag, "f.txt", str(into))
        assert got.returncode == 0, got.stderr
        for machine in machines:
            target = into / f"sim-{machine['native_id']}" / "f.txt"
            assert target.read_text() == machine["native_id"] + "\n"
            assert f"[{machine['native_id']}] -> {target}" in got.stdout
        assert len(list(into.iterdir())) == len(machines)
        shutil.rmtree(into)
    # Not a directory: one machine's copy is the path, several get suffixes beside it.
    got = cli("get", "-t", "fetch", "f.txt", str(tmp_path / "f.txt"))
    assert got.returncode == 0, got.stderr
    first = listed[0]["native_id"]
    assert (tmp_path / f"f.txt.sim-{first}").read_text() == first + "\n"
    assert cli("deprovision", "-t", "fetch").returncode == 0
    assert cli("deprovision", "-t", "fetch-one").returncode == 0
