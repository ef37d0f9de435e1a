"""The ``aiores_sim_cloud`` fixture as a user's test suite sees it (run in a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from aiores_sim.testing import SimCloudProcess

from .conftest import STEP

CONFTEST = 'pytest_plugins = ["aiores_sim.testing"]\n'

USES_A_VM = textwrap.dedent(
    """
    import asyncio, os
    from pathlib import Path

    import aiores

    def test_a_vm(aiores_sim_cloud):
        async def main():
            async with aiores.Session() as session:
                mgr = session.manager("sim://?boot_delay=0.05")
                vm = await mgr.acquire(aiores.ComputeDescription(ready=None))
                await vm.destroy()

        asyncio.run(main())
        state = Path(os.environ["AIORES_STATE_DIR"])
        assert (state / "keys" / "id_ed25519").exists()
        Path(os.environ["REPORT"]).write_text(str(state))
    """
)

KILLED = textwrap.dedent(
    """
    import os, signal
    from pathlib import Path

    def test_killed(aiores_sim_cloud):
        report = f"{aiores_sim_cloud.directory}\\n{aiores_sim_cloud.pid}\\n"
        Path(os.environ["REPORT"]).write_text(report)
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


def _suite(tmp_path: Path, test: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text(CONFTEST)
    (suite / "test_user.py").write_text(test)
    report = tmp_path / "report"
    env = dict(os.environ, REPORT=str(report))
    env.pop("AIORES_SIM_DIR")  # the user's own settings, not this suite's
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite)],
        cwd=suite,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done, report


def test_a_users_suite_keeps_out_of_their_state_dir(tmp_path: Path, state_dir: Path) -> None:
    done, report = _suite(tmp_path, USES_A_VM)
    assert done.returncode == 0, done.stdout + done.stderr
    used = Path(report.read_text())
    assert used != state_dir
    assert not state_dir.exists()  # the user's own state dir: no managed key, no journal


def test_a_killed_test_session_does_not_leave_its_cloud(tmp_path: Path) -> None:
    done, report = _suite(tmp_path, KILLED)
    assert done.returncode < 0, done.stdout + done.stderr  # killed
    directory, pid = report.read_text().split()
    cloud = SimCloudProcess(Path(directory), int(pid))
    try:
        deadline = time.monotonic() + STEP
        while cloud.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not cloud.alive()
        assert cloud.leftovers() == []
    finally:
        cloud.stop()
