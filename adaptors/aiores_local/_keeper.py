"""The keeper: the process that starts ``local://`` jobs and records how they end.

A job adaptor starts one keeper, at its first job, as ``python -I -S _keeper.py
JOBS_DIR`` in a session of its own. The keeper is the parent of every job it starts,
so it, and not the program that asked, learns each job's exit status; it outlives
that program and records the status of every job it started before it exits (once
its input is closed and its last job ended). It imports only the standard library:
it starts in a few milliseconds.

Each job has a directory ``JOBS_DIR/<id>/`` (the adaptor made ``JOBS_DIR`` 0700;
files here are 0600, written whole and renamed into place)::

    job        the token it was submitted under, the capture limit, and the
               keeper's ``PID START BOOT`` (written before the job starts)
    stdin      its standard input, when it was given some
    stdout, stderr   its output, when the description names no file for it
    pid        ``PID START BOOT`` of the job's leader (also its process group
               id): a pid is never trusted without its start time and boot
    exit       its exit status (negative: the signal that ended it), written
               by the keeper when it reaped the leader
    canceled   present once a cancel signalled it
    suspended  present while it is stopped (SIGSTOP)

The adaptor talks to the keeper over its standard input and output. Requests are
JSON lines, answered in order, one JSON line each: ``start`` (answer ``{"pid": ...}``
or ``{"error": ...}``) and ``signal`` (answer ``{"sent": bool}``). An ended job is
announced between answers as ``{"x": id, "rc": ..., "out": [size, n], "err": [size,
n]}`` followed by the first ``n`` bytes of its stdout, then of its stderr (the
captured ones; at most the capture limit). Once its output is closed the keeper
announces nothing, but records on.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
from typing import Any

JOB = "job"
PID = "pid"
EXIT = "exit"
CANCELED = "canceled"
SUSPENDED = "suspended"
STDIN = "stdin"
STREAMS = ("stdout", "stderr")

_OUTPUT_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


def start_time(pid: int) -> str | None:
    """The start time of ``pid`` (clock ticks after boot), or None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
    except OSError:
        return None
    if not fields or fields[0] in (b"Z", b"X"):
        return None
    return fields[19].decode()


def boot_id() -> str:
    """The id of this boot (a pid and a start time mean nothing across boots)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            return boot.read().strip()
    except OSError:
        return "-"


def record(directory: str, name: str, data: bytes) -> None:
    """Write ``directory/name`` whole (0600): readers see the old file or the new one."""
    tmp = os.path.join(directory, f".{name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.rename(tmp, os.path.join(directory, name))


class Keeper:
    """The keeper's state: its jobs, and whether the adaptor still listens."""

    def __init__(self, jobs_dir: str) -> None:
        self.jobs_dir = jobs_dir
        self.boot = boot_id()
        self.me = f"{os.getpid()} {start_time(os.getpid())} {self.boot}"
        self.children: dict[int, tuple[str, subprocess.Popen[bytes]]] = {}
        self.jobs: dict[str, tuple[int, int]] = {}  # id -> (process group, capture limit)
        self.listening = True
        self.devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)

    # -- talking --------------------------------------------------------------------------
    def send(self, line: dict[str, Any], payload: bytes = b"") -> None:
        if not self.listening:
            return
        data = json.dumps(line).encode() + b"\n" + payload
        try:
            while data:
                data = data[os.write(1, data) :]
        except OSError:  # the adaptor is gone: record on, announce nothing
            self.listening = False

    def handle(self, request: dict[str, Any]) -> None:
        op = request.get("op")
        if op == "start":
            self.send(self.start(request))
        elif op == "signal":
            self.send(self.signal(request))
        else:
            self.send({"error": {"errno": 0, "strerror": f"unknown request {op!r}"}})

    # -- starting -------------------------------------------------------------------------
    def start(self, request: dict[str, Any]) -> dict[str, Any]:
        job_id = request["id"]
        directory = os.path.join(self.jobs_dir, job_id)
        opened: list[int] = []
        try:
            os.mkdir(directory, 0o700)
            limit = request["limit"]
            record(directory, JOB, f"{request['token']}\n{limit}\n{self.me}\n".encode())
            stdin = self.devnull
            if request["stdin"] is not None:
                record(directory, STDIN, base64.b64decode(request["stdin"]))
                stdin = os.open(os.path.join(directory, STDIN), os.O_RDONLY | os.O_CLOEXEC)
                opened.append(stdin)
            fds = self._outputs(request, directory, opened)
            popen = subprocess.Popen(
                request["argv"],
                stdin=stdin,
                stdout=fds[0],
                stderr=fds[1],
                cwd=request["cwd"],
                env=request["env"],
                start_new_session=True,
            )
        except _OutputError as exc:
            shutil.rmtree(directory, ignore_errors=True)
            return {"error": exc.args[0]}
        except (OSError, ValueError) as exc:
            shutil.rmtree(directory, ignore_errors=True)
            return {"error": _error(exc)}
        finally:
            for fd in opened:
                os.close(fd)
        pid = popen.pid
        self.children[pid] = (job_id, popen)
        self.jobs[job_id] = (pid, limit)
        # Read at once: the keeper alone reaps it, and has not yet.
        record(directory, PID, f"{pid} {start_time(pid)} {self.boot}\n".encode())
        return {"pid": pid}

    def _outputs(self, request: dict[str, Any], directory: str, opened: list[int]) -> list[int]:
        """Open stdout and stderr: the description's files (one file once), else ours."""
        by_path: dict[str, int] = {}
        fds = []
        for which in STREAMS:
            named = request[which]
            path = os.path.join(request["cwd"] or "", named) if named else None
            if path is None:
                fd = os.open(os.path.join(directory, which), _OUTPUT_FLAGS, 0o600)
                opened.append(fd)
            elif path in by_path:
                fd = by_path[path]
            else:
                try:
                    # Never blocks the keeper (a FIFO with no reader fails: ENXIO).
                    fd = by_path[path] = os.open(path, _OUTPUT_FLAGS | os.O_NONBLOCK, 0o666)
                except OSError as exc:
                    raise _OutputError({**_error(exc), "which": which, "path": named}) from exc
                opened.append(fd)
                os.set_blocking(fd, True)
            fds.append(fd)
        return fds

    # -- signals --------------------------------------------------------------------------
    def signal(self, request: dict[str, Any]) -> dict[str, Any]:
        """Signal a job's group, marking it first; a job that ended is signalled only
        with ``ended=True`` (its group may outlive its leader)."""
        job_id = request["id"]
        group = self.jobs.get(job_id, (None, 0))[0]
        alive = group is not None and group in self.children
        if group is None or not (alive or request.get("ended")):
            return {"sent": False}
        directory = os.path.join(self.jobs_dir, job_id)
        mark = request.get("mark")
        with contextlib.suppress(OSError):
            if mark == CANCELED and alive:
                record(directory, CANCELED, b"")
            elif mark == SUSPENDED:
                record(directory, SUSPENDED, b"")
            elif mark == "resumed":
                os.unlink(os.path.join(directory, SUSPENDED))
        sent = True
        for signum in request["signals"]:
            try:
                os.killpg(group, signum)
            except ProcessLookupError:
                sent = False
        return {"sent": sent}

    # -- ends -----------------------------------------------------------------------------
    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            entry = self.children.pop(pid, None)
            if entry is None:
                continue
            job_id, popen = entry
            rc = os.waitstatus_to_exitcode(status)
            popen.returncode = rc  # reaped here: the Popen must never wait for it
            directory = os.path.join(self.jobs_dir, job_id)
            with contextlib.suppress(OSError):
                record(directory, EXIT, f"{rc}\n".encode())
            if self.listening:
                self._announce(job_id, directory, rc)

    def _announce(self, job_id: str, directory: str, rc: int) -> None:
        line: dict[str, Any] = {"x": job_id, "rc": rc}
        payload = b""
        limit = self.jobs[job_id][1]
        for which in STREAMS:
            try:
                with open(os.path.join(directory, which), "rb") as stream:
                    size = os.fstat(stream.fileno()).st_size
                    data = stream.read(limit)
            except OSError:
                continue
            line[which[3:]] = [size, len(data)]
            payload += data
        self.send(line, payload)

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> None:
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        for ignored in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(ignored, signal.SIG_IGN)
        poller = select.poll()
        poller.register(wake_r, select.POLLIN)
        poller.register(0, select.POLLIN)
        reading = True
        pending = b""
        self.send({"ready": self.me})
        while reading or self.children:
            ready = dict(poller.poll())
            with contextlib.suppress(BlockingIOError):
                while os.read(wake_r, 4096):
                    pass
            self.reap()
            if not reading or 0 not in ready:
                continue
            chunk = os.read(0, 1 << 16)
            if not chunk:
                reading = False
                poller.unregister(0)
                continue
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                self.handle(json.loads(line))
                self.reap()


class _OutputError(Exception):
    """An output file of the description could not be opened."""


def _error(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, OSError):
        return {"errno": exc.errno, "strerror": exc.strerror, "filename": exc.filename}
    return {"errno": 0, "strerror": str(exc), "filename": None}


if __name__ == "__main__":
    os.set_blocking(0, True)
    Keeper(sys.argv[1]).run()
