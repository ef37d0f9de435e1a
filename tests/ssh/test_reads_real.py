"""Answers kept past a turn on real connections (OpenSSH on loopback): a gate of one
connection per iteration, large outputs, streaming and cancellation all at once."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from pathlib import Path
from typing import Any

import psutil
import pytest

import aiores_ssh._pool
from aiores.adaptor import concurrency

from .conftest import STEP, USER, FakeEnv, opened, wait_until
from .servers import Sshd

#: Lines each command prints: about 1.3 MB, many SSH packets and window adjusts.
_LINES = 200_000


def _expected() -> str:
    return "".join(f"{i}\n" for i in range(1, _LINES + 1))


def _count_kept(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times bytes were kept past a turn (TurnGate.later), counted."""
    kept = [0]
    plain = concurrency.TurnGate.later

    def later(self: concurrency.TurnGate, callback: Any) -> None:
        kept[0] += 1
        plain(self, callback)

    monkeypatch.setattr(concurrency.TurnGate, "later", later)
    return kept


def _running(text: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if text in " ".join(proc.info["cmdline"] or ()):
            found.append(proc)
    return found


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_large_streamed_and_cancelled_runs_through_a_saturated_gate(
    sshd_permissive: Sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight connections (one channel each) behind a gate of one connection per
    iteration: every large output is whole and in order, the streamed one hands
    over the same bytes, the runs cancelled while their answers come leave no
    command, channel or slot behind, and the pool serves runs afterwards."""
    monkeypatch.setattr(aiores_ssh._pool, "_READS_PER_TURN", 1)  # read when the pool is made
    kept = _count_kept(monkeypatch)
    context = sshd_permissive.context(max_sessions=1)
    async with opened(FakeEnv(tmp_path, context)) as made:
        runner = await made.runner(sshd_permissive.url())
        runner.kill_grace = 0.5
        tag = f"{70 + secrets.randbelow(1000) / 1000:.3f}"
        streamed = bytearray()

        def on_output(stream: str, data: bytes) -> None:
            assert stream == "stdout"
            streamed.extend(data)

        whole = [asyncio.ensure_future(runner.run(f"seq 1 {_LINES}")) for _ in range(4)]
        stream = asyncio.ensure_future(runner.run(f"seq 1 {_LINES}", on_output=on_output))
        # Output that never ends, cancelled while it comes in.
        endless = [
            asyncio.ensure_future(runner.run(f"yes {tag} | cat; exec sleep {tag}"))
            for _ in range(3)
        ]
        await wait_until(lambda: len(_running(f"yes {tag}")) >= 3)
        await asyncio.sleep(0.3)  # their answers fill the windows, kept turn after turn
        for task in endless:
            task.cancel()
        async with asyncio.timeout(STEP * 3):
            results = await asyncio.gather(*whole, stream)
            cancelled = await asyncio.gather(*endless, return_exceptions=True)
        assert all(isinstance(c, asyncio.CancelledError) for c in cancelled), cancelled
        expected = _expected()
        for result in results[:4]:
            assert result.ok
            assert hashlib.sha256(result.stdout.encode()).hexdigest() == (
                hashlib.sha256(expected.encode()).hexdigest()
            )
        assert results[4].ok
        assert bytes(streamed) == expected.encode()
        await wait_until(lambda: _running(f"yes {tag}") == [])
        assert runner.pool.channels_in_use() == 0
        assert kept[0] > 10  # the gate was saturated: answers were kept past turns
        assert (await runner.run("echo after")).stdout == "after\n"


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_large_and_cancelled_runs_through_a_jump_host_behind_a_saturated_gate(
    sshd: Sshd, sshd_permissive: Sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tunnelled connection's bytes arrive inside the jump connection's turn and
    go through the same gate of one connection per iteration: large outputs are
    whole, a cancelled endless one leaves nothing running, and both connections
    serve runs afterwards."""
    monkeypatch.setattr(aiores_ssh._pool, "_READS_PER_TURN", 1)
    kept = _count_kept(monkeypatch)
    both = [str(sshd.known_hosts), str(sshd_permissive.known_hosts)]
    ctx = sshd.context(known_hosts=both, jump_host=f"{USER}@127.0.0.1:{sshd_permissive.port}")
    async with opened(FakeEnv(tmp_path, ctx)) as made:
        runner = await made.runner(sshd.url())
        runner.kill_grace = 0.5
        tag = f"{80 + secrets.randbelow(1000) / 1000:.3f}"
        whole = [asyncio.ensure_future(runner.run(f"seq 1 {_LINES}")) for _ in range(3)]
        endless = asyncio.ensure_future(runner.run(f"yes {tag} | cat; exec sleep {tag}"))
        await wait_until(lambda: len(_running(f"yes {tag}")) >= 1)
        await asyncio.sleep(0.3)
        endless.cancel()
        async with asyncio.timeout(STEP * 3):
            results = await asyncio.gather(*whole)
            with pytest.raises(asyncio.CancelledError):
                await endless
        assert [r.stdout == _expected() for r in results] == [True] * 3
        await wait_until(lambda: _running(f"yes {tag}") == [])
        _, target = runner._endpoint()
        assert runner.pool.channels_in_use(target) == 0
        assert runner.pool.channels_in_use() == 1  # the tunnel, on the jump connection
        assert kept[0] > 10  # the gate was saturated: answers were kept past turns
        assert (await runner.run("echo $SSH_CONNECTION")).stdout.startswith("127.0.0.1 ")
        assert runner.pool.connects == 2
