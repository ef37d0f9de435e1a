"""One simulated VM inside the cloud process: an asyncssh server on its own port.

A VM's "disk" is a directory: its login directory (``$HOME``, where commands start)
and the root of its SFTP server. Commands run as local processes of the cloud's
user through ``/bin/sh -c``, each in a process group of its own, with the client's
environment requests applied; SSH signals (TERM, KILL, STOP, CONT, INT, HUP, ...)
go to that group; a command killed by a signal ends the channel with that signal.
Each command starts in a session of its own whose id the VM records, and carries
``AIORES_SIM_VM=<id>`` in its environment, so tearing the VM down finds and kills
detached jobs too (see :mod:`aiores_sim._procs`).

A VM knows its users (:class:`Login`): ``root``, the user that acquired it, and those
of the ``users`` option; it refuses logins of anyone else as sshd does (no
authentication method succeeds). The acquiring user's home is the disk's top
(``/``); root's is ``/root`` (unless root acquired it), the others' ``/home/<name>``.
Commands start in the login's home with its ``HOME``, ``USER`` and ``LOGNAME``, and
SFTP resolves relative paths from there. Commands still run as the cloud's own OS
user: a uid is a label that the VM's ``id`` reports. Small stand-ins for
``hostname``, ``uname``, ``whoami`` and ``id`` come first on ``PATH``
(:data:`TOOLS`), so a VM names itself by its id and its users by their names.

The port is reserved (bound, not listening) when the VM is created, so its access
URL and host key are known while it boots; connections are refused until it is
ACTIVE.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from aiores import ResourceState
from aiores.adaptor import Image, Template, private

from ._isolation import TOOLS, VM_TOOLS, Holder, Isolation, PasswdEntry, enter, open_in, passwd
from ._lease import max_wait_time
from ._options import Faults
from ._procs import MARKER, ProcessTable
from ._spawner import Command, Spawner

__all__ = [
    "TOOLS",
    "VM",
    "DiskSFTPServer",
    "Login",
    "Prepared",
    "VMSpec",
    "logins",
    "prepare",
]

log = logging.getLogger("aiores.sim")

#: Names the directory of the cloud a VM process belongs to (for leftover checks).
CLOUD_MARKER = "AIORES_SIM_CLOUD"
#: The login a command runs for, and its uid (what the VM's whoami and id say).
USER_MARKER = "AIORES_SIM_USER"
UID_MARKER = "AIORES_SIM_UID"
#: The VM's own address (its private address on a network; 127.0.0.1 on none).
ADDRESS_MARKER = "AIORES_SIM_ADDRESS"
_OURS = (MARKER, CLOUD_MARKER, USER_MARKER, UID_MARKER, ADDRESS_MARKER)
#: A user's own authorized keys, relative to its home.
AUTHORIZED_KEYS = Path(".ssh", "authorized_keys")
#: The uid of the acquiring user (unless root); the others' follow it.
FIRST_UID = 1000
_READ = 65536
_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
_SIGNALS = {
    name: getattr(signal, f"SIG{name}")
    for name in ("TERM", "KILL", "STOP", "CONT", "INT", "HUP", "QUIT", "USR1", "USR2", "ALRM")
}


@dataclass(frozen=True, slots=True)
class VMSpec:
    """What a VM is asked to be (one acquire call's description, plus its faults)."""

    token: str
    user: str
    template: Template
    image: Image
    tags: frozenset[str]
    duration: float | None
    user_data: str | None
    authorized_keys: str
    faults: Faults
    #: The network its VMs are on (see :mod:`aiores_sim._networks`), the address of
    #: each VM of the acquire on it, and this VM's own address.
    network: str | None = None
    addresses: tuple[str, ...] = ()
    address: str = "127.0.0.1"

    def placed(self, index: int) -> VMSpec:
        """The spec of the ``index``-th VM of its acquire (its own address)."""
        if not self.addresses:
            return self
        return dataclasses.replace(self, address=self.addresses[index])


@dataclass(frozen=True, slots=True)
class Login:
    """A user a VM knows: its name, uid and home (as the VM sees it, ``/...``)."""

    name: str
    uid: int
    home: str
    #: A user of the VM's own ``/etc/passwd`` (isolation on): commands run as it.
    account: PasswdEntry | None = None

    def home_on(self, disk: Path) -> Path:
        """Where its home is on the VM's disk."""
        return disk / self.home.lstrip("/")

    def home_in(self, disk: Path) -> str:
        """Its home as its commands see it: a VM account's own, else on the disk."""
        return self.home if self.account is not None else str(self.home_on(disk))


def logins(spec: VMSpec) -> dict[str, Login]:
    """The users a VM of ``spec`` knows, by name (root and the acquiring user first)."""
    known = {spec.user: Login(spec.user, 0 if spec.user == "root" else FIRST_UID, "/")}
    if "root" not in known:
        known["root"] = Login("root", 0, "/root")
    uid = FIRST_UID
    for name in spec.faults.users:
        if name not in known:
            uid += 1
            known[name] = Login(name, uid, f"/home/{name}")
    return known


@dataclass(slots=True)
class Prepared:
    """A VM's resources made off the event loop: id, disk, host key, reserved port."""

    id: str
    disk: Path
    host_key: asyncssh.SSHKey
    sock: socket.socket
    port: int


def prepare(root: Path, specs: Iterable[tuple[VMSpec, str]]) -> list[Prepared]:
    """Blocking: make each VM's disk, host key and port (the id is given)."""
    made: list[Prepared] = []
    try:
        for spec, vm_id in specs:
            disk = root / vm_id
            disk.mkdir(mode=0o700, parents=True)
            meta = disk / ".sim"
            meta.mkdir(mode=0o700)
            private.private_file(
                meta / "vm.json",
                json.dumps(
                    {
                        "id": vm_id,
                        "image": spec.image.name,
                        "template": spec.template.name,
                        "tags": sorted(spec.tags),
                    },
                    indent=1,
                )
                + "\n",
            )
            if spec.user_data is not None:
                private.private_file(meta / "user-data", spec.user_data)
            for login in logins(spec).values():
                if login.home != "/":
                    login.home_on(disk).mkdir(mode=0o700, parents=True, exist_ok=True)
            # As a cloud installs its key pair for the image's user: from here on, this
            # file decides the acquiring user's logins (see VM.own_keys).
            (disk / ".ssh").mkdir(mode=0o700)
            private.private_file(disk / AUTHORIZED_KEYS, spec.authorized_keys)
            key = asyncssh.generate_private_key("ssh-ed25519")
            sock = _reserve(spec.address)
            made.append(Prepared(vm_id, disk, key, sock, sock.getsockname()[1]))
    except BaseException:
        for item in made:
            item.sock.close()
            shutil.rmtree(item.disk, ignore_errors=True)
        raise
    return made


def _reserve(address: str) -> socket.socket:
    """Blocking: a socket bound at ``address``: port 22 for a VM on a network when this
    process may take it and it is free there, else a port of the system's choice."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if address != "127.0.0.1" and os.geteuid() == 0:
            try:
                sock.bind((address, 22))
                return sock
            except OSError:
                pass  # taken (an sshd on all addresses): a port of its own then
        sock.bind((address, 0))
    except BaseException:
        sock.close()
        raise
    return sock


class DiskSFTPServer(asyncssh.SFTPServer):
    """SFTP rooted in a VM's disk that never follows a symbolic link out of it.

    asyncssh's chroot maps paths by their text and the OS then follows links, so
    after ``ln -s / hostroot`` a get or put of ``hostroot/...`` reached the host.
    Every mapped path is resolved here and refused (permission denied) if it leads
    outside the disk; links within it work as usual. Commands on a VM run as the
    cloud's user and can reach the host anyway: this keeps the file API to the disk,
    it is no security boundary. (asyncssh's SFTP server does its file I/O on the
    cloud's event loop; resolving adds a few lstat calls per request.)
    """

    def __init__(
        self, chan: asyncssh.SSHServerChannel[bytes], disk: bytes, home: bytes = b"/"
    ) -> None:
        super().__init__(chan, chroot=disk)
        self._root = os.path.realpath(disk)
        self._home = home

    def map_path(self, path: bytes) -> bytes:
        """The path on the disk: relative paths start at the login's home."""
        if not path.startswith(b"/"):
            path = self._home.rstrip(b"/") + b"/" + path
        mapped = super().map_path(path)
        real = os.path.realpath(mapped)
        if real != self._root and not real.startswith(self._root + b"/"):
            raise asyncssh.SFTPPermissionDenied(
                f"{path.decode(errors='replace')} leads outside the VM's disk"
            )
        return mapped

    def readlink(self, path: bytes) -> bytes:
        """A link's target: relative ones as they are, absolute ones as the VM sees them.

        (asyncssh's chrooted readlink resolves a relative target against the cloud's
        working directory instead.)
        """
        target = os.readlink(self.map_path(path))
        if not target.startswith(b"/"):
            return target
        return self.reverse_map_path(os.path.realpath(target))


@dataclass(eq=False)
class VM:
    """A VM record and, while it is up, its SSH server."""

    id: str
    spec: VMSpec
    disk: Path
    port: int
    host_key: asyncssh.SSHKey
    sock: socket.socket | None
    on_change: Callable[[VM], None]
    rng: random.Random
    state: ResourceState = ResourceState.PENDING
    detail: str = "pending"
    created: float = field(default_factory=time.time)
    extra: dict[str, Any] = field(default_factory=dict)
    acceptor: asyncssh.SSHAcceptor | None = None
    connections: set[asyncssh.SSHServerConnection] = field(default_factory=set)
    processes: set[asyncio.subprocess.Process | Command] = field(default_factory=set)
    #: The session of every command it started (their detached jobs stay in them).
    sessions: set[int] = field(default_factory=set)
    #: The cloud's record of the children asyncio waits for.
    table: ProcessTable = field(default_factory=ProcessTable)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    #: Set once the VM is torn down (processes killed, disk removed).
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    #: The users it knows, by name.
    users: dict[str, Login] = field(init=False)
    #: The isolation of the cloud, and the VM's holder while it runs with namespaces.
    isolation: Isolation = field(default_factory=lambda: Isolation("none", reason="default"))
    holder: Holder | None = None
    #: The cloud's fork server, which starts commands in the VM (isolation on, as root).
    spawner: Spawner | None = None

    def __post_init__(self) -> None:
        self.users = logins(self.spec)

    @property
    def public_key(self) -> str:
        """The host key the cloud publishes for this VM (OpenSSH format)."""
        return self.host_key.export_public_key().decode().strip()

    @property
    def access(self) -> str:
        return f"ssh://{self.spec.user}@{self.spec.address}:{self.port}"

    def to_json(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "id": self.id,
            "state": self.state.name,
            "detail": self.detail,
            "access": self.access,
            "address": spec.address,
            "tags": sorted(spec.tags),
            "token": spec.token,
            "host_key": self.public_key,
            "extra": {
                "template": spec.template.name,
                "image": spec.image.name,
                "cpus": spec.template.cpus,
                "memory": spec.template.memory,
                "port": self.port,
                "disk": str(self.disk),
                "created": self.created,
                "users": list(self.users),
                **({"network": spec.network} if spec.network else {}),
                **self.extra,
                **self._countdown(),
                **max_wait_time(self.extra, self.state.final),
            },
        }

    def _countdown(self) -> dict[str, float]:
        """Seconds left before a preemption that was announced (``preempt_in``)."""
        at = self.extra.get("preempt_at")
        if at is None or self.state.final:
            return {}
        return {"preempt_in": round(max(0.0, at - time.time()), 3)}

    # -- state ----------------------------------------------------------------------
    def set_state(self, state: ResourceState, detail: str, **extra: Any) -> bool:
        """Move to ``state`` if that is a legal step; tell the cloud. False if not."""
        if self.state.final or not (state is self.state or self.state.can_become(state)):
            return False
        self.state, self.detail = state, detail
        self.extra.update(extra)
        self.on_change(self)
        return True

    # -- the SSH server -------------------------------------------------------------
    async def listen(self, host_key: asyncssh.SSHKey | None = None) -> None:
        """Start answering SSH on the VM's port (with ``host_key``, default its own)."""
        key = host_key or self.host_key
        authorized = asyncssh.import_authorized_keys(self.spec.authorized_keys)
        vm = self

        class Server(asyncssh.SSHServer):
            def __init__(self) -> None:
                self._conn: asyncssh.SSHServerConnection | None = None

            def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
                self._conn = conn
                vm.connections.add(conn)

            def connection_lost(self, exc: Exception | None) -> None:
                if self._conn is not None:
                    vm.connections.discard(self._conn)

            async def begin_auth(self, username: str) -> bool:
                if vm.spec.faults.ssh_delay:
                    await asyncio.sleep(vm.spec.faults.ssh_delay)
                if username not in vm.users and vm.holder is not None:
                    # A user the VM's own /etc/passwd has (one a bootstrap added).
                    entry = await asyncio.to_thread(passwd, vm.holder, username)
                    if entry is not None:
                        vm.users[username] = Login(username, entry.uid, entry.home, entry)
                login = vm.users.get(username)
                if login is None and self._conn is not None:
                    # As sshd does: no method can succeed, and nothing says why.
                    self._conn.set_authorized_keys(None)
                elif login is not None and self._conn is not None:
                    found, keys = await asyncio.to_thread(vm.own_keys, login)
                    if found:
                        self._conn.set_authorized_keys(keys)
                return True

        disk = os.fsencode(self.disk)
        options: dict[str, Any] = {
            "server_factory": Server,
            "server_host_keys": [key],
            "authorized_client_keys": authorized,
            "process_factory": self._process,
            "sftp_factory": lambda chan: DiskSFTPServer(
                chan, disk, os.fsencode(self._login(chan).home)
            ),
            "allow_scp": True,
            "encoding": None,
            "login_timeout": 30,
            "backlog": 128,
        }
        if self.sock is not None:
            sock, self.sock = self.sock, None
            try:
                acceptor = await asyncssh.listen(sock=sock, **options)
            except BaseException:
                sock.close()
                raise
        else:  # listening again (a new host key): the port was ours a moment ago
            acceptor = await asyncssh.listen(
                self.spec.address, self.port, reuse_address=True, **options
            )
        self.acceptor = acceptor
        if self.state.final:  # it ended while the server was starting
            self.close_server()

    def close_server(self) -> None:
        """Stop listening and drop every connection (the VM's network goes away)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.acceptor is not None:
            self.acceptor.close()
            self.acceptor = None
        for conn in list(self.connections):
            conn.abort()
        self.connections.clear()

    def kill_processes(self) -> None:
        """SIGKILL the process group of every command the VM runs now, and its holder."""
        for proc in list(self.processes):
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
        if self.holder is not None:
            self.holder.kill()

    def own_keys(self, login: Login) -> tuple[bool, asyncssh.SSHAuthorizedKeys | None]:
        """Blocking: the keys ``login``'s own ``~/.ssh/authorized_keys`` in the VM
        authorizes, as sshd reads them: ``(False, None)`` where it has no such file
        (the keys of the acquire decide), else ``(True, keys)`` (None: no valid key,
        every key is refused). Lines that are no key are skipped; a symbolic link
        there (the file itself), or a file its group or others may write (as
        sshd's ``StrictModes``), counts as no valid key. In an isolated VM the path
        and its links are resolved in the VM, never on the host (``open_in``).
        """
        path = Path(login.home_in(self.disk), AUTHORIZED_KEYS)
        try:
            if self.holder is not None:  # the VM's path, resolved in the VM (its links too)
                fd = open_in(self.holder, str(path), os.O_RDONLY | os.O_NOFOLLOW)
            else:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return False, None
        except OSError:
            return True, None
        with os.fdopen(fd, "rb") as handle:
            if os.fstat(handle.fileno()).st_mode & 0o022:
                return True, None  # others may write it: sshd refuses it (StrictModes)
            text = handle.read(1 << 20).decode(errors="replace")
        good = []
        for line in text.splitlines():
            try:  # sshd skips a line it cannot read, and reads on
                asyncssh.import_authorized_keys(line)
            except (ValueError, asyncssh.KeyImportError):
                continue
            good.append(line)
        return True, asyncssh.import_authorized_keys("\n".join(good)) if good else None

    def _login(self, chan: asyncssh.SSHServerChannel[bytes]) -> Login:
        """The user a channel's connection logged in as (refused logins never get one)."""
        return self.users[chan.get_extra_info("username")]

    def environment(self, requested: object, login: Login | None = None) -> dict[str, str]:
        """A command's environment: the login's, then the client's requests but ours."""
        login = login or self.users[self.spec.user]
        cloud = self.disk.parent.parent
        env = {
            "HOME": login.home_in(self.disk),
            "HOSTNAME": self.id,
            "USER": login.name,
            "LOGNAME": login.name,
            "SHELL": "/bin/sh",
            "PATH": f"{TOOLS if self.holder is None else VM_TOOLS}:{os.environ.get('PATH', _PATH)}",
            "LANG": "C.UTF-8",
            MARKER: self.id,
            CLOUD_MARKER: str(cloud),
            USER_MARKER: login.name,
            UID_MARKER: str(login.uid),
            ADDRESS_MARKER: self.spec.address,
        }
        if isinstance(requested, dict):
            for name, value in requested.items():
                if isinstance(name, str) and isinstance(value, str) and name not in _OURS:
                    env[name] = value
        return env

    async def _process(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        """Run one exec (or shell) request as a local process group."""
        command = process.command
        argv = ["/bin/sh", "-c", command] if command is not None else ["/bin/sh"]
        if self.state.final:
            process.stderr.write(f"sim: VM {self.id} is {self.state.name}\n".encode())
            process.exit(255)
            return
        login = self._login(process.channel)
        self.table.spawning += 1
        try:
            env = self.environment(process.env, login)
            proc = await self._spawn(argv, env, login)
            self.table.managed.add(proc.pid)
        except (OSError, subprocess.SubprocessError) as exc:
            process.stderr.write(f"sim: cannot start the command: {exc}\n".encode())
            process.exit(127)
            return
        finally:
            self.table.spawning -= 1
        self.processes.add(proc)
        self.sessions.add(proc.pid)  # the shell leads a session of its own
        if self.state.final:
            # The VM ended while the command started: its teardown may have missed it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

        def forward(name: str) -> None:
            sig = _SIGNALS.get(name.upper())
            if sig is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, sig)

        # SSHServerSession.signal_received is the session callback for "signal"
        # requests; the stream API delivers them only to a pending stdin read,
        # which never comes once the client has sent EOF.
        process.signal_received = forward  # type: ignore[method-assign,assignment]
        try:
            status = await self._pump(process, proc)
        finally:
            self.processes.discard(proc)
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
            self.table.managed.discard(proc.pid)
            self._forget_session(proc.pid)
        if status < 0:
            name = signal.Signals(-status).name.removeprefix("SIG")
            process.exit_with_signal(name)
        else:
            process.exit(status)

    async def _spawn(
        self, argv: list[str], env: dict[str, str], login: Login
    ) -> asyncio.subprocess.Process | Command:
        """Start ``argv`` for ``login`` in its home, in a session of its own.

        With a holder, the command runs inside the VM's namespaces (as the login's
        account): started by the cloud's fork server, or else (in a user namespace)
        by a child of the cloud that joins them before it execs. Either way the
        process started is the command's shell itself, leading its session.
        """
        home = login.home_in(self.disk)
        account = login.account
        if self.holder is not None and self.spawner is not None:
            ids = (account.uid, account.gid) if account is not None else None
            return await self.spawner.spawn(self.holder.init, argv, env, home, ids)
        if self.holder is not None:
            where: dict[str, Any] = {"preexec_fn": enter(self.holder, home, account)}
        else:
            where = {"cwd": home}
        return await asyncio.create_subprocess_exec(
            *argv,
            **where,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )

    def _forget_session(self, sid: int) -> None:
        """Stop tracking a finished command's session once nothing is left in it.

        Its process group (which detached jobs of a shell without job control stay in)
        is empty: then the id may be reused, and must not be taken for this VM's.
        """
        try:
            os.killpg(sid, 0)
        except (ProcessLookupError, PermissionError):  # empty, or someone else's now
            self.sessions.discard(sid)

    async def _pump(
        self,
        process: asyncssh.SSHServerProcess[bytes],
        proc: asyncio.subprocess.Process | Command,
    ) -> int:
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        stdin = proc.stdin

        async def feed() -> None:
            try:
                while True:
                    try:
                        data = await process.stdin.read(_READ)
                    except (asyncssh.SignalReceived, asyncssh.BreakReceived):
                        continue  # signals are forwarded by the session callback
                    except asyncssh.TerminalSizeChanged:
                        continue
                    if not data:
                        break
                    stdin.write(data)
                    await stdin.drain()
            except (BrokenPipeError, ConnectionError, asyncssh.Error):
                pass  # the command stopped reading, or the client went away
            finally:
                with contextlib.suppress(BrokenPipeError, ConnectionError):
                    stdin.close()

        async def drain(src: asyncio.StreamReader, dst: asyncssh.SSHWriter[bytes]) -> None:
            connected = True
            while data := await src.read(_READ):
                if not connected:
                    continue  # keep reading, so the command never blocks on a full pipe
                try:
                    dst.write(data)
                    await dst.drain()
                except (BrokenPipeError, ConnectionError, asyncssh.Error):
                    connected = False

        feeder = asyncio.ensure_future(feed())
        try:
            await asyncio.gather(
                drain(proc.stdout, process.stdout), drain(proc.stderr, process.stderr)
            )
            return await proc.wait()
        finally:
            feeder.cancel()
            # Wait for the cancelled feeder to end; its outcome is not wanted.
            await asyncio.gather(feeder, return_exceptions=True)
