"""Handling what pooled connections receive by turns, so that a burst never stalls the loop.

When hundreds of commands end at once, hundreds of connections have an answer in the
same loop iteration, and asyncio hands every one of them to its protocol
(asyncssh's connection: decrypt, parse, wake the channels' waiters) in that
iteration: 500-900 of them, 0.1-0.3 ms each, held every other task (a ticker,
keepalives, a web server embedding aiores) for 50-250 ms. :func:`take_turns` puts a
connection's handling through a :class:`~aiores.adaptor.concurrency.TurnGate` shared
by the pool's connections: what arrives while the iteration has turns left is handled
at once, as before (the common case costs a counter); what arrives after is kept, in
order, and handled in a later iteration's turn, behind what came before it.

What a connection receives after its pending bytes (more bytes, the end of the
stream) joins them, in order. A connection lost with bytes pending has them handled
first, as if they had come a moment earlier; a connection asyncssh closed itself
drops them (a closed transport delivers nothing either).
"""

from __future__ import annotations

from typing import Any

import asyncssh

from aiores.adaptor import concurrency

__all__ = ["take_turns"]


class _Turns:
    """One connection's protocol callbacks, passed through the pool's gate."""

    __slots__ = ("_conn", "_data", "_eof", "_eof_pending", "_gate", "_lost", "_pending")

    def __init__(self, conn: asyncssh.SSHClientConnection, gate: concurrency.TurnGate) -> None:
        self._conn = conn
        self._gate = gate
        self._data = conn.data_received
        self._eof = conn.eof_received
        self._lost = conn.connection_lost
        self._pending: list[bytes] = []
        self._eof_pending = False

    def data_received(self, data: bytes, datatype: Any = None) -> None:
        if self._pending:
            self._pending.append(data)
        elif self._gate.now():
            self._data(data)
        else:
            self._pending.append(data)
            self._gate.later(self._flush)

    def eof_received(self) -> bool | None:
        if self._pending:
            # Handled after the bytes before it; True keeps the transport open (it
            # reads no more) until then.
            self._eof_pending = True
            return True
        return self._eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self._flush()
        self._lost(exc)

    def _flush(self) -> None:
        if not self._pending and not self._eof_pending:
            return  # handled already (the connection was lost meanwhile)
        data = b"".join(self._pending)
        self._pending.clear()
        if self._conn.is_closed():
            self._eof_pending = False
            return  # asyncssh closed it: nothing more is handled
        if data:
            self._data(data)
        if self._eof_pending:
            self._eof_pending = False
            self._eof()


def take_turns(conn: asyncssh.SSHClientConnection, gate: concurrency.TurnGate) -> None:
    """Handle what ``conn`` receives from now on in turns of ``gate`` (see the module)."""
    turns = _Turns(conn, gate)
    # The transport calls its protocol's callbacks by attribute: the connection's
    # own, shadowed on this instance (asyncssh offers no protocol factory of its own).
    for name in ("data_received", "eof_received", "connection_lost"):
        setattr(conn, name, getattr(turns, name))
