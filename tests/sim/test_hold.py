"""Jobs submitted held on a sim VM (through ssh://): found HELD by another program,
which releases one and cancels the other (that one never starts)."""

from __future__ import annotations

from pathlib import Path

import pytest

import aiores

from ..ssh.test_hold import release_and_cancel_found_jobs, submit_held_elsewhere
from .conftest import booted, pinned_context


@pytest.mark.asyncio
async def test_a_held_job_on_a_vm_is_found_again_by_another_program(state_dir: Path) -> None:
    async with booted(1, state_dir=state_dir) as (_, vms):
        (vm,) = vms
        assert vm.access is not None
        ctx = pinned_context(state_dir, vms)
        flag = Path(vm.extra["disk"]) / "started"
        ids = await submit_held_elsewhere(vm.access, ctx, "echo released", f"touch {flag}")
        async with aiores.Session(contexts=[ctx]) as second:
            await release_and_cancel_found_jobs(second, ids, flag)
