"""Pools on the simulated cloud: real machines, real commands, preemption, cancellation."""

from __future__ import annotations

import asyncio
import random
import secrets
from pathlib import Path

import psutil
import pytest

import aiores
from aiores import ComputeDescription

#: A sim cloud whose VMs boot at once.
FAST = "sim://?boot_delay=0.01-0.05"
#: Real seconds any one wait here may take.
STEP = 30.0


async def _left(session: aiores.Session, tag: str) -> list[aiores.Resource]:
    """The machines tagged ``tag`` that the cloud still runs."""
    found = await session.manager(FAST).list(tags=[tag])
    return [vm for vm in found if not vm.state.final]


def _running(mark: str) -> list[int]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] != psutil.STATUS_ZOMBIE and any(mark in a for a in cmdline):
            found.append(proc.pid)
    return found


async def _until_gone(mark: str) -> None:
    async with asyncio.timeout(STEP):
        while await asyncio.to_thread(_running, mark):  # noqa: ASYNC110 (processes elsewhere)
            await asyncio.sleep(0.05)


@pytest.mark.asyncio
async def test_twenty_commands_scale_up_to_max_and_back_to_min(
    sim_session: aiores.Session,
) -> None:
    tag = "pool-" + secrets.token_hex(4)
    sizes: list[int] = []
    async with sim_session.pool(
        FAST,
        ComputeDescription(template="tiny"),
        min=1,
        max=4,
        tags=tag,
        idle_timeout=0.5,
        tick=0.1,
        batch=2,
    ) as pool:
        events = pool.events()

        async def follow() -> None:
            async for _ in events:
                sizes.append(pool.stats().size)

        follower = asyncio.ensure_future(follow())
        commands = [f'sleep 0.2; echo "{i} $AIORES_SIM_VM"' for i in range(20)]
        seen: dict[int, str] = {}
        async with asyncio.timeout(STEP):
            async for index, result in pool.map(commands):
                assert result.ok, result
                number, vm = result.stdout.split()
                assert int(number) == index
                seen[index] = vm
        assert sorted(seen) == list(range(20))
        assert 2 <= len(set(seen.values())) <= 4  # it grew, and never beyond max
        stats = pool.stats()
        assert stats.done == 20
        assert stats.failed == 0
        async with asyncio.timeout(STEP):
            while pool.stats().size > 1 or len(await _left(sim_session, tag)) > 1:  # noqa: ASYNC110 (the cloud)
                await asyncio.sleep(0.05)
        assert len(pool.machines) == 1  # min is kept
    await asyncio.wait_for(follower, STEP)  # the stream ends with the pool
    assert max(sizes) == 4
    assert await _left(sim_session, tag) == []


@pytest.mark.asyncio
async def test_preempted_machines_work_is_requeued_and_completed_elsewhere(
    sim_session: aiores.Session, tmp_path: Path
) -> None:
    tag = "pool-" + secrets.token_hex(4)
    mark = secrets.token_hex(6)
    done = tmp_path / "started"
    # The first attempt outlives its machine; the one after finds it was started.
    command = (
        f"if [ -e {done} ]; then echo again; exit 0; fi; "
        f"echo $AIORES_SIM_VM > {done}; sleep 30.{int(mark, 16) % 10**6:06d}"
    )
    desc = ComputeDescription(template="tiny", user_data="#sim: preempt_after=0.5 preempt_notice=2")
    drained: list[str] = []

    async def drain(vm: aiores.Compute, left: float) -> None:
        drained.append(vm.native_id)

    async with sim_session.pool(
        FAST, desc, min=1, max=2, tags=tag, margin=0.5, tick=0.1, drain=drain
    ) as pool:
        events = pool.events()
        result = await asyncio.wait_for(pool.run(command), STEP)
        assert result.ok
        assert result.stdout.strip() == "again"
        first = done.read_text().strip()
        assert result.resource is not None
        assert result.resource.native_id != first
        assert first in drained
        kinds = []
        async with asyncio.timeout(STEP):
            async for event in events:
                kinds.append((event.kind, event.resource and event.resource.native_id))
                if ("requeue", first) in kinds:
                    break
        assert ("revoked", first) in kinds
        assert pool.stats().requeued == 1
        await _until_gone(f"30.{int(mark, 16) % 10**6:06d}")  # stopped, not left running
        await events.aclose()
    assert await _left(sim_session, tag) == []


@pytest.mark.asyncio
async def test_cancelling_the_pool_block_at_random_points_leaves_no_machine(
    sim_session: aiores.Session,
) -> None:
    tag = "pool-" + secrets.token_hex(4)
    rng = random.Random(secrets.randbits(32))
    for trial in range(5):
        mark = f"{secrets.randbelow(10**6):06d}"

        async def body(mark: str = mark) -> None:
            async with sim_session.pool(
                FAST, ComputeDescription(template="tiny"), min=1, max=3, tags=tag, tick=0.1
            ) as pool:
                async for _ in pool.map([f"sleep 20.{mark}{i}" for i in range(6)]):
                    pass

        task = asyncio.ensure_future(body())
        await asyncio.sleep(rng.uniform(0.0, 1.5))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, STEP)
        assert await _left(sim_session, tag) == [], f"trial {trial}"
        await _until_gone(f"20.{mark}")
