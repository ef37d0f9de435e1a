"""A hijacked (upgraded) connection to a Docker daemon over TLS whose input can end.

``POST /exec/{id}/start`` with ``Connection: Upgrade`` turns the HTTP connection into
the command's raw streams: what the client writes is the command's standard input, and
the daemon sends its output as multiplexed frames. The command sees the end of its
input when the client half-closes the connection. On a unix socket or plain TCP that is
``shutdown(SHUT_WR)``; over TLS it is the TLS ``close_notify`` alert, which the daemon
(Go's ``tls.Conn``) reads as the end of the stream while it keeps writing, as the docker
command's ``CloseWrite`` does. asyncio's TLS transport cannot send ``close_notify``
without closing the connection (its ``can_write_eof()`` is False), so this connection
runs TLS itself, through memory BIOs over a plain asyncio stream: after
``SSLObject.unwrap()`` has queued ``close_notify`` the connection still reads the
command's output until the daemon's own end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import struct
from collections.abc import AsyncIterator

import aiodocker

__all__ = ["hijacked_tls"]

#: The frame header of a multiplexed stream: stream number, 3 zero bytes, length.
_HEADER = struct.Struct(">BxxxL")
#: Bytes read from the socket at a time; the largest response head accepted.
_CHUNK = 65536
_HEAD_LIMIT = 65536


class _TLSConnection:
    """TLS over an asyncio stream through memory BIOs (one task reads, one writes)."""

    def __init__(
        self,
        context: ssl.SSLContext,
        hostname: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname=hostname)
        self._reader, self._writer = reader, writer
        self._ended = False  # the daemon's close_notify, or the socket's end

    def _send(self) -> None:
        """Hand what TLS queued to the socket (synchronous: no other task interleaves)."""
        if data := self._outgoing.read():
            self._writer.write(data)

    async def _receive(self) -> bool:
        """Read more from the socket into TLS; False at its end."""
        data = await self._reader.read(_CHUNK)
        if not data:
            self._incoming.write_eof()
            return False
        self._incoming.write(data)
        return True

    async def handshake(self) -> None:
        while True:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                self._send()
                if await self._receive():
                    continue
                raise ConnectionResetError(
                    "the daemon closed the connection in the TLS handshake"
                ) from None
            self._send()
            await self._writer.drain()
            return

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = self._tls.write(view[:_CHUNK])
            view = view[written:]
            self._send()
            await self._writer.drain()

    def _drain_incoming(self) -> bytes:
        """Decrypt everything TLS can from what was received (no socket read)."""
        out = bytearray()
        while not self._ended:
            try:
                chunk = self._tls.read(_CHUNK)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self._ended = True
                break
            if not chunk:
                self._ended = True
                break
            out += chunk
        self._send()  # e.g. a TLS 1.3 key update's answer
        return bytes(out)

    async def end_input(self, keep: bytearray) -> None:
        """Send ``close_notify``: the daemon sees the end of the input.

        What had been received is decrypted into ``keep`` first: the shutdown reads
        what is left in TLS's buffer and would drop application data there.
        """
        keep += self._drain_incoming()
        if not self._ended:
            # The second SSL_shutdown inside unwrap() waits for the daemon's alert.
            with contextlib.suppress(ssl.SSLWantReadError):
                self._tls.unwrap()
        self._send()
        await self._writer.drain()

    async def read(self) -> bytes:
        """What the daemon sent next (b"" at its end)."""
        while True:
            data = self._drain_incoming()
            if data or self._ended:
                return data
            if not await self._receive():
                data = self._drain_incoming()
                self._ended = True
                return data

    def close(self) -> None:
        self._writer.close()


async def _head(connection: _TLSConnection) -> tuple[int, bytes, bytes]:
    """The response's status, its head's text, and what followed it."""
    buffer = bytearray()
    while b"\r\n\r\n" not in buffer:
        if len(buffer) > _HEAD_LIMIT:
            raise aiodocker.DockerError(500, "the daemon's answer has no end of its head")
        chunk = await connection.read()
        if not chunk:
            raise asyncio.IncompleteReadError(bytes(buffer), None)
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    try:
        status = int(status_line[1])
    except (IndexError, ValueError):
        raise aiodocker.DockerError(500, f"not an HTTP answer: {head[:100]!r}") from None
    return status, head, rest


async def _error(connection: _TLSConnection, status: int, rest: bytes) -> aiodocker.DockerError:
    """The daemon's refusal as aiodocker states it (its JSON ``message``)."""
    body = bytearray(rest)
    with contextlib.suppress(OSError, ssl.SSLError):
        async with asyncio.timeout(5):
            while len(body) < _HEAD_LIMIT and (chunk := await connection.read()):
                body += chunk
    text = bytes(body).decode(errors="replace")
    start, end = text.find("{"), text.rfind("}")
    message = text.strip()
    if start >= 0 and end > start:
        with contextlib.suppress(ValueError):
            message = str(json.loads(text[start : end + 1]).get("message", message))
    return aiodocker.DockerError(status, message)


async def hijacked_tls(
    host: str,
    port: int,
    context: ssl.SSLContext,
    path: str,
    body: bytes,
    feed: bytes,
) -> AsyncIterator[tuple[int, bytes]]:
    """``POST path`` (with ``body``) upgraded over TLS; write ``feed`` and end it with
    ``close_notify`` while yielding ``(stream, data)`` of the output (1 stdout, 2 stderr).

    Raises the daemon's refusal as :class:`aiodocker.DockerError`, ``OSError`` and
    ``ssl.SSLError`` as they come (the caller translates them).
    """
    reader, writer = await asyncio.open_connection(host, port)
    connection = _TLSConnection(context, host, reader, writer)
    writing: asyncio.Task[None] | None = None
    try:
        await connection.handshake()
        authority = f"[{host}]" if ":" in host else host
        request = (
            f"POST {path} HTTP/1.1\r\nHost: {authority}:{port}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
        ).encode() + body
        await connection.write(request)
        status, _, rest = await _head(connection)
        if status not in (101, 200):
            raise await _error(connection, status, rest)
        pending = bytearray(rest)

        async def write_input() -> None:
            # Concurrently with reading: a command that echoes its input fills the
            # connection's other direction before its input ends.
            if feed:
                await connection.write(feed)
            await connection.end_input(pending)

        writing = asyncio.create_task(write_input(), name="aiores-docker-exec-stdin")
        while True:
            while len(pending) >= _HEADER.size:
                kind, length = _HEADER.unpack_from(pending)
                if len(pending) < _HEADER.size + length:
                    break
                data = bytes(pending[_HEADER.size : _HEADER.size + length])
                del pending[: _HEADER.size + length]
                yield kind, data
            chunk = await connection.read()
            if not chunk:
                break
            pending += chunk
    finally:
        if writing is not None:
            # Still writing: the command ended without reading all of its input, or
            # the output was cut off. A failed write then only says so again.
            writing.cancel()
            await asyncio.wait({writing})
            error = None if writing.cancelled() else writing.exception()
            if error is not None and not isinstance(error, OSError):
                raise error
        connection.close()
