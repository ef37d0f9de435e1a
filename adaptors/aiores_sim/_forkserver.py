"""The sim cloud's fork server: makes isolated VMs and starts their commands.

A small process of its own (standard library only, run as ``python -I -S`` with
this file), started with a cloud whose VMs are isolated, so that neither making a
VM nor starting a command forks the cloud process itself (a large one: CPython
forks it, instead of vfork-ing it, whenever the child must do anything before it
execs). This process stays small, so its forks are cheap.

It reads requests from the socket whose descriptor is its first argument: each a
4-byte big-endian length and a JSON object; a ``spawn`` request carries the
command's stdin, stdout and stderr as ``SCM_RIGHTS`` descriptors. It answers on
its stdout, one JSON object per line:

- ``{"op": "holder", "id": n, "disk": path, "script": sh, "args": [...]}``: make a VM's
  machine. The server forks in a new PID namespace (``unshare`` of its own
  pid-for-children, restored right after): the child is the VM's PID 1. It makes
  mount and UTS namespaces of its own, runs ``script`` in ``disk`` (``sh -c script
  sim-holder ARGS``, which mounts the VM's root and pivots into it; see
  :mod:`aiores_sim._isolation`), and then execs ``sleep`` as the VM's init with
  ``SIGCHLD`` ignored (the kernel reaps the VM's orphans): the VM's only process.
  Answer: ``{"id": n, "pid": pid}`` once the script has succeeded, else
  ``{"id": n, "errno": 0, "error": "..."}``.
- ``{"op": "spawn", "id": n, "init": pid, "argv": [...], "env": {...}, "cwd": dir,
  "uid": u | null, "gid": g | null}``: start a command in VM ``init``'s namespaces.
  The server joins the VM's PID namespace for its children (``setns``) and forks
  once; the child joins the VM's mount and UTS namespaces, leads a session of its
  own (its pid is its session and process group: the cloud signals that group),
  takes the descriptors as 0, 1, 2, becomes ``uid``/``gid``, goes to ``cwd`` (``/``
  if it cannot) and execs. Answer: ``{"id": n, "pid": pid}`` once the exec has
  happened (an exec-report pipe closes then: a signal the cloud sends the group
  afterwards reaches the command itself), else ``{"id": n, "errno": e, "error":
  "..."}``.

Every process it started is reported when it ends: ``{"exit": pid, "status": s}``
(the exit code, or minus the signal that killed it), after its start was answered.
It reaps its children on ``SIGCHLD`` (no descriptor per child: a cloud of thousands
of VMs and their commands costs the server no more descriptors than one).
The server ends when its socket does (the cloud closed it or died), and with the
cloud (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import selectors
import signal
import socket
import struct
import sys
from collections import deque
from typing import Any, NoReturn

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWPID = 0x20000000
_PR_SET_PDEATHSIG = 1
_HEADER = struct.Struct(">I")
#: What a VM's PID 1 becomes once the VM is made (68 years).
_SLEEP = ["/bin/sleep", "2147483647"]
#: Descriptors one ``spawn`` request carries (stdin, stdout, stderr).
STDIO = 3

_libc = ctypes.CDLL(None, use_errno=True)


def _call(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def setns(fd: int, kind: int) -> None:
    _call(_libc.setns(fd, kind), "setns")


def unshare(flags: int) -> None:
    _call(_libc.unshare(flags), "unshare")


def _close_others(keep: set[int]) -> None:
    """Close every descriptor but ``keep`` (the server's socket, pipes, others' stdio)."""
    limit = os.sysconf("SC_OPEN_MAX")
    start = 0
    for fd in sorted(keep):
        if start < fd:  # closerange(n, n) would close every descriptor from n on
            os.closerange(start, fd)
        start = fd + 1
    os.closerange(start, limit if limit > 0 else 1 << 20)


def _report(fd: int, exc: BaseException) -> NoReturn:
    """In a child that failed to start: tell the server why, and end."""
    try:
        code = exc.errno if isinstance(exc, OSError) and exc.errno else 0
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        os.write(fd, f"{code}:{why}".encode(errors="replace")[:4000])
    finally:
        os._exit(127)


def _reset_signals() -> None:
    # CPython ignores these; an exec'd command must get the defaults back.
    for name in ("SIGPIPE", "SIGXFSZ", "SIGXFZ"):
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def _command(request: dict[str, Any], stdio: list[int], ns_fds: list[int], report: int) -> NoReturn:
    """In the forked child: enter the VM, become the command (see the module's docs)."""
    try:
        for fd in ns_fds:
            setns(fd, 0)
        os.setsid()
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)
        gid, uid = request.get("gid"), request.get("uid")
        if gid is not None:
            os.setgroups([gid])
            os.setgid(gid)
        if uid is not None:
            os.setuid(uid)
        try:
            os.chdir(request["cwd"])
        except OSError:
            os.chdir("/")
        _reset_signals()
        argv = request["argv"]
        os.execve(argv[0], argv, request["env"])
    except BaseException as exc:
        _report(report, exc)
    os._exit(127)


def _init(request: dict[str, Any], report: int) -> NoReturn:
    """In the forked child, PID 1 of a new PID namespace: make the VM, then reap."""
    try:
        null = os.open(os.devnull, os.O_RDWR)
        errors_r, errors_w = os.pipe()
        for target in (0, 1):
            os.dup2(null, target)
        os.dup2(errors_w, 2)
        _close_others({0, 1, 2, report, errors_r, errors_w})
        os.setsid()
        os.chdir(request["disk"])
        unshare(CLONE_NEWNS | CLONE_NEWUTS)
        argv = ["/bin/sh", "-c", request["script"], "sim-holder", *request["args"]]
        script = os.posix_spawn(argv[0], argv, dict(request["env"]))
        os.dup2(0, 2)  # /dev/null: the setup's stderr pipe is the script's alone now
        os.close(errors_w)
        chunks = []
        while chunk := os.read(errors_r, 65536):
            chunks.append(chunk)
        os.close(errors_r)
        _, status = os.waitpid(script, 0)
        if status != 0:
            lines = b"".join(chunks).decode(errors="replace").strip().splitlines()
            raise OSError(0, lines[-1] if lines else f"the VM's setup ended with {status}")
        os.close(report)  # ready
    except BaseException as exc:
        _report(report, exc)
    # The VM's init from here on: a small program instead of this fork of the server
    # (whose writes after the fork made a megabyte of its memory its own). SIGCHLD
    # ignored (kept across exec) makes the kernel reap the VM's orphans: nothing
    # else waits for them.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    with contextlib.suppress(OSError):
        os.execve(_SLEEP[0], _SLEEP, dict(request["env"]))
    os._exit(1)


class Server:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.selector = selectors.DefaultSelector()
        self.buffer = bytearray()
        self.fds: deque[int] = deque()
        self.own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        #: Children whose start is not answered yet, with their exit status if they
        #: were reaped meanwhile (their exit is answered after their start).
        self.starting: dict[int, int | None] = {}
        self.running: set[int] = set()
        # Children are reaped on SIGCHLD (no descriptor per child): the handler only
        # wakes the selector. A full pipe already wakes it: no warning then (CPython
        # can deadlock reporting it from the handler while the main thread holds the
        # lock of its pending calls).
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.selector.register(wake_r, selectors.EVENT_READ, ("reap",))
        self.selector.register(sock, selectors.EVENT_READ, ("request",))

    def answer(self, message: dict[str, Any]) -> None:
        data = (json.dumps(message) + "\n").encode()
        while data:
            data = data[os.write(1, data) :]

    def serve(self) -> None:
        while True:
            for key, _ in self.selector.select():
                kind, *rest = key.data
                if kind == "request":
                    if not self.receive():
                        return
                elif kind == "started":
                    self.started(key.fd, *rest)
                else:
                    self.reap(key.fd)

    def receive(self) -> bool:
        """Read what the socket has; handle each whole request. False at its end."""
        data, ancillary, flags, _ = self.sock.recvmsg(1 << 20, socket.CMSG_SPACE(64 * 4))
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                count = len(payload) // 4
                for fd in struct.unpack(f"{count}i", payload[: count * 4]):
                    os.set_inheritable(fd, False)
                    self.fds.append(fd)
        if flags & socket.MSG_CTRUNC:
            raise SystemExit("fork server: descriptors were lost")
        if not data:
            return False
        self.buffer += data
        while len(self.buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self.buffer)
            if len(self.buffer) < _HEADER.size + size:
                break
            request = json.loads(self.buffer[_HEADER.size : _HEADER.size + size])
            del self.buffer[: _HEADER.size + size]
            self.handle(request)
        return True

    def handle(self, request: dict[str, Any]) -> None:
        stdio = [self.fds.popleft() for _ in range(STDIO)] if request["op"] == "spawn" else []
        opened: list[int] = []
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        try:
            if request["op"] == "spawn":
                base = f"/proc/{int(request['init'])}/ns/"
                for name in ("pid", "uts", "mnt"):
                    opened.append(os.open(base + name, os.O_RDONLY | os.O_CLOEXEC))
                setns(opened[0], CLONE_NEWPID)
            else:
                unshare(CLONE_NEWPID)
            try:
                pid = os.fork()
                if pid == 0:
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    if request["op"] == "spawn":
                        _command(request, stdio, opened[1:], report_w)
                    _init(request, report_w)
            finally:
                setns(self.own_pid_ns, CLONE_NEWPID)
        except OSError as exc:
            os.close(report_r)
            self.answer({"id": request["id"], "errno": exc.errno or 0, "error": str(exc)})
            return
        finally:
            os.close(report_w)
            for fd in stdio + opened:
                os.close(fd)
        self.starting[pid] = None
        self.selector.register(report_r, selectors.EVENT_READ, ("started", request["id"], pid))

    def started(self, fd: int, request_id: int, pid: int) -> None:
        """A child's report pipe: closed empty once it exec'd (or is ready), else why not."""
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        self.selector.unregister(fd)
        os.close(fd)
        status = self.starting.pop(pid)
        if chunks:
            if status is None:
                os.waitpid(pid, 0)  # it is ending: it failed
            code, _, why = b"".join(chunks).decode(errors="replace").partition(":")
            self.answer({"id": request_id, "errno": int(code or 0), "error": why})
            return
        self.answer({"id": request_id, "pid": pid})
        if status is None:
            self.running.add(pid)
        else:
            self.answer({"exit": pid, "status": status})

    def reap(self, fd: int) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(fd, 4096):
                pass
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            if pid in self.starting:
                self.starting[pid] = code
            elif pid in self.running:
                self.running.discard(pid)
                self.answer({"exit": pid, "status": code})


def main() -> None:
    parent = int(sys.argv[2])
    _call(_libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")
    if os.getppid() != parent:  # the cloud ended before the line above
        return
    # A fork shares this process's memory until either side writes to it: with the
    # collector off and every object frozen, a VM's PID 1 (a fork living on) writes
    # to few of its pages.
    gc.disable()
    gc.freeze()
    sock = socket.socket(fileno=int(sys.argv[1]))
    # Inherited (pass_fds), it must not pass on to the commands this server starts:
    # a VM's program holding it could read the cloud's requests or send its own.
    sock.set_inheritable(False)
    sock.setblocking(True)
    Server(sock).serve()


if __name__ == "__main__":
    main()
