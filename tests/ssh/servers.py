"""Real SSH servers for the ssh:// tests and benchmarks.

:class:`Sshd` runs OpenSSH's sshd in the foreground (``sshd -D -e``) with every file in
a private directory, logging in as a dedicated user whose shell is ``/bin/sh``.
:func:`fault_server` runs asyncssh's own server in-process, with hooks to inject
faults (a slow banner, a changed host key, refused logins, a server that dies).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

from aiores import SSHContext

SSHD = "/usr/sbin/sshd"
USER = "aiores-test"

OPENSSH_DEFAULTS = ("MaxStartups 10:30:100", "MaxSessions 10")
PERMISSIVE = ("MaxStartups 1000:30:1000", "MaxSessions 100")


def ensure_user(name: str = USER) -> pwd.struct_passwd:
    """The test login (made with ``/bin/sh`` as its shell if missing; needs root).

    useradd leaves the account locked (``!`` for a password), and sshd without PAM
    refuses locked accounts even for key logins: the password is set to ``*``
    (no password can match, but the account is not locked).
    """
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True)
    shadow = Path("/etc/shadow").read_text().splitlines()
    if any(line.startswith(f"{name}:!") for line in shadow):
        subprocess.run(["usermod", "-p", "*", name], check=True)
    return pwd.getpwnam(name)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Keys:
    """A client key (authorized for the test user) and a host key, in ``directory``."""

    directory: Path
    client_key: Path
    host_key: Path
    host_public: str
    authorized_keys: Path

    @classmethod
    def make(cls, directory: Path) -> Keys:
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o755)  # sshd reads authorized_keys as the test user
        client = asyncssh.generate_private_key("ssh-ed25519")
        host = asyncssh.generate_private_key("ssh-ed25519")
        client_key = directory / "client_ed25519"
        host_key = directory / "hostkey_ed25519"
        for path, key in ((client_key, client), (host_key, host)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(key.export_private_key())
        authorized = directory / "authorized_keys"
        authorized.write_bytes(client.export_public_key())
        os.chmod(authorized, 0o644)
        host_public = host.export_public_key().decode().strip()
        return cls(directory, client_key, host_key, host_public, authorized)


class Sshd:
    """One OpenSSH sshd on 127.0.0.1, started by :meth:`start`, stopped by :meth:`stop`."""

    def __init__(
        self, keys: Keys, name: str, limits: Sequence[str], ports: Sequence[int] = ()
    ) -> None:
        self.keys = keys
        self.name = name
        self.limits = tuple(limits)
        self.ports = list(ports) or [free_port()]
        self.user = USER
        self.known_hosts = keys.directory / f"known_hosts-{name}"
        self.config = keys.directory / f"sshd_config-{name}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log: list[str] = []
        self._reader: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.ports[0]

    def url(self, port: int | None = None) -> str:
        return f"ssh://{self.user}@127.0.0.1:{port or self.port}"

    def context(self, **changes: object) -> SSHContext:
        fields: dict[str, object] = {
            "key_files": [str(self.keys.client_key)],
            "known_hosts": [str(self.known_hosts)],
            "config": [],
        }
        fields.update(changes)
        return SSHContext(**fields)  # type: ignore[arg-type]

    def start(self) -> None:
        ensure_user()
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        lines = [f"Port {port}" for port in self.ports] + [
            "ListenAddress 127.0.0.1",
            f"HostKey {self.keys.host_key}",
            f"AuthorizedKeysFile {self.keys.authorized_keys}",
            f"PidFile {self.keys.directory / (self.name + '.pid')}",
            "UsePAM no",
            "StrictModes no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "PermitRootLogin no",
            "LogLevel INFO",
            "Subsystem sftp internal-sftp",
            *self.limits,
        ]
        self.config.write_text("\n".join(lines) + "\n")
        self.known_hosts.write_text(
            "".join(f"[127.0.0.1]:{port} {self.keys.host_public}\n" for port in self.ports)
        )
        self.process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        ready = threading.Event()
        listening: set[str] = set()
        want = {str(port) for port in self.ports}

        def read() -> None:
            assert self.process is not None
            assert self.process.stderr is not None
            for raw in self.process.stderr:
                line = raw.decode(errors="replace").rstrip()
                self.log.append(line)
                if line.startswith("Server listening on"):
                    listening.add(line.rsplit(" ", 1)[-1].rstrip("."))
                    if want <= listening:
                        ready.set()
            ready.set()  # sshd ended: let start() see it
            # Closed here, not in stop(): sessions sshd forked keep the pipe open after
            # it exits, and closing a file another thread is reading blocks.
            self.process.stderr.close()

        self._reader = threading.Thread(target=read, name=f"sshd-{self.name}", daemon=True)
        self._reader.start()
        ready.wait(30)
        if self.process.poll() is not None or not want <= listening:
            self.stop()
            raise RuntimeError(f"sshd {self.name} did not start: " + "\n".join(self.log[-20:]))

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self._reader is not None:
            self._reader.join(5)
        self.process = None

    def log_count(self, text: str) -> int:
        return sum(text in line for line in self.log)


def private_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def remove_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# -- asyncssh servers for fault injection ---------------------------------------------


class Sessions:
    """How many sessions a fault server has open, and was asked for."""

    open = 0
    requested = 0


class _Session(asyncssh.SSHServerProcess[bytes]):
    """A command session that says when its channel has closed."""

    def __init__(
        self,
        handler: Callable[[asyncssh.SSHServerProcess[bytes]], Awaitable[None]],
        closed: Callable[[], None],
    ) -> None:
        super().__init__(handler, None, 0, False)
        self._closed = closed

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed()
        super().connection_lost(exc)


@dataclass
class FaultServer:
    """An in-process asyncssh server and how to reach it."""

    port: int
    host_key: asyncssh.SSHKey
    acceptor: asyncssh.SSHAcceptor
    known_hosts: Path
    client_key: Path
    connections: list[asyncssh.SSHServerConnection]
    #: Set when the server starts its first command.
    started: asyncio.Event
    #: Sessions (channels) open on the server side, over all connections.
    sessions: Sessions

    def url(self) -> str:
        return f"ssh://tester@127.0.0.1:{self.port}"

    def context(self, **changes: object) -> SSHContext:
        fields: dict[str, object] = {
            "key_files": [str(self.client_key)],
            "known_hosts": [str(self.known_hosts)],
            "config": [],
        }
        fields.update(changes)
        return SSHContext(**fields)  # type: ignore[arg-type]

    def kill_connections(self) -> None:
        """Drop every client connection abruptly (as if the server died)."""
        for conn in self.connections:
            conn.abort()


async def _shell_process(process: asyncssh.SSHServerProcess[bytes]) -> None:
    """Run the client's command in a local shell, pumping the streams both ways."""
    command = process.command or "true"
    proc = await asyncio.create_subprocess_shell(
        command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert proc.stderr is not None

    async def pump_in() -> None:
        with contextlib.suppress(Exception):
            while data := await process.stdin.read(65536):
                proc.stdin.write(data)  # type: ignore[union-attr]
                await proc.stdin.drain()  # type: ignore[union-attr]
        with contextlib.suppress(Exception):
            proc.stdin.close()  # type: ignore[union-attr]

    async def pump_out(src: asyncio.StreamReader, dst: asyncssh.SSHWriter[bytes]) -> None:
        with contextlib.suppress(Exception):
            while data := await src.read(65536):
                dst.write(data)

    feeder = asyncio.ensure_future(pump_in())
    try:
        await asyncio.gather(
            pump_out(proc.stdout, process.stdout), pump_out(proc.stderr, process.stderr)
        )
        rc = await proc.wait()
    finally:
        feeder.cancel()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    process.exit(rc if rc >= 0 else 128 - rc)


@contextlib.asynccontextmanager
async def fault_server(
    directory: Path,
    *,
    authorized: bool = True,
    silent: bool = False,
    record_key: asyncssh.SSHKey | None = None,
    more_host_keys: Sequence[asyncssh.SSHKey] = (),
    max_sessions: int | None = None,
    refuse_sessions: int = 0,
) -> AsyncIterator[FaultServer]:
    """An asyncssh server on 127.0.0.1 running commands in a local shell.

    Args:
        authorized: False refuses every client key.
        silent: Accept TCP connections but never start the SSH handshake (a wedged
            host).
        record_key: The host key written to known_hosts (default: the server's own);
            a different key makes the server's key look changed.
        more_host_keys: Host keys the server holds besides its own (of other types).
        max_sessions: Refuse a session past this many at once on one connection (as
            OpenSSH's MaxSessions does); None: no limit.
        refuse_sessions: Refuse this many session requests first (a server that has
            not yet freed sessions that closed).

    Like OpenSSH before 7.9, the server does not act on ``signal`` requests.
    """
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client = asyncssh.generate_private_key("ssh-ed25519")
    client_key = directory / "client"
    client_key.write_bytes(client.export_private_key())
    os.chmod(client_key, 0o600)
    authorized_keys = asyncssh.import_authorized_keys(
        client.export_public_key().decode() if authorized else ""
    )
    connections: list[asyncssh.SSHServerConnection] = []
    started = asyncio.Event()

    async def run_process(process: asyncssh.SSHServerProcess[bytes]) -> None:
        started.set()
        await _shell_process(process)

    sessions = Sessions()

    class Server(asyncssh.SSHServer):
        def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
            connections.append(conn)
            self.open = 0

        def session_requested(self) -> asyncssh.SSHServerProcess[bytes]:
            sessions.requested += 1
            if sessions.requested <= refuse_sessions or (
                max_sessions is not None and self.open >= max_sessions
            ):
                raise asyncssh.ChannelOpenError(
                    asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "too many sessions"
                )
            self.open += 1
            sessions.open += 1

            def closed() -> None:
                self.open -= 1
                sessions.open -= 1

            return _Session(run_process, closed)

    acceptor = await asyncssh.listen(
        "127.0.0.1",
        0,
        server_factory=Server,
        server_host_keys=[host_key, *more_host_keys],
        authorized_client_keys=authorized_keys,
        encoding=None,
        login_timeout=10,
    )
    port = acceptor.sockets[0].getsockname()[1]
    stall: asyncio.base_events.Server | None = None
    if silent:
        # A plain TCP listener in its place that accepts and never says a word.
        acceptor.close()

        async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                await reader.read()  # until the client gives up
            writer.close()

        stall = await asyncio.start_server(mute, "127.0.0.1", port)
    known_hosts = directory / "known_hosts"
    shown = (record_key or host_key).export_public_key().decode().strip()
    known_hosts.write_text(f"[127.0.0.1]:{port} {shown}\n")
    try:
        yield FaultServer(
            port, host_key, acceptor, known_hosts, client_key, connections, started, sessions
        )
    finally:
        if stall is not None:
            stall.close()
        acceptor.close()
        for conn in connections:
            conn.abort()
        await acceptor.wait_closed()


# -- session fixtures (registered once, by tests/conftest.py) ------------------------


@pytest.fixture(scope="session")
def keys() -> Iterator[Keys]:
    ensure_user()
    directory = private_dir("aiores-sshd-")
    try:
        yield Keys.make(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def sshd(keys: Keys) -> Iterator[Sshd]:
    """sshd with OpenSSH's default MaxStartups and MaxSessions."""
    server = Sshd(keys, "default", OPENSSH_DEFAULTS)
    server.start()
    try:
        yield server
    finally:
        server.stop()
