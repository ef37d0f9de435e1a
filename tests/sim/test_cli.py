"""The ``aiores`` command: ``aiores demo`` and ``aiores sim start|stop|status``."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from aiores.cli import main


def test_demo_boots_fans_out_and_tears_down() -> None:
    result = CliRunner().invoke(main, ["demo", "--web", "3", "--db", "2", "--boot-delay", "0.05"])
    assert result.exit_code == 0, result.output
    assert "5 simulated VMs in 2 tagged groups (3 web, 2 db)" in result.output
    assert result.output.count("index.html 27 bytes") == 3
    assert result.output.count("schema.sql sha256 ") == 2
    assert "5/5 hosts ran their command; now 5 CANCELED" in result.output
    assert "stopping the sim cloud" not in result.output  # it was running before: it stays


def test_sim_start_status_stop(own_cloud: Path) -> None:
    runner = CliRunner()
    assert "no sim cloud runs" in runner.invoke(main, ["sim", "status"]).output
    started = runner.invoke(main, ["sim", "start"])
    assert started.exit_code == 0, started.output
    assert "sim cloud running" in started.output
    status = runner.invoke(main, ["sim", "status"])
    assert f"sim cloud running in {own_cloud}" in status.output
    assert "0 VMs" in status.output
    stopped = runner.invoke(main, ["sim", "stop"])
    assert stopped.exit_code == 0, stopped.output
    assert "stopped" in stopped.output
    assert "no sim cloud runs" in runner.invoke(main, ["sim", "stop"]).output
