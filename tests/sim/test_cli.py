"""The ``aiores`` command: ``aiores demo`` and ``aiores sim start|stop|status``."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import aiores
from aiores._cli import main
from aiores_sim import _commands as cli
from aiores_sim import cloud_pid
from aiores_sim._client import CloudClient

from .conftest import STEP


def test_demo_boots_fans_out_and_tears_down() -> None:
    result = CliRunner().invoke(main, ["demo", "--web", "3", "--db", "2", "--boot-delay", "0.05"])
    assert result.exit_code == 0, result.output
    assert "5 simulated VMs in 2 tagged groups (3 web, 2 db)" in result.output
    assert result.output.count("index.html 27 bytes") == 3
    assert result.output.count("schema.sql sha256 ") == 2
    assert "5/5 hosts ran their command; now 5 CANCELED" in result.output
    assert "stopping the sim cloud" not in result.output  # it was running before: it stays


async def _live(tag: str) -> list[aiores.Resource]:
    async with aiores.Session() as session:
        return await session.manager("sim://").list(tags=tag)


def _failing_db_group(monkeypatch: pytest.MonkeyPatch) -> None:
    web, db = cli.GROUPS
    monkeypatch.setattr(cli, "GROUPS", (web, dataclasses.replace(db, template="huge")))


def test_demo_destroys_one_group_when_the_other_cannot_be_acquired(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _failing_db_group(monkeypatch)
    result = CliRunner().invoke(main, ["demo", "--web", "3", "--db", "2", "--boot-delay", "30"])
    assert result.exit_code == 1, result.output
    assert "DoesNotExist" in result.output
    assert "huge" in result.output
    assert asyncio.run(_live("web")) == []


def test_demo_stops_the_cloud_it_started_when_it_fails(
    own_cloud: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _failing_db_group(monkeypatch)
    result = CliRunner().invoke(main, ["demo", "--web", "2", "--db", "1", "--boot-delay", "30"])
    assert result.exit_code == 1, result.output
    assert asyncio.run(cloud_pid(own_cloud)) is None


@pytest.mark.asyncio
async def test_cancelled_demo_tears_down_and_stops_the_cloud_it_started(own_cloud: Path) -> None:
    groups = tuple(dataclasses.replace(g, count=2) for g in cli.GROUPS)
    task = asyncio.ensure_future(cli._demo(groups, "30"))  # boots "forever"
    async with asyncio.timeout(STEP):
        while len(await _live("web")) + len(await _live("db")) < 4:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await cloud_pid(own_cloud) is None


async def _vm_count(directory: Path) -> int:
    """How many VMs the cloud of ``directory`` holds (0 while it does not run)."""
    client = CloudClient(directory)
    try:
        return len(await client.call("list", {"tags": []}, start=False))
    except aiores.AioresError:
        return 0
    finally:
        await client.close()


def test_ctrl_c_stops_the_demo_with_exit_status_130(own_cloud: Path, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "AIORES_SIM_DIR": str(own_cloud),
        "AIORES_STATE_DIR": str(tmp_path),
        "PYTHONASYNCIODEBUG": "",  # no slow-callback notes on stderr
    }
    argv = [sys.executable, "-m", "aiores", "demo", "--web", "2", "--db", "1"]
    demo = subprocess.Popen(
        [*argv, "--boot-delay", "30"],  # boots "forever"
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        due = time.monotonic() + STEP
        while asyncio.run(_vm_count(own_cloud)) < 3:
            assert demo.poll() is None, demo.communicate()
            assert time.monotonic() < due, "the demo did not acquire its VMs"
            time.sleep(0.05)
        demo.send_signal(signal.SIGINT)
        _, err = demo.communicate(timeout=STEP)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.communicate()
    assert demo.returncode == 130, err
    assert err.splitlines() == ["aiores: interrupted"]
    assert asyncio.run(cloud_pid(own_cloud)) is None  # it started the cloud: stopped, VMs gone


def test_sim_start_status_stop(own_cloud: Path) -> None:
    runner = CliRunner()
    assert "no sim cloud runs" in runner.invoke(main, ["sim", "status"]).output
    started = runner.invoke(main, ["sim", "start"])
    assert started.exit_code == 0, started.output
    assert "sim cloud running" in started.output
    status = runner.invoke(main, ["sim", "status"])
    assert f"sim cloud running in {own_cloud}" in status.output
    assert "0 VMs" in status.output
    assert "isolation: " in status.output  # which is in effect, whichever it is
    stopped = runner.invoke(main, ["sim", "stop"])
    assert stopped.exit_code == 0, stopped.output
    assert "stopped" in stopped.output
    assert "no sim cloud runs" in runner.invoke(main, ["sim", "stop"]).output


def test_sim_status_shows_whole_ids_and_access_urls_on_a_narrow_terminal(
    own_cloud: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIORES_STATE_DIR", str(tmp_path / "state"))
    runner = CliRunner()
    made = runner.invoke(main, ["provision", "sim://", "--count", "2", "--json"])
    assert made.exit_code == 0, made.output
    vms = json.loads(made.stdout)
    assert len(vms) == 2
    try:
        status = runner.invoke(main, ["sim", "status"], env={"COLUMNS": "80"})
        assert status.exit_code == 0, status.output
        for vm in vms:
            assert vm["access"].startswith("ssh://")
            assert vm["access"] in status.output  # the port included, nothing cut
            assert vm["native_id"] in status.output
    finally:
        gone = runner.invoke(main, ["deprovision", *(vm["id"] for vm in vms)])
        assert gone.exit_code == 0, gone.output


def test_a_provision_that_starts_the_cloud_says_nothing_more_on_stderr(
    own_cloud: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "AIORES_STATE_DIR": str(tmp_path / "state")}

    def aiores_cmd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "aiores", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    made = aiores_cmd("provision", "sim://", "--count", "1", "--json")
    assert made.returncode == 0, made.stderr
    (vm,) = json.loads(made.stdout)
    try:
        # Closing the session while the cloud's control connection ends is no error.
        assert "Traceback" not in made.stderr, made.stderr
        assert "IncorrectState" not in made.stderr, made.stderr
    finally:
        gone = aiores_cmd("deprovision", vm["id"])
        assert gone.returncode == 0, gone.stderr
