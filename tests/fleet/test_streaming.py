"""Group output as lines as they arrive (``on_line``): sim VMs, and fake hosts for the
splitting rules."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

import aiores
from aiores import ComputeDescription, Group, RunResult
from aiores.testing import FakePlugin, FakeSSHPlugin

from .conftest import FAST, STEP

Line = tuple[str, str, str]  # (machine id, stream, line)


class Lines:
    """What on_line was given, awaitable line by line."""

    def __init__(self) -> None:
        self.seen: list[Line] = []
        self.queue: asyncio.Queue[Line] = asyncio.Queue()

    def __call__(self, vm: aiores.Compute, stream: str, line: str) -> None:
        self.seen.append((vm.id, stream, line))
        self.queue.put_nowait((vm.id, stream, line))

    async def take(self, count: int) -> set[Line]:
        async with asyncio.timeout(STEP):
            return {await self.queue.get() for _ in range(count)}


@pytest.mark.asyncio
async def test_lines_arrive_while_every_machine_still_runs(session: aiores.Session) -> None:
    async with session.fleet() as fleet:
        fleet.provision(FAST, ComputeDescription(template="tiny"), count=3)
        group = await fleet.wait(timeout=STEP)
        lines = Lines()
        command = "mkfifo go || exit 9; echo one; echo two >&2; printf tail; read x < go; rm go"
        stream = group.run_stream(command, timeout=STEP, on_line=lines)
        async with contextlib.aclosing(stream) as results:
            first = asyncio.ensure_future(anext(results))
            early = await lines.take(6)
            assert early == {
                (vm.id, s, t) for vm in group for s, t in [("stdout", "one"), ("stderr", "two")]
            }
            assert not first.done()  # every machine waits on its fifo
            assert lines.queue.empty()  # "tail" has no newline yet: held back
            for vm in group:
                assert (await vm.run("echo > go", timeout=STEP)).ok
            done = [await asyncio.wait_for(first, STEP)]
            done += [result async for result in results]
        assert sorted(r.resource.id for r in done if r.resource) == sorted(vm.id for vm in group)
        assert all(r.ok and (r.stdout, r.stderr) == ("one\ntail", "two\n") for r in done)
        # Each machine's last line came when its run ended, before its result.
        assert sorted(lines.seen[6:]) == sorted((vm.id, "stdout", "tail") for vm in group)


@pytest.fixture
def fake_hosts(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakePlugin, FakeSSHPlugin]]:
    """fake:// machines whose commands fake-ssh:// answers."""
    fake, ssh = FakePlugin(), FakeSSHPlugin()
    monkeypatch.setattr("aiores._resource.READY_SCHEMES", {"ssh", "fake-ssh"})
    aiores.register_adaptor(fake)
    aiores.register_adaptor(ssh)
    try:
        yield fake, ssh
    finally:
        aiores.unregister_adaptor(ssh.name)
        aiores.unregister_adaptor(fake.name)


@pytest_asyncio.fixture
async def fake_group(fake_hosts: tuple[FakePlugin, FakeSSHPlugin]) -> AsyncIterator[Group]:
    async with aiores.Session(journal=None) as session:
        # Commands reach a machine that has an access URL (PENDING here): no boot wait.
        vms = await session.manager("fake://").acquire_many(ComputeDescription(ready=None), 2)
        yield Group(vms)


@pytest.mark.asyncio
async def test_chunks_become_lines_per_machine_and_stream(
    fake_group: Group, fake_hosts: tuple[FakePlugin, FakeSSHPlugin]
) -> None:
    _, ssh = fake_hosts
    ssh.chunk_size = 3  # cuts lines, and the two bytes of "é"
    output = RunResult(exit_status=0, stdout="xhé\n\nworld\nlast", stderr="e1\ne2\n")
    ssh.outcomes = [output, output]
    lines = Lines()
    results = await fake_group.run("make", on_line=lines)
    for vm, result in zip(fake_group, results, strict=True):
        assert result.stdout == "xhé\n\nworld\nlast"
        mine = [(s, t) for rid, s, t in lines.seen if rid == vm.id]
        assert [t for s, t in mine if s == "stdout"] == ["xhé", "", "world", "last"]
        assert [t for s, t in mine if s == "stderr"] == ["e1", "e2"]


@pytest.mark.asyncio
async def test_a_failing_on_line_fails_its_machine_only(
    fake_group: Group, fake_hosts: tuple[FakePlugin, FakeSSHPlugin]
) -> None:
    _, ssh = fake_hosts
    ssh.outcomes = [RunResult(exit_status=0, stdout="boom\n"), RunResult(exit_status=0)]

    def on_line(vm: aiores.Compute, stream: str, line: str) -> None:
        raise ValueError(f"cannot show {line!r}")

    results = await fake_group.run("x", check=False, on_line=on_line)
    errors = [r.error for r in results]
    assert sum(isinstance(e, ValueError) for e in errors) == 1
    assert errors.count(None) == 1


@pytest.mark.asyncio
async def test_the_login_rule_is_the_machines_own(
    fake_group: Group, fake_hosts: tuple[FakePlugin, FakeSSHPlugin]
) -> None:
    _, ssh = fake_hosts
    for bad in ("", "a@b"):
        with pytest.raises(aiores.BadParameter):
            await fake_group.run("true", user=bad)
        with pytest.raises(aiores.BadParameter):
            await fake_group.get("f", "out", user=bad)
    with pytest.raises(aiores.BadParameter, match="on_line"):
        await fake_group.run("true", on_line="print")  # type: ignore[arg-type]
    assert ssh.commands == []
    await fake_group.run("id -un", user="wf")
    assert ssh.commands == [("fake-ssh://wf@vm", "id -un")] * 2
