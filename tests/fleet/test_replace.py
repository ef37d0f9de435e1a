"""Failed boots: every one reported, and replaced with ``wait(replace_failed=N)``."""

from __future__ import annotations

import random

import pytest

import aiores
from aiores import ComputeDescription, ResourceState

from .conftest import STEP

COUNT = 8
FAILURE = 0.4


def _fails(seed: int, count: int) -> list[int]:
    """Which VMs of one acquire fail to boot under ``seed``.

    The sim cloud draws each VM's faults from ``random.Random(f"{seed}:{index}")``,
    index within its acquire; with a fixed boot delay the first draw decides the boot.
    """
    return [i for i in range(count) if random.Random(f"{seed}:{i}").random() < FAILURE]


def _seed(failures: int) -> int:
    """A seed under which ``failures`` of COUNT VMs fail, none of the first ones: a
    replacement acquire of up to ``failures`` VMs (indices 0, 1...) then boots."""
    for seed in range(10_000):
        fails = _fails(seed, COUNT)
        if len(fails) == failures and min(fails) >= failures:
            return seed
    raise AssertionError("no such seed")


def _url(seed: int) -> str:
    return f"sim://?boot_delay=0.02&boot_failure={FAILURE}&seed={seed}"


@pytest.mark.asyncio
async def test_every_failed_boot_is_reported_then_replaced(session: aiores.Session) -> None:
    seed = _seed(3)
    async with session.fleet() as fleet:
        provision = fleet.provision(_url(seed), ComputeDescription(), count=COUNT, tags="work")
        fleet.provision("sim://?boot_delay=0.02", ComputeDescription(), count=2, tags="other")
        with pytest.raises(aiores.FanOutError) as caught:
            await fleet.wait(timeout=STEP)
        machines = await provision
        failed = [machines[i] for i in _fails(seed, COUNT)]
        assert [vm.state for vm in failed] == [ResourceState.FAILED] * 3
        assert len(caught.value.exceptions) == 3  # every failure, not the first
        for exc, vm in zip(caught.value.exceptions, failed, strict=True):
            assert isinstance(exc, aiores.IncorrectState)
            assert vm.id in str(exc)
            assert "boot failed" in str(exc)
        assert list(caught.value.results) == fleet.list()  # all 10 selected
        # A group with failed machines reports them per host.
        result = await fleet.select("work").run("true", check=False)
        assert [r.resource for r in result.failed] == failed
        assert all(isinstance(r.error, aiores.IncorrectState) for r in result.failed)

        tags = [fleet.tags_of(vm) for vm in failed]
        group = await fleet.wait("work", timeout=STEP, replace_failed=3)
        assert len(group) == COUNT
        assert all(vm.state is ResourceState.ACTIVE for vm in group)
        assert not set(failed) & set(group)
        # Each replacement took its failed machine's place: index, tags, description.
        fresh = [group[i] for i in _fails(seed, COUNT)]
        assert [fleet.tags_of(vm) for vm in fresh] == tags
        assert all(vm.description == machines[0].description for vm in fresh)
        assert (await group.run("true")).ok
        assert len(await fleet.wait(timeout=STEP)) == COUNT + 2
    assert all(vm.state is ResourceState.CANCELED for vm in group)


@pytest.mark.asyncio
async def test_failures_beyond_replace_failed_are_raised(session: aiores.Session) -> None:
    seed = _seed(3)
    async with session.fleet() as fleet:
        fleet.provision(_url(seed), ComputeDescription(), count=COUNT)
        with pytest.raises(aiores.FanOutError, match="2 machine") as caught:
            await fleet.wait(timeout=STEP, replace_failed=1)
        assert len(caught.value.exceptions) == 2
        states = [vm.state for vm in fleet.list()]
        assert states.count(ResourceState.ACTIVE) == COUNT - 2
        assert states.count(ResourceState.FAILED) == 2


@pytest.mark.asyncio
async def test_a_failed_provision_is_reported(session: aiores.Session) -> None:
    async with session.fleet() as fleet:
        bad = fleet.provision("sim://", ComputeDescription(template="huge"), count=2, tags="bad")
        fleet.provision("sim://?boot_delay=0.02", ComputeDescription(), count=1, tags="good")
        assert len(await fleet.wait("good", timeout=STEP)) == 1
        with pytest.raises(aiores.FanOutError) as caught:
            await fleet.wait(timeout=STEP, replace_failed=5)
        [error] = caught.value.exceptions
        assert isinstance(error, aiores.DoesNotExist)
        with pytest.raises(aiores.DoesNotExist, match="huge"):
            await bad
        assert fleet.list("bad") == []


@pytest.mark.asyncio
async def test_a_machine_with_a_wrong_host_key_is_reported_not_replaced(
    session: aiores.Session,
) -> None:
    async with session.fleet() as fleet:
        fleet.provision("sim://?boot_delay=0.02&wrong_host_key=1", ComputeDescription())
        with pytest.raises(aiores.FanOutError) as caught:
            await fleet.wait(timeout=STEP, replace_failed=3)
        [error] = caught.value.exceptions
        assert isinstance(error, aiores.HostKeyError)
        [vm] = fleet.list()
        assert caught.value.results == (vm,)  # the same machine: not replaced
        assert not vm.state.final
