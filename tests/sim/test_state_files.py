"""The sim cloud's state files are its user's alone (0600), whatever the umask and directory."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

import aiores
from aiores import ComputeDescription, ResourceState
from aiores_sim import Cloud

from .conftest import STEP


def _modes(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode)
        for p in root.rglob("*")
        if p.is_file() and not p.is_socket()
    }


@pytest.mark.asyncio
async def test_state_files_are_0600_in_a_0755_state_dir(
    monkeypatch: pytest.MonkeyPatch, state_dir: Path
) -> None:
    old = os.umask(0o022)
    try:
        await asyncio.to_thread(state_dir.mkdir)
        os.chmod(state_dir, 0o755)
        directory = state_dir / "sim"
        monkeypatch.setenv("AIORES_SIM_DIR", str(directory))
        async with Cloud(directory), aiores.Session() as session:
            mgr = session.manager("sim://?boot_delay=0.05")
            secret = "#!/bin/sh\necho user-data-secret\n"
            vm = await mgr.acquire(ComputeDescription(user_data=secret))
            async with asyncio.timeout(STEP):
                await vm.wait(ResourceState.ACTIVE)
            assert session.journal is not None
            await session.journal.flush()
            modes = await asyncio.to_thread(_modes, state_dir)
            await vm.destroy()
    finally:
        os.umask(old)
    assert {
        "journal.sqlite",
        "journal.sqlite-wal",
        "keys/id_ed25519",
        "keys/id_ed25519.pub",
        "sim/cloud.pid",
        "sim/cloud.lock",
        f"sim/vms/{vm.native_id}/.sim/vm.json",
        f"sim/vms/{vm.native_id}/.sim/user-data",
    } <= set(modes)
    assert {name: mode for name, mode in modes.items() if mode != 0o600} == {}
