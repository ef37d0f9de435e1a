"""Each docker:// test starts from an empty daemon.

The podman service (:mod:`tests.docker.podman`) is shared with the contract suite,
whose job containers stay until reaped; the tests here check that the containers they
made are gone by finding the daemon empty, so whatever came before is removed first.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest_asyncio

from .podman import Podman


@pytest_asyncio.fixture(autouse=True)
async def empty_daemon(podman: Podman) -> AsyncIterator[None]:
    await asyncio.to_thread(podman.cli, "rm", "-af", "-t", "0")
    assert await asyncio.to_thread(podman.containers) == []
    yield
