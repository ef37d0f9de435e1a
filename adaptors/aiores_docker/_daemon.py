"""One Docker daemon as the adaptors of a session share it: its client, errors, events.

:class:`Daemon` holds one aiodocker client per endpoint and session (shared through
``env.shared``, closed with the session) and follows the daemon's event stream for
every adaptor of that endpoint: one ``GET /events`` filtered to aiores's containers,
and after each (re)connect one ``GET /containers/json`` listing, which its
subscribers reconcile what they track with (what changed while the stream was down).
Nothing polls a container. A daemon over TCP is reached with TLS when a
:class:`aiores.DockerContext` or the DOCKER_* variables say so (see :mod:`._tls`):
the client is made on first use, its certificates read in a thread.

:func:`daemon_errors` translates aiodocker's and aiohttp's errors into the aiores tree
at the boundary, saying what to do (start the daemon, use a socket you may open, pull
the image).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiodocker
import aiodocker.stream
import aiodocker.types
import aiohttp
import yarl

from aiores import (
    AioresError,
    BadParameter,
    ConnectionLost,
    DoesNotExist,
    IncorrectState,
    NoSuccess,
    PermissionDenied,
)
from aiores.adaptor import URL, AdaptorEnv, truncation_marker

from ._hijack import hijacked_tls
from ._tls import TLS, handshake_error, ssl_context, tls_for

__all__ = [
    "LABEL",
    "Daemon",
    "Listener",
    "Output",
    "address_for",
    "daemon_errors",
    "label_filter",
]

log = logging.getLogger("aiores.docker")

#: The label every container aiores makes carries (value "1"); the others are
#: ``aiores.<name>``.
LABEL = "aiores"
#: Sockets tried, in order, for ``docker://`` when ``$DOCKER_HOST`` is unset.
LOCAL_SOCKETS = ("/var/run/docker.sock", "/run/podman/podman.sock")
#: Seconds between reconnects of the event stream: the first and the longest.
RECONNECT_FIRST = 0.1
RECONNECT_LONGEST = 5.0


def address_for(url: URL, *, tls: bool = False) -> str:
    """The daemon address (``unix:///path`` or ``tcp://host:port``) of a ``docker://`` URL.

    ``docker://`` is the local daemon: ``$DOCKER_HOST``, else the first of
    ``/var/run/docker.sock`` and ``/run/podman/podman.sock`` that exists (else the
    first, so that the error names it). ``docker://host[:port]`` is a daemon over TCP:
    port 2375, or 2376 when it is reached with TLS (``tls``).
    """
    if url.host:
        port = url.port or (2376 if tls else 2375)
        host = f"[{url.host}]" if ":" in url.host else url.host
        return f"tcp://{host}:{port}"
    env = os.environ.get("DOCKER_HOST", "").strip()
    if env:
        if not env.startswith(("unix://", "tcp://", "http://", "https://")):
            raise BadParameter(
                f"DOCKER_HOST={env!r} is not a daemon address aiores can use: "
                "give unix:///path/to/docker.sock or tcp://host:port"
            )
        return env
    for path in LOCAL_SOCKETS:
        if Path(path).exists():
            return "unix://" + path
    return "unix://" + LOCAL_SOCKETS[0]


def label_filter(**labels: str) -> str:
    """A ``filters`` query value selecting aiores's containers with these labels."""
    wanted = [f"{LABEL}=1", *(f"{LABEL}.{k}={v}" for k, v in labels.items())]
    return json.dumps({"label": wanted})


def _not_running(address: str) -> str:
    return (
        f"the Docker daemon at {address} does not answer: start it (systemctl start docker, "
        "or 'podman system service' for podman), or point DOCKER_HOST at one that runs"
    )


def _translate(
    exc: BaseException, address: str, what: str, tls: TLS | None = None
) -> AioresError | None:
    """The aiores error for a backend error ``exc`` raised while doing ``what``."""
    if tls is not None:
        failed = handshake_error(exc, tls, address, what)
        if failed is not None:
            return failed
    if isinstance(exc, aiodocker.DockerError):
        status, message = exc.status, str(exc.message)
        if status == 900:  # aiodocker: could not connect
            cause = exc.__context__
            if isinstance(cause, aiohttp.ClientConnectorError):
                cause = cause.os_error
            if isinstance(cause, PermissionError) or "Permission denied" in message:
                return PermissionDenied(
                    f"{what}: permission denied on the Docker socket {address}: run as a user "
                    "of the 'docker' group (or root), or point DOCKER_HOST at a socket you "
                    "may open"
                )
            return NoSuccess(f"{what}: {_not_running(address)}")
        if status == 404:
            return DoesNotExist(f"{what}: {message}")
        if status in (401, 403):
            return PermissionDenied(f"{what}: {message}")
        if status in (304, 409) or "state improper" in message:  # podman says 500
            return IncorrectState(f"{what}: {message}")
        if status == 400:
            return BadParameter(f"{what}: {message}")
        return NoSuccess(f"{what}: the Docker daemon at {address} answered {status}: {message}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, PermissionError):
            return PermissionDenied(
                f"{what}: permission denied on the Docker socket {address}: run as a user "
                "of the 'docker' group (or root), or point DOCKER_HOST at a socket you may open"
            )
        return NoSuccess(f"{what}: {_not_running(address)}")
    if isinstance(exc, (aiohttp.ClientError, asyncio.IncompleteReadError)):
        return ConnectionLost(f"{what}: the connection to the Docker daemon at {address} broke")
    if isinstance(exc, PermissionError):
        return PermissionDenied(f"{what}: {exc}")
    if isinstance(exc, OSError):
        return NoSuccess(f"{what}: {exc}")
    return None


@contextlib.contextmanager
def daemon_errors(address: str, what: str, tls: TLS | None = None) -> Iterator[None]:
    """Translate what the daemon's client raises inside into the aiores tree.

    ``tls``: the settings the daemon is reached with, if TLS (a failed handshake is
    an AuthenticationFailed that names them).

    Cancellation and aiores errors pass untouched; so does a bare TimeoutError
    (it belongs to whichever deadline raised it).
    """
    try:
        yield
    except (AioresError, TimeoutError):
        raise
    except (
        aiodocker.DockerError,
        aiohttp.ClientError,
        OSError,
        asyncio.IncompleteReadError,
    ) as exc:
        error = _translate(exc, address, what, tls)
        if error is None:
            raise
        raise error from exc


#: A subscriber's callbacks: each event (a dict as the daemon sent it), and the
#: listing of aiores's containers after each (re)connect.
Listener = tuple[Callable[[Mapping[str, Any]], None], Callable[[Sequence[Mapping[str, Any]]], None]]


class Daemon:
    """A session's client of one Docker daemon, and the event stream its adaptors share.

    Made through :meth:`shared` (one per session, address and TLS settings); its
    ``aclose`` runs when the session closes. The aiodocker client is made on first
    use (:meth:`client`).
    """

    def __init__(self, address: str, tls: TLS | None = None) -> None:
        self.address = address
        self.tls = tls
        self._client: aiodocker.Docker | None = None
        self._ssl: ssl.SSLContext | None = None
        self._making = asyncio.Lock()
        self._listeners: list[Listener] = []
        self._following = False
        self._connected = False
        self._failure: AioresError | None = None
        # Resolved (and replaced) whenever the stream connects or fails.
        self._news: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @classmethod
    def shared(cls, env: AdaptorEnv, url: URL) -> Daemon:
        """The session's daemon client for ``url`` (made on first use).

        A daemon over TCP is reached with TLS when a DockerContext applies to its host
        or ``DOCKER_TLS_VERIFY=1`` (:func:`._tls.tls_for`).
        """
        if url.host:
            tls = tls_for(env, url.host)
            address = address_for(url, tls=tls is not None)
        else:
            address = address_for(url)
            tls = _local_tls(env, address)
        return env.shared((cls, address, tls), lambda: cls(address, tls))

    def errors(self, what: str) -> contextlib.AbstractContextManager[None]:
        """:func:`daemon_errors` for this daemon."""
        return daemon_errors(self.address, what, self.tls)

    async def client(self) -> aiodocker.Docker:
        """The aiodocker client, made on first use (with TLS: its ``ssl.SSLContext``
        built in a thread from the certificates).

        Raises:
            BadParameter: a certificate or key file cannot be read or is not one; the
                message names the setting. (Tried again on the next use.)
        """
        if self._client is None:
            async with self._making:
                if self._client is None:
                    url, context = self.address, None
                    if self.tls is not None:
                        context = await asyncio.to_thread(ssl_context, self.tls)
                        self._ssl = context
                        url = "https://" + url.split("://", 1)[1]
                    self._client = _client(url, context)
        return self._client

    # -- requests -----------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _request(
        self,
        path: str,
        method: str,
        params: Mapping[str, Any] | None,
        data: Any,
        headers: Mapping[str, str] | None,
        timeout: aiohttp.ClientTimeout | None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        # aiodocker leaves finalising a response to its caller: a stream cut off (a
        # cancelled wait, the session's close) closes its connection, one read to its
        # end gives it back to the pool.
        client = await self.client()
        response = await client._do_query(
            path,
            method,
            params=dict(params) if params else None,
            data=data,
            headers=headers,
            timeout=aiodocker.types.SENTINEL if timeout is None else timeout,
        )
        try:
            yield response
        except BaseException:
            response.close()
            raise
        else:
            response.release()

    async def json(
        self,
        what: str,
        path: str,
        method: str = "GET",
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
    ) -> Any:
        """One request whose answer is JSON (None for an empty answer)."""
        data = None if body is None else json.dumps(body)
        with self.errors(what):
            async with self._request(path, method, params, data, None, None) as response:
                answer = await response.read()
        return json.loads(answer) if answer.strip() else None

    async def call(
        self, what: str, path: str, method: str = "POST", *, params: Mapping[str, Any] | None = None
    ) -> None:
        """One request whose answer is not needed."""
        with self.errors(what):
            async with self._request(path, method, params, None, None, None) as response:
                await response.read()

    @contextlib.asynccontextmanager
    async def stream(
        self,
        what: str,
        path: str,
        method: str = "GET",
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A request whose answer is read as a stream (no read deadline)."""
        with self.errors(what):
            async with self._request(
                path, method, params, body, headers, aiohttp.ClientTimeout()
            ) as response:
                yield response

    async def attached(
        self, what: str, path: str, body: bytes | None, feed: bytes | None
    ) -> AsyncIterator[tuple[int, bytes]]:
        """A hijacked stream (attach, exec start): write ``feed`` (then end the
        input), and yield ``(stream, data)`` as the daemon sends it (1 stdout, 2 stderr).

        The request is made when iteration starts; closing the iterator closes it.
        Over TLS with ``feed``, the connection is this module's own (:mod:`._hijack`):
        its input ends with TLS's ``close_notify``, which aiohttp cannot send.
        """
        if feed is not None and self.tls is not None:
            with self.errors(what):
                client = await self.client()
                assert self._ssl is not None
                await client._check_version()  # the API version it settled on
                version = client.api_version
                host, port = _host_port(self.address)
                try:
                    async for frame in hijacked_tls(
                        host, port, self._ssl, f"/{version}/{path}", body or b"", feed
                    ):
                        yield frame
                except ConnectionRefusedError as exc:
                    raise NoSuccess(f"{what}: {_not_running(self.address)}") from exc
            return

        async def setup() -> tuple[yarl.URL, bytes | None, bool]:
            return yarl.URL(path), body, False

        with self.errors(what):
            client = await self.client()
            stream = aiodocker.stream.Stream(client, setup, aiohttp.ClientTimeout())
            writing: asyncio.Task[None] | None = None
            try:
                await stream._init()
                if feed is not None:

                    async def write_input() -> None:
                        if feed:
                            await stream.write_in(feed)
                        _end_input(stream)

                    # Written while the output is read: a command that echoes its
                    # input fills the other direction before its input ends.
                    writing = asyncio.create_task(write_input(), name="aiores-docker-stdin")
                while (message := await stream.read_out()) is not None:
                    yield message.stream, message.data
            finally:
                if writing is not None:
                    writing.cancel()  # the command ended without reading all of it
                    await asyncio.wait({writing})
                    error = None if writing.cancelled() else writing.exception()
                    if error is not None and not isinstance(error, (OSError, RuntimeError)):
                        raise error
                await stream.close()

    async def feed(self, id: str, data: bytes, start: Callable[[], Awaitable[None]]) -> None:
        """Attach to a created container's stdin, ``start()`` it, write ``data``, end it.

        The container must have been created with ``OpenStdin`` and ``StdinOnce``: its
        stdin closes when this attachment ends.
        """

        async def setup() -> tuple[yarl.URL, bytes | None, bool]:
            url = yarl.URL(f"containers/{id}/attach").with_query({"stream": "1", "stdin": "1"})
            return url, None, False

        with self.errors(f"writing the standard input of container {id[:12]}"):
            client = await self.client()
            stream = aiodocker.stream.Stream(client, setup, aiohttp.ClientTimeout())
            try:
                await stream._init()
                await start()
                # A command that ended without reading its input (the daemon closed
                # the attachment then) drops it, as a pipe to an ended process would.
                if data and _transport(stream) is not None:
                    await stream.write_in(data)
                _end_input(stream)
            finally:
                await stream.close()

    async def containers(self, what: str, filters: str) -> list[Mapping[str, Any]]:
        """``GET /containers/json?all=1`` with ``filters``."""
        found = await self.json(what, "containers/json", params={"all": "1", "filters": filters})
        return list(found or ())

    async def output(self, id: str, limits: tuple[int | None, int | None]) -> Output:
        """A container's log, demultiplexed: stdout and stderr, each cut at its limit.

        A limit of None keeps all of that stream.
        """
        output = Output(limits)
        async with self.stream(
            f"reading the output of container {id[:12]}",
            f"containers/{id}/logs",
            params={"stdout": "1", "stderr": "1"},
        ) as response:
            content = response.content
            while True:
                try:
                    header = await content.readexactly(8)
                except asyncio.IncompleteReadError as exc:
                    if exc.partial:
                        output.add(1, exc.partial)  # a TTY's raw stream: no frames
                    break
                kind, length = struct.unpack(">BxxxL", header)
                if kind not in (0, 1, 2):  # not a frame: a raw stream after all
                    output.add(1, header)
                    while chunk := await content.read(65536):
                        output.add(1, chunk)
                    break
                while length:
                    chunk = await content.read(min(length, 65536))
                    if not chunk:
                        break
                    output.add(2 if kind == 2 else 1, chunk)
                    length -= len(chunk)
        return output

    # -- events -------------------------------------------------------------------------
    def subscribe(self, env: AdaptorEnv, listener: Listener) -> None:
        """Deliver the daemon's events about aiores's containers to ``listener``.

        The first subscriber starts the stream (in the session's task group).
        """
        if listener not in self._listeners:
            self._listeners.append(listener)
        if not self._following:
            # In the session's task group: cancelled when the session closes, before
            # this client is closed.
            env.spawn(self._follow, name=f"aiores-docker-events {self.address}")
            self._following = True

    def unsubscribe(self, listener: Listener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    async def connected(self) -> None:
        """Wait until the event stream is open (and its first listing delivered).

        Raises:
            NoSuccess, PermissionDenied: the daemon cannot be reached; what it said.
        """
        while not self._connected:
            if self._failure is not None:
                raise self._failure
            await asyncio.wait({self._news})  # never cancels the shared future

    async def _follow(self) -> None:
        delay = RECONNECT_FIRST
        filters = json.dumps({"type": ["container"], "label": [f"{LABEL}=1"]})
        while True:
            try:
                async with self.stream(
                    "following the Docker daemon's events", "events", params={"filters": filters}
                ) as response:
                    listing = await self.containers("listing aiores's containers", label_filter())
                    for _, reconnected in list(self._listeners):
                        reconnected(listing)
                    self._failure = None
                    self._connected = True
                    self._tell()
                    delay = RECONNECT_FIRST
                    async for line in response.content:
                        if not line.strip():
                            continue
                        try:
                            event = json.loads(line)
                        except ValueError:
                            continue
                        for on_event, _ in list(self._listeners):
                            on_event(event)
            except AioresError as exc:
                self._failure = exc
                log.debug("docker events at %s: %s", self.address, exc)
            except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as exc:
                self._failure = ConnectionLost(f"the Docker daemon at {self.address}: {exc!r}")
            self._connected = False
            self._tell()
            await asyncio.sleep(delay)
            delay = min(RECONNECT_LONGEST, delay * 2)

    def _tell(self) -> None:
        news, self._news = self._news, asyncio.get_running_loop().create_future()
        news.set_result(None)

    async def aclose(self) -> None:
        """Close the client (the session's close calls it, after its background tasks,
        the event stream among them, have ended)."""
        if self._client is not None:
            await self._client.close()


def _local_tls(env: AdaptorEnv, address: str) -> TLS | None:
    """The TLS settings for ``docker://``'s daemon at ``address`` (from DOCKER_HOST)."""
    if address.startswith(("unix://", "http://")):
        return None
    host = yarl.URL(address).host or ""
    tls = tls_for(env, host)
    if tls is None and address.startswith("https://"):
        return TLS("DOCKER_HOST")  # https: the system's authorities, no client certificate
    return tls


def _client(url: str, context: ssl.SSLContext | None) -> aiodocker.Docker:
    if context is not None:
        return aiodocker.Docker(url=url, ssl_context=context)
    # Plain TCP (or a unix socket): aiodocker would read DOCKER_CERT_PATH itself, on the
    # event loop, if DOCKER_TLS_VERIFY were set; it is not when no TLS was chosen.
    return aiodocker.Docker(url=url)


def _host_port(address: str) -> tuple[str, int]:
    """The host and port of a TCP daemon address (``tcp://`` or ``https://``)."""
    parsed = yarl.URL(address)
    assert parsed.host is not None
    assert parsed.port is not None
    return parsed.host, parsed.port


def _transport(stream: aiodocker.stream.Stream) -> asyncio.BaseTransport | None:
    """The connection of a hijacked stream; None once the daemon closed it."""
    response = stream._resp
    if response is None or response.connection is None:
        return None
    return response.connection.transport


def _end_input(stream: aiodocker.stream.Stream) -> None:
    """Half-close a hijacked stream: the program reading its stdin sees its end."""
    transport = _transport(stream)
    if isinstance(transport, asyncio.WriteTransport) and transport.can_write_eof():
        transport.write_eof()


@dataclass
class _Stream:
    limit: int | None
    data: bytearray
    dropped: int = 0


class Output:
    """A container's demultiplexed output, each stream cut at its limit."""

    def __init__(self, limits: tuple[int | None, int | None]) -> None:
        self._streams = {1: _Stream(limits[0], bytearray()), 2: _Stream(limits[1], bytearray())}

    def add(self, kind: int, chunk: bytes) -> None:
        stream = self._streams[kind]
        if stream.limit is None:
            stream.data += chunk
            return
        room = max(0, stream.limit - len(stream.data))
        stream.data += chunk[:room]
        stream.dropped += len(chunk) - min(room, len(chunk))

    def _bytes(self, kind: int) -> bytes:
        stream = self._streams[kind]
        data = bytes(stream.data)
        if stream.dropped:
            data += truncation_marker(len(stream.data), stream.dropped)
        return data

    @property
    def stdout(self) -> bytes:
        return self._bytes(1)

    @property
    def stderr(self) -> bytes:
        return self._bytes(2)
