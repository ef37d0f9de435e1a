"""Simulated VMs that are machines of their own: Linux namespaces and an overlay root.

By default (``auto``), where the host allows it (root and util-linux: CI), each VM
is a machine of its own:

- a root of its own: an overlay whose lower layer is the host's ``/`` (read-only)
  and whose upper layer is ``<disk>/.sim/upper``; whatever a command writes under
  ``/etc``, ``/opt``, ``/usr`` ... lands there, never on the host;
- ``/home`` is the disk's ``home`` directory, and the disk itself is at its host
  path, so SFTP and commands see the same files (root's home, ``/root``, is part
  of the overlay: the host's, with the VM's changes in the upper layer);
- ``/proc`` of its own PID namespace (its processes only), ``/tmp`` and ``/run``
  private (tmpfs), ``/dev`` and ``/sys`` the host's;
- its hostname is its id (a UTS namespace of its own);
- the host directories named in ``$AIORES_SIM_SHARED`` (``os.pathsep``-separated;
  the cloud's ``shared`` option), bound read-write at their own paths, as a
  cluster's shared file system is mounted on every node: the one way to hand a VM a
  file through a host path. The sim's test fixture shares the test session's
  temporary directory this way.

SFTP is served by the cloud from the VM's disk: a login's home and relative paths
are the files its commands see, but absolute paths outside the disk (``/opt``,
``/tmp``, ``/etc`` of the overlay) are not served (``DoesNotExist``); copy those
with a command (``cat``, ``tar``) or through a shared directory.

It still shares the host's network, devices and kernel, and the cloud's user is
root inside: it keeps a bootstrap off the host; it is no sandbox.

How: the cloud starts a small *fork server* (:mod:`aiores_sim._forkserver`) when it
starts. For each VM the server forks a child in a new PID namespace: the VM's PID 1.
It makes mount and UTS namespaces of its own, mounts the machine (a shell script:
overlay, binds, ``pivot_root``), then execs ``sleep`` with ``SIGCHLD`` ignored, so
the kernel reaps the VM's orphans: one process per VM, about 90 KiB of its own
memory, no descriptor in the cloud. A command for the VM is forked by the server
too, after joining the VM's PID namespace for its children (``setns``); the child
joins the VM's mount and UTS namespaces, leads a session of its own, becomes the
login's account and execs the login's shell: one fork of a small process, never of
the cloud (CPython forks the whole cloud, instead of vfork-ing it, whenever a child
must run code before it execs). The cloud learns the pid once the command has
exec'd and signals its process group as without isolation; the server reports its
exit status (:mod:`aiores_sim._spawner`).

Users: a login names a user the cloud gave the VM (the acquiring user, ``root``,
the ``users`` option; commands run as the cloud's own user, as without isolation),
or else one of the VM's own ``/etc/passwd``: after ``useradd wf`` in the VM,
``user="wf"`` logs in and its commands run as wf's uid and gid, in its home.

Teardown: a VM's end kills its PID 1; the kernel then kills every process of the
VM's PID namespace, and the mount namespace (with the overlay) goes with the last of
them; the disk, upper layer included, is removed. PID 1 carries
``AIORES_SIM_HOLDER=<id>`` and works in the VM's disk, so a cloud that crashed leaves
it findable.

Without root, the VM would be made by ``unshare --user --map-root-user`` (a user
namespace mapping the cloud's user to root; the holder is then ``unshare``, its PID
1 shell and a ``sleep``), and commands would join it in a pre-exec hook of the
cloud's own spawn (:func:`enter`: the slow path, a fork of the cloud per command).
That needs an overlay of ``/`` made in a user namespace, which Linux refuses where
``/`` has mounts below it (``failed to clone lowerpath``: the usual case); the probe
(:func:`choose`) tries exactly that, and ``auto`` falls back to ``none`` then,
saying why (in the cloud's log, its hello and ``aiores sim status``).

Modes: ``auto`` (the default: namespaces where the host allows them, else none),
``namespaces`` (required: the cloud refuses to start without them), ``none``
(commands run on the host as the cloud's user, with stand-in ``hostname``/``id``/
``whoami``: a sim VM is then no boundary at all). The cloud's option, else
``$AIORES_SIM_ISOLATION``, else ``auto``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import resource
import shutil
import signal
import subprocess
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from aiores import BadParameter, NoSuccess

if TYPE_CHECKING:
    from ._spawner import Spawner

__all__ = [
    "ENV",
    "HOLDER_MARKER",
    "MODES",
    "SHARED_ENV",
    "TOOLS",
    "VM_TOOLS",
    "Holder",
    "Isolation",
    "PasswdEntry",
    "choose",
    "enter",
    "open_in",
    "passwd",
    "shared_paths",
    "start_holder",
    "start_machine",
]

#: The environment variable choosing the isolation of a cloud's VMs.
ENV = "AIORES_SIM_ISOLATION"
MODES = ("auto", "namespaces", "none")
#: The environment variable naming host directories every isolated VM shares (bound
#: read-write at the same path in each), separated by ``os.pathsep``.
SHARED_ENV = "AIORES_SIM_SHARED"
#: The environment variable naming the VM a holder makes.
HOLDER_MARKER = "AIORES_SIM_HOLDER"
#: The stand-ins for whoami and id (and hostname, uname), first on every command's
#: PATH: where they are on the host (aiores may be installed where a VM sees nothing
#: of the host: under /tmp or /home) and where an isolated VM has them bound.
TOOLS = Path(__file__).parent / "tools"
VM_TOOLS = "/run/aiores-sim/tools"
#: Seconds a holder may take to make a VM's machine.
START_TIMEOUT = 30.0
_NAMESPACES = ("mnt", "uts", "pid")

# Making the VM's machine: $1 the VM's id, $2 its disk, $3 more overlay options, then
# the host directories shared with every VM (bound at their own paths). Runs
# as root in fresh mount and UTS namespaces, as PID 1 of a fresh PID namespace or its
# child (in a user namespace, the overlay keeps its own attributes in user.* xattrs:
# "userxattr"). pivot_root moves every process of the namespace whose root was the
# host's to the VM's.
_MACHINE = r"""
set -eu
id=$1 disk=$2 options=$3
shift 3
meta=$disk/.sim
root=$meta/root
mount --make-rprivate /
hostname "$id"
mkdir -p "$meta/upper" "$meta/work" "$root" "$disk/home"
mount -t overlay overlay -o "lowerdir=/,upperdir=$meta/upper,workdir=$meta/work$options" "$root"
mount --rbind /dev "$root/dev"
mount --rbind /sys "$root/sys"
mount -t proc proc "$root/proc"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
mount -t tmpfs -o mode=755 tmpfs "$root/run"
mkdir -p "$root$VM_TOOLS"
mount --bind "$AIORES_SIM_TOOLS" "$root$VM_TOOLS"
mount --bind "$disk/home" "$root/home"
for shared in "$@"; do
  mkdir -p "$root$shared"
  mount --rbind "$shared" "$root$shared"
done
mkdir -p "$root$disk"
mount --bind "$disk" "$root$disk"
cd "$root"
pivot_root . .
umount -l .
cd /
"""
# The holder of a VM made by unshare (in a user namespace): the machine, then "ready",
# then it waits as the VM's PID 1 (a shell and its sleep).
_HOLDER = (
    _MACHINE
    + r"""
echo ready
exec >/dev/null 2>&1 </dev/null
while :; do sleep 86400 & wait; done
"""
)


@dataclass(frozen=True, slots=True)
class Isolation:
    """The isolation in effect: its mode, whether a user namespace is used, and why."""

    mode: str
    user_namespace: bool = False
    reason: str = ""

    @property
    def on(self) -> bool:
        return self.mode == "namespaces"

    def describe(self) -> str:
        """One line for the cloud's log, hello and ``aiores sim status``."""
        if self.on:
            how = "user, " if self.user_namespace else ""
            return (
                f"namespaces ({how}mount, UTS, PID; overlay root): each VM is a machine of its own"
            )
        return f"none: VM commands run on the host as the cloud's user ({self.reason})"


def requested(value: object) -> str:
    """The mode asked for (``value``, else ``$AIORES_SIM_ISOLATION``, else auto), checked."""
    if value is None:
        value = os.environ.get(ENV) or "auto"
    if not isinstance(value, str) or value not in MODES:
        raise BadParameter(f"isolation must be one of {', '.join(MODES)}, not {value!r}")
    return value


def shared_paths(value: object = None) -> tuple[str, ...]:
    """The host directories shared with every isolated VM (``value``, else
    ``$AIORES_SIM_SHARED``, ``os.pathsep``-separated), checked.

    Raises:
        BadParameter: a path that is not an absolute, existing directory (or holds
            NUL or characters that are no file name's).
    """
    if value is None:
        value = [p for p in os.environ.get(SHARED_ENV, "").split(os.pathsep) if p]
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise BadParameter(f"shared must be a list of directories, not {value!r}")
    paths = []
    for path in value:
        if not isinstance(path, str) or not path or "\0" in path:
            raise BadParameter(f"shared: {path!r} is no path")
        try:
            path.encode()
        except UnicodeEncodeError:
            raise BadParameter(f"shared: {path!r} is no path") from None
        if not os.path.isabs(path) or not os.path.isdir(path):
            raise BadParameter(f"shared: {path!r} is not an absolute path of a directory")
        paths.append(os.path.normpath(path))
    return tuple(paths)


def choose(value: object = None) -> Isolation:
    """Blocking: the isolation for ``value`` (see :func:`requested`) on this host.

    Raises:
        BadParameter: an unknown mode.
        NoSuccess: ``namespaces`` asked for where the host cannot make them.
    """
    mode = requested(value)
    if mode == "none":
        return Isolation("none", reason="isolation=none")
    problem = _unavailable()
    user_ns = os.geteuid() != 0
    if problem is not None:
        if mode == "namespaces":
            raise NoSuccess(f"isolation=namespaces: this host cannot make them: {problem}")
        return Isolation("none", reason=f"isolation=auto, but {problem}")
    return Isolation("namespaces", user_namespace=user_ns)


def _unavailable() -> str | None:
    """Blocking: why this host cannot isolate VMs (None: it can)."""
    if not os.path.exists("/proc/self/ns/mnt"):
        return "this is no Linux with namespaces"
    for tool in ("unshare", "mount", "pivot_root", "hostname"):
        if shutil.which(tool) is None:
            return f"there is no {tool} command"
    if _libc() is None:
        return "setns(2) cannot be called"
    # Can this process make the namespaces and an overlay of / ($0: a scratch dir)?
    options = ",userxattr" if os.geteuid() != 0 else ""
    script = (
        "mkdir -p $0/u $0/w $0/r && "
        f"mount -t overlay overlay -o lowerdir=/,upperdir=$0/u,workdir=$0/w{options} $0/r"
    )
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f".aiores-sim-probe-{os.getpid()}"
    try:
        done = subprocess.run(
            [*_unshare_argv(os.geteuid() != 0), "sh", "-c", script, str(scratch)],
            capture_output=True,
            timeout=START_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare failed: {exc}"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if done.returncode != 0:
        why = done.stderr.decode(errors="replace").strip().splitlines()
        return f"unshare failed: {why[-1] if why else done.returncode}"
    return None


def _unshare_argv(user_ns: bool) -> list[str]:
    argv = ["unshare"]
    if user_ns:
        argv += ["--user", "--map-root-user"]
    return [*argv, "--mount", "--uts", "--pid", "--fork", "--kill-child"]


_LIBC: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL | None:
    global _LIBC
    if _LIBC is None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            _ = libc.setns
        except (OSError, AttributeError):
            return None
        _LIBC = libc
    return _LIBC


@dataclass(slots=True)
class Holder:
    """A VM's holder: in the host's PID namespace, the pid of the VM's PID 1 (whose
    ``/proc/<pid>/ns`` commands enter), and how its end is awaited.

    Made by the cloud's fork server (:func:`start_machine`: PID 1 is the holder, the
    VM's only process), or by ``unshare`` in a user namespace (:func:`start_holder`:
    ``process`` is the ``unshare``, PID 1 its child).
    """

    init: int
    user_namespace: bool
    ended: asyncio.Future[int] | None = None
    process: asyncio.subprocess.Process | None = None
    killed: bool = False

    @property
    def root(self) -> Path:
        """The VM's ``/`` as the host reaches it."""
        return Path(f"/proc/{self.init}/root")

    def kill(self) -> None:
        """SIGKILL the holder: the VM's PID namespace and every process in it end.

        Once only: afterwards the PID 1's pid may belong to another process.
        """
        if self.killed:
            return
        self.killed = True
        pids = [self.init] + ([self.process.pid] if self.process is not None else [])
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, 9)

    async def wait(self) -> None:
        """Wait for the holder to end (cancelling the wait changes nothing)."""
        if self.process is not None:
            await self.process.wait()
        elif self.ended is not None:
            # A shared future (the holder's end, set by the fork server's reader): a
            # cancelled waiter stops only its own wait.
            await asyncio.shield(self.ended)


def _machine_env(vm_id: str) -> dict[str, str]:
    """The environment of the script making VM ``vm_id``'s machine."""
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        HOLDER_MARKER: vm_id,
        "AIORES_SIM_TOOLS": str(TOOLS),
        "VM_TOOLS": VM_TOOLS,
    }


async def start_machine(
    vm_id: str, disk: Path, spawner: Spawner, shared: tuple[str, ...] = ()
) -> Holder:
    """Make VM ``vm_id``'s machine through the cloud's fork server; returns its holder.

    The holder is the VM's PID 1, a fork of the server: it makes the machine (see the
    module's docs) with a script, then reaps the VM's orphans. It works in the VM's
    disk, so a cloud that crashed leaves it findable.

    Raises:
        NoSuccess: the machine could not be made (the holder has ended then).
    """
    env = _machine_env(vm_id)
    try:
        async with asyncio.timeout(START_TIMEOUT):
            args = [vm_id, str(disk), "", *shared]
            init, ended = await spawner.holder(disk, _MACHINE, args, env)
    except (OSError, TimeoutError) as exc:
        why = exc.strerror or str(exc) or "it took too long"
        raise NoSuccess(f"cannot make VM {vm_id}'s machine: {why}") from exc
    return Holder(init, False, ended=ended)


async def start_holder(
    vm_id: str, disk: Path, isolation: Isolation, shared: tuple[str, ...] = ()
) -> Holder:
    """Make VM ``vm_id``'s machine (see the module's docs); returns its holder.

    The holder carries no ``AIORES_SIM_VM`` mark (it is no process the VM's user
    started); it works in the VM's disk, so a cloud that crashed leaves it findable.

    Raises:
        NoSuccess: the machine could not be made (the holder is ended then).
    """
    argv = [*_unshare_argv(isolation.user_namespace), "sh", "-c", _HOLDER, "sim-holder"]
    loop = asyncio.get_running_loop()
    # As create_subprocess_exec, keeping the transport: once the holder is ready, its
    # pipes are closed here (a VM keeps no descriptor of the cloud's busy).
    transport, protocol = await loop.subprocess_exec(
        lambda: asyncio.subprocess.SubprocessStreamProtocol(limit=2**16, loop=loop),
        *argv,
        vm_id,
        str(disk),
        ",userxattr" if isolation.user_namespace else "",
        *shared,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_machine_env(vm_id),
        cwd=disk,
        start_new_session=True,
    )
    process = asyncio.subprocess.Process(transport, protocol, loop)
    try:
        assert process.stdout is not None
        assert process.stderr is not None
        async with asyncio.timeout(START_TIMEOUT):
            line = await process.stdout.readline()
            if line != b"ready\n":
                err = await process.stderr.read()
                await process.wait()
                why = err.decode(errors="replace").strip().splitlines()
                raise NoSuccess(
                    f"cannot make VM {vm_id}'s machine: {why[-1] if why else 'holder ended'}"
                )
        init = await asyncio.to_thread(_child_of, process.pid)
        for fd in (1, 2):
            pipe = transport.get_pipe_transport(fd)
            if pipe is not None:
                pipe.close()
        return Holder(init, isolation.user_namespace, process=process)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        # Killed: asyncio's child watcher reaps it even if this wait is cancelled.
        await process.wait()
        raise


def _child_of(pid: int) -> int:
    with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as handle:
        children = handle.read().split()
    if len(children) != 1:
        raise NoSuccess(f"the VM's holder {pid} has {len(children)} children, not 1")
    return int(children[0])


@dataclass(frozen=True, slots=True)
class PasswdEntry:
    """A user of a VM's own ``/etc/passwd``."""

    name: str
    uid: int
    gid: int
    home: str


#: openat2(2) (the same number on every architecture), and its ``resolve`` flags.
_SYS_OPENAT2 = 437
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


def open_in(holder: Holder, path: str, flags: int = os.O_RDONLY) -> int:
    """Blocking: open ``path`` as the VM's own processes would (a descriptor).

    The host reaches the VM's files through ``/proc/PID/root``, but a symbolic link
    there to an absolute path, or a ``..`` above the VM's root, would be resolved on
    the host: the host's file at that path instead of the VM's. ``openat2`` with
    ``RESOLVE_IN_ROOT`` resolves every link and ``..`` within the VM's root, as the
    kernel does for the VM's processes. A kernel without it (before Linux 5.6) gets
    a plain open that follows no link as the last part of the path.

    Raises:
        OSError: it cannot be opened.
    """
    root = os.open(holder.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        libc = _libc()
        if libc is not None:
            how = _OpenHow(flags | os.O_CLOEXEC, 0, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
            fd = libc.syscall(
                ctypes.c_long(_SYS_OPENAT2),
                ctypes.c_int(root),
                ctypes.c_char_p(os.fsencode(path.lstrip("/") or ".")),
                ctypes.byref(how),
                ctypes.c_size_t(ctypes.sizeof(how)),
            )
            if fd >= 0:
                return int(fd)
            code = ctypes.get_errno()
            if code not in (errno.ENOSYS, errno.EPERM):  # EPERM: a seccomp filter's "no"
                raise OSError(code, os.strerror(code), path)
        return os.open(path.lstrip("/") or ".", flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root)
    finally:
        os.close(root)


def passwd(holder: Holder, name: str) -> PasswdEntry | None:
    """Blocking: user ``name`` of the VM's own ``/etc/passwd`` (None: it has no such user)."""
    try:
        with os.fdopen(open_in(holder, "/etc/passwd"), "rb") as handle:
            text = handle.read(1 << 22).decode(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 6 and fields[0] == name:
            try:
                return PasswdEntry(name, int(fields[2]), int(fields[3]), fields[5] or "/")
            except ValueError:
                return None
    return None


#: Signals whose handlers the pre-exec hook resets (the cloud's Python handlers would
#: otherwise swallow them in the child before it execs).
_RESET = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGCHLD")


def enter(holder: Holder, cwd: str, as_user: PasswdEntry | None = None) -> Callable[[], None]:
    """A pre-exec hook: join ``holder``'s namespaces, become ``as_user``, go to ``cwd``.

    Runs in the child between fork and exec. A process cannot move itself into a
    PID namespace (``setns`` places its later children there), so the hook forks:
    the grandchild returns and execs the command, inside the VM's PID namespace,
    in the session and process group the child leads; the child closes every file
    descriptor, waits for it and ends as it did (the same exit status, or killed by
    the same signal). The cloud learns the pid only once the command has exec'd
    (the exec report pipe closes then), so a signal it sends the group reaches the
    command itself, never a half-started copy. The namespace files are opened before
    any is joined: inside the VM's mount namespace the host's ``/proc/<pid>`` is not
    visible.
    """
    libc = _libc()
    if libc is None:
        raise NoSuccess("setns(2) cannot be called")
    setns = libc.setns
    reset = [getattr(signal, name) for name in _RESET]
    names = (("user",) if holder.user_namespace else ()) + _NAMESPACES
    paths = [f"/proc/{holder.init}/ns/{name}" for name in names]

    def hook() -> None:
        for sig in reset:
            libc.signal(sig, 0)  # SIG_DFL, below Python's handlers
        fds = [os.open(path, os.O_RDONLY | os.O_CLOEXEC) for path in paths]
        try:
            for fd in fds:
                if setns(fd, 0) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, f"setns: {os.strerror(code)}")
        finally:
            for fd in fds:
                os.close(fd)
        if as_user is not None:
            os.setgroups([as_user.gid])
            os.setgid(as_user.gid)
            os.setuid(as_user.uid)
        try:
            os.chdir(cwd)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.EACCES, errno.ENOTDIR):
                raise
            os.chdir("/")
        with warnings.catch_warnings():
            # Python 3.12+ warns of fork() in a process with threads: this child has one.
            warnings.simplefilter("ignore", DeprecationWarning)
            command = os.fork()
        if command:
            _mirror(command)

    return hook


def _mirror(pid: int) -> NoReturn:
    """In the hook's child: wait for the command ``pid`` and end as it did."""
    try:
        os.closerange(0, _max_fd())
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            os.kill(os.getpid(), sig)
            os._exit(128 + sig)
        os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 255)
    finally:
        os._exit(255)


def _max_fd() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft > 0 else 1024
