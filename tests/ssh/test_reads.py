"""What a pooled connection receives is handled by turns (aiores_ssh._reads), in order.

The protocol here is a recorder standing in for asyncssh's connection (the wrapper
only calls its three callbacks and ``is_closed``); the real connection's case, many
connections answering at once, is tests/ssh/test_runner.py's.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from aiores.adaptor import concurrency
from aiores_ssh._reads import take_turns

from ..loop_turns import iteration_counter


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.closed = False

    def data_received(self, data: bytes, datatype: Any = None) -> None:
        self.events.append(("data", data))

    def eof_received(self) -> bool | None:
        self.events.append(("eof", None))
        self.connection_lost(None)  # as asyncssh's does
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append(("lost", exc))
        self.closed = True

    def is_closed(self) -> bool:
        return self.closed


def _made(gate: concurrency.TurnGate) -> Recorder:
    conn = Recorder()
    take_turns(conn, gate)  # type: ignore[arg-type]  # stands in for a connection
    return conn


@pytest.mark.asyncio
async def test_bytes_past_the_iterations_turns_are_handled_later_in_order() -> None:
    gate = concurrency.TurnGate(per_turn=1)
    first, second = _made(gate), _made(gate)
    first.data_received(b"a")  # this iteration's turn
    second.data_received(b"b")  # none left: kept
    second.data_received(b"c")  # joins what is kept
    assert first.events == [("data", b"a")]
    assert second.events == []
    await asyncio.sleep(0)  # the next iteration's turn
    assert second.events == [("data", b"bc")]


@pytest.mark.asyncio
async def test_the_end_of_stream_waits_behind_the_bytes_before_it() -> None:
    gate = concurrency.TurnGate(per_turn=1)
    _made(gate).data_received(b"x")  # takes the turn
    conn = _made(gate)
    conn.data_received(b"last")
    assert conn.eof_received() is True  # the transport stays open until it is handled
    assert conn.events == []
    await asyncio.sleep(0)
    assert conn.events == [("data", b"last"), ("eof", None), ("lost", None)]


@pytest.mark.asyncio
async def test_a_connection_lost_with_bytes_kept_handles_them_first() -> None:
    gate = concurrency.TurnGate(per_turn=1)
    _made(gate).data_received(b"x")
    conn = _made(gate)
    conn.data_received(b"answer")
    error = ConnectionResetError()
    conn.connection_lost(error)
    assert conn.events == [("data", b"answer"), ("lost", error)]
    await asyncio.sleep(0)  # the turn it had is a no-op now
    assert conn.events == [("data", b"answer"), ("lost", error)]


@pytest.mark.asyncio
async def test_a_connection_closed_meanwhile_drops_what_was_kept() -> None:
    gate = concurrency.TurnGate(per_turn=1)
    _made(gate).data_received(b"x")
    conn = _made(gate)
    conn.data_received(b"late")
    conn.closed = True  # asyncssh closed it before its turn
    await asyncio.sleep(0)
    assert conn.events == []


@pytest.mark.asyncio
async def test_many_connections_are_handled_per_turn_in_the_order_they_came() -> None:
    gate = concurrency.TurnGate(per_turn=3)
    now, stop = iteration_counter(asyncio.get_running_loop())
    order: list[tuple[int, int]] = []

    class Counted(Recorder):
        def __init__(self, index: int) -> None:
            super().__init__()
            self.index = index

        def data_received(self, data: bytes, datatype: Any = None) -> None:
            order.append((self.index, now()))

    conns = []
    for index in range(20):
        conn = Counted(index)
        take_turns(conn, gate)  # type: ignore[arg-type]
        conns.append(conn)
    try:
        for conn in conns:  # twenty answers in one iteration
            conn.data_received(b"-")
        for _ in range(10):
            await asyncio.sleep(0)
    finally:
        stop()
    assert [index for index, _ in order] == list(range(20))
    per_iteration: dict[int, int] = {}
    for _, turn in order:
        per_iteration[turn] = per_iteration.get(turn, 0) + 1
    assert max(per_iteration.values()) <= 3
    assert len(per_iteration) >= 7
