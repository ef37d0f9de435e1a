"""The local:// command runner hands output over as the command writes it (on_output)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from aiores.adaptor import URL
from aiores_local import LocalCommandRunner

from .conftest import STEP, FakeEnv, Fifo, group_members


@pytest_asyncio.fixture
async def runner(env: FakeEnv) -> AsyncIterator[LocalCommandRunner]:
    runner = LocalCommandRunner(URL.parse("local://?grace=0.5"), env)
    await runner.open()
    yield runner
    await runner.aclose()


class Chunks:
    """What on_output was given, awaitable chunk by chunk (the ssh:// tests use it too)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bytes]] = []
        self.queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    def __call__(self, stream: str, chunk: bytes) -> None:
        self.seen.append((stream, chunk))
        self.queue.put_nowait((stream, chunk))

    async def until(self, stream: str, data: bytes) -> None:
        """Wait (bounded) until ``stream`` has carried ``data`` so far."""
        got = b""
        async with asyncio.timeout(STEP):
            while got != data:
                name, chunk = await self.queue.get()
                if name == stream:
                    got += chunk
                assert data.startswith(got), got

    def joined(self, stream: str) -> bytes:
        return b"".join(chunk for name, chunk in self.seen if name == stream)


@pytest.mark.asyncio
async def test_output_arrives_while_the_command_runs(
    runner: LocalCommandRunner, fifo: Fifo
) -> None:
    chunks = Chunks()
    command = f"echo first; echo warn >&2; read go < {fifo.path}; echo second"
    task = asyncio.create_task(runner.run(command, on_output=chunks))
    await chunks.until("stdout", b"first\n")
    await chunks.until("stderr", b"warn\n")
    assert not task.done()  # it waits on the fifo the test has not written yet
    fifo.write(b"go\n")
    result = await asyncio.wait_for(task, STEP)
    assert (result.stdout, result.stderr) == ("first\nsecond\n", "warn\n")
    assert chunks.joined("stdout") == b"first\nsecond\n"
    assert chunks.joined("stderr") == b"warn\n"


@pytest.mark.asyncio
async def test_a_failing_on_output_stops_the_command(
    runner: LocalCommandRunner, fifo: Fifo
) -> None:
    def broken(stream: str, chunk: bytes) -> None:
        raise ValueError("the caller's bug")

    command = f"echo $$ > {fifo.path}; echo out; exec sleep 30"
    task = asyncio.create_task(runner.run(command, on_output=broken))
    pid = int(await fifo.readline())
    with pytest.raises(ValueError, match="the caller's bug"):
        await asyncio.wait_for(task, STEP)
    assert group_members(pid) == []
