from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

import aiores
from aiores.testing import FakeClock, FakePlugin, FakeSSHPlugin


@pytest.fixture
def fake() -> Iterator[FakePlugin]:
    """The fake backend, registered as fake:// for one test."""
    plugin = FakePlugin()
    aiores.register_adaptor(plugin)
    try:
        yield plugin
    finally:
        aiores.unregister_adaptor(plugin.name)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest_asyncio.fixture
async def session(fake: FakePlugin, clock: FakeClock) -> AsyncIterator[aiores.Session]:
    async with aiores.Session(clock=clock, cleanup_timeout=5) as s:
        yield s


@pytest.fixture
def fake_ssh(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSSHPlugin]:
    """fake-ssh:// registered, and counted as a scheme whose answer means "ready"."""
    plugin = FakeSSHPlugin()
    monkeypatch.setattr("aiores._resource.READY_SCHEMES", {"ssh", "fake-ssh"})
    aiores.register_adaptor(plugin)
    try:
        yield plugin
    finally:
        aiores.unregister_adaptor(plugin.name)
