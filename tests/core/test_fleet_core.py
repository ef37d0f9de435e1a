"""Fleet logic on the fake backend: teardown with a stuck cloud, early cancellation, tags."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

import aiores
from aiores import ComputeDescription, ResourceState
from aiores.testing import FakePlugin

DESC = ComputeDescription(image="fake-linux", ready=None)


class OtherCloud(FakePlugin):
    name = "fake2"
    schemes = frozenset({"fake2"})


@pytest.fixture
def other() -> Iterator[OtherCloud]:
    plugin = OtherCloud()
    aiores.register_adaptor(plugin)
    try:
        yield plugin
    finally:
        aiores.unregister_adaptor(plugin.name)


@pytest.mark.asyncio
async def test_a_stuck_cloud_does_not_keep_teardown_from_the_others(
    fake: FakePlugin, other: OtherCloud
) -> None:
    async with aiores.Session(journal=None, cleanup_timeout=0.5) as session:
        fleet = session.fleet()
        booted = await fleet.provision("fake://", DESC, count=3)
        # The other cloud accepts nothing and cannot even be asked what it made.
        stuck = other.cloud.pause_at("acquire:before")
        other.cloud.pause_at("find")
        fleet.provision("fake2://", DESC, count=2)
        await stuck.wait()
        await fleet.aclose()  # bounded by cleanup_timeout
        assert fake.cloud.alive() == []
        assert {vm.state for vm in booted} == {ResourceState.CANCELED}


@pytest.mark.asyncio
async def test_a_provision_cancelled_before_it_began_says_so(fake: FakePlugin) -> None:
    async with aiores.Session(journal=None) as session:
        provision = session.fleet().provision("fake://", DESC, count=2)
    with pytest.raises(aiores.IncorrectState, match="cancelled before it began"):
        await asyncio.wait_for(provision.result(), 5)
    assert fake.cloud.resources == {}


@pytest.mark.asyncio
async def test_wait_with_no_time_left_answers_for_machines_already_up(
    session: aiores.Session, fake: FakePlugin
) -> None:
    fleet = session.fleet()
    vms = await fleet.provision("fake://", DESC, count=2, tags={"web"})
    with pytest.raises(aiores.Timeout, match="2 of 2 machines tagged web not ACTIVE"):
        await fleet.wait("web", timeout=0)
    for vm in vms:
        fake.cloud.set_state(vm.native_id, ResourceState.ACTIVE)
    await fleet.wait("web", timeout=5)
    group = await fleet.wait("web", timeout=0)
    assert list(group) == vms


@pytest.mark.asyncio
async def test_tags_that_would_mix_with_the_default_tags_are_refused(
    session: aiores.Session, fake: FakePlugin
) -> None:
    fleet = session.fleet()
    with pytest.raises(aiores.BadParameter, match="all digits, like the index tags"):
        fleet.provision("fake://", DESC, tags={"1"})
    with pytest.raises(aiores.BadParameter, match="names a cloud"):
        fleet.provision("fake://", DESC, tags={"local"})
    with pytest.raises(aiores.BadParameter, match="names a cloud"):
        fleet.provision("fake://", DESC.replace(tags={"ssh"}))
    vms = await fleet.provision("fake://", DESC, count=2, tags={"web"})
    assert fleet.list("fake", "1") == [vms[1]]
    assert fleet.list("web", "fake") == vms
