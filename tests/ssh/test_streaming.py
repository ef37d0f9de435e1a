"""SSHCommandRunner hands output over as the channel delivers it (on_output)."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from tests.local.test_streaming import Chunks

from .conftest import STEP, Adaptors, gone, wait_until
from .servers import Sshd


@pytest.mark.asyncio
async def test_output_arrives_while_the_command_runs(adaptors: Adaptors, sshd: Sshd) -> None:
    runner = await adaptors.runner(sshd.url())
    fifo = f"$HOME/stream-{secrets.token_hex(4)}"
    command = (
        f"mkfifo {fifo} || exit 9; echo first; echo warn >&2; "
        f"read go < {fifo}; rm -f {fifo}; echo second"
    )
    chunks = Chunks()
    task = asyncio.create_task(runner.run(command, on_output=chunks))
    await chunks.until("stdout", b"first\n")  # the pid line the runner reads is not shown
    await chunks.until("stderr", b"warn\n")
    assert not task.done()  # it waits on the fifo until the test writes to it
    released = await runner.run(f"echo go > {fifo}", timeout=STEP)
    assert released.ok, released
    result = await asyncio.wait_for(task, STEP)
    assert (result.exit_status, result.stdout, result.stderr) == (0, "first\nsecond\n", "warn\n")
    assert chunks.joined("stdout") == b"first\nsecond\n"
    assert chunks.joined("stderr") == b"warn\n"


@pytest.mark.asyncio
async def test_a_failing_on_output_stops_the_command(adaptors: Adaptors, sshd: Sshd) -> None:
    runner = await adaptors.runner(sshd.url())
    runner.kill_grace = 0.5
    given: list[bytes] = []

    def broken(stream: str, chunk: bytes) -> None:
        given.append(chunk)
        raise ValueError("the caller's bug")

    with pytest.raises(ValueError, match="the caller's bug"):
        await asyncio.wait_for(runner.run("echo $$; exec sleep 30", on_output=broken), STEP)
    assert len(given) == 1  # not called again once it raised
    pid = int(given[0].split()[0])
    await wait_until(lambda: gone(pid))
