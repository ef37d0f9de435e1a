"""provision -> ls -> run -> put/get -> deprovision, each an ``aiores`` subprocess."""

from __future__ import annotations

import json
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
    ):
        done = runner.invoke(main, [*command, "--help"])
        assert done.exit_code == 0, done.output
        assert "Examples:" in done.output, command
    assert "Examples:" in runner.invoke(main, ["--help"]).output
