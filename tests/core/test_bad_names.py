"""Ids and login names that cannot be what they claim are refused with BadParameter."""

from __future__ import annotations

import pytest

import aiores
from aiores import ComputeDescription, ResourceState
from aiores.testing import FakePlugin

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("bad", ["[local://]-[\ud800]", "[local://]-[a\x00b]", "\ud800", "a\x00"])
async def test_a_job_id_with_a_nul_or_a_lone_surrogate_is_refused(bad: str) -> None:
    async with aiores.Session(journal=None) as session:
        with pytest.raises(aiores.BadParameter, match="job id"):
            await session.job_service("local://").get(bad)


@pytest.mark.parametrize("user", ["wf\n", "w f", "-oProxyCommand=id", "a@b", "a:b", "a/b", ""])
async def test_a_login_name_that_is_no_name_is_refused(
    session: aiores.Session, fake: FakePlugin, user: str
) -> None:
    vm = await session.manager("fake://").acquire(ComputeDescription(image="fake-linux"))
    fake.cloud.set_state(vm.native_id, ResourceState.ACTIVE)
    await vm.wait(ResourceState.ACTIVE, timeout=5)
    with pytest.raises(aiores.BadParameter, match="user"):
        vm.access_as(user)
    assert vm.access_as("wf").startswith("fake-ssh://wf@")
