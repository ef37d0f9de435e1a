"""The resource contract: ``session.manager(url)`` on every backend.

acquire -> ACTIVE (for machines: the backend says running, ``ready=None``), list by
tags, get by id from a new Session, destroy -> a final state, and neither destroy
nor get of an id the backend does not know does harm (get raises DoesNotExist).
"""

from __future__ import annotations

import dataclasses
import secrets

import pytest

import aiores
from aiores import ResourceState

from .conftest import STEP, Backend

pytestmark = pytest.mark.asyncio


async def refused(backend: Backend) -> bool:
    """True (having checked NotSupported) if the backend has no resource manager."""
    if backend.has("resources"):
        return False
    async with backend.session() as session:
        with pytest.raises(aiores.NotSupported):
            session.manager(backend.resources_url)
    return True


def tagged(backend: Backend) -> tuple[str, aiores.ComputeDescription | aiores.StorageDescription]:
    tag = f"contract-{secrets.token_hex(3)}"
    return tag, dataclasses.replace(backend.description, tags=frozenset({tag, "contract"}))


async def test_acquire_list_destroy(backend: Backend) -> None:
    if await refused(backend):
        return
    tag, desc = tagged(backend)
    async with backend.session() as session:
        mgr = session.manager(backend.resources_url)
        res = await mgr.acquire(desc)
        try:
            assert await res.wait(ResourceState.ACTIVE, timeout=STEP) is ResourceState.ACTIVE
            assert res.tags >= {tag, "contract"}
            storage = isinstance(desc, aiores.StorageDescription)
            assert res.rtype == ("storage" if storage else "compute")
            assert [r.id for r in await mgr.list(tags=[tag])] == [res.id]
            assert res.id not in [r.id for r in await mgr.list(tags=[tag, "not-this-one"])]
        finally:
            await res.destroy()
        assert res.state is ResourceState.CANCELED
        assert await res.wait(timeout=STEP) is ResourceState.CANCELED
        assert res.id not in [r.id for r in await mgr.list(tags=[tag])]


async def test_found_again_by_id_from_a_new_session(backend: Backend) -> None:
    """The description comes back from the journal: a machine acquired with
    ``ready=None`` (moto's, with no SSH) is ACTIVE again once the backend says running."""
    if await refused(backend):
        return
    tag, desc = tagged(backend)
    async with backend.session() as first:
        res = await first.manager(backend.resources_url).acquire(desc)
        await res.wait(ResourceState.ACTIVE, timeout=STEP)
    try:
        async with backend.session() as second:
            mgr = second.manager(backend.resources_url)
            if not backend.has("resource_reconnect"):  # its leases live in its session
                with pytest.raises(aiores.DoesNotExist):
                    await mgr.get(res.id)
                return
            found = await mgr.get(res.id)
            assert found.id == res.id
            assert found.tags >= {tag}
            assert found.description == desc
            assert await found.wait(ResourceState.ACTIVE, timeout=5) is ResourceState.ACTIVE
    finally:
        async with backend.session() as third:
            await third.manager(backend.resources_url).destroy(res.id)


async def test_unknown_ids(backend: Backend) -> None:
    if await refused(backend):
        return
    async with backend.session() as session:
        mgr = session.manager(backend.resources_url)
        with pytest.raises(aiores.DoesNotExist):
            await mgr.get(backend.unknown_id)
        await mgr.destroy(backend.unknown_id)  # gone already: no error
