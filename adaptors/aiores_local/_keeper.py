"""The keeper: the process that starts ``local://`` jobs and records how they end.

A job adaptor starts one keeper, at its first job, as ``python -I -S _keeper.py
JOBS_DIR`` in a session of its own. The keeper is the parent of every job it starts,
so it, and not the program that asked, learns each job's exit status; it outlives
that program and records the status of every job it started before it exits (once
its input is closed, its last job ended and the processes those jobs left behind
closed their output). It imports only the standard library: it starts in a few
milliseconds.

Each job has one record file, ``JOBS_DIR/<id>`` (the adaptor made ``JOBS_DIR`` 0700;
files here are 0600). Creating a file costs far more than appending to one, so the
record is created once, before the job's process is (a keeper killed at any moment
leaves no process without a record), and what happens later is appended to it, one
line each::

    token TOKEN               what it was submitted under          } written
    limit BYTES               its capture limit                    } before
    keeper PID START BOOT     the keeper's identity                } it starts
    capture [stdout] [stderr] the streams it captures              } once it
    leader PID START BOOT     its leader (also its process group   } started
                              id): a pid is never trusted without its start
                              time and boot
    canceled                  a cancel signalled it
    suspended / resumed       it was stopped (SIGSTOP) / continued; the last counts
    exit RC                   its exit status (negative: the signal that ended it),
                              once the keeper reaped the leader

The adaptor is told a job started only once its ``leader`` line is written: whoever
knows the id finds the leader. A record without a leader whose keeper is gone is a
start cut off between the fork and that line; its process, if any, is found by the
marker every job carries in its environment, ``AIORES_JOB=<id>`` (see
:func:`._records.unrecorded`).

A line counts only once its newline is there. Each line is one ``write`` to a file
opened ``O_APPEND``: the kernel moves to the end and writes under the file's lock,
so lines of the keeper and of programs that mark the record (a cancel from another
program) never interleave or overwrite each other, and a line of a few dozen bytes is
never split by a concurrent append; a reader that sees a line still being copied in
sees no newline yet and ignores it.

Captured output comes to the keeper through a pipe per stream. Up to
:data:`SPILL` bytes are kept in memory; past that, all of it goes to
``JOBS_DIR/<id>.stdout`` (``.stderr``) as it comes. At the end a stream that was kept
in memory is written out only if it is not empty, before the ``exit`` line: a
reader that sees ``exit`` finds the output complete, and a captured stream without
a file is empty. (Where the keeper is short of file descriptors it lets the job
write straight to that file instead, and removes it at the end if empty.) Output
written after the leader ended, by processes it left behind, is read and dropped, so
they never block or get SIGPIPE; the keeper stays until they close it. Standard
input, when given, is an anonymous in-memory file.

The adaptor talks to the keeper over its standard input and output. Requests are
JSON lines, answered in order, one JSON line each: ``start`` (answer ``{"pid": ...}``
or ``{"error": ...}``) and ``signal`` (answer ``{"sent": bool}``). An ended job is
announced between answers as ``{"x": id, "rc": ..., "out": [size, n], "err": [size,
n]}`` followed by the first ``n`` bytes of its stdout, then of its stderr (the
captured ones; at most the capture limit). Requests that arrive together are handled
together: a second thread creates their records while the main thread starts each job
once its record exists (the two overlap), then sends the answers in one write. Once its
output is closed the keeper announces nothing, but records on.
"""

from __future__ import annotations

import binascii
import contextlib
import errno
import functools
import json
import os
import queue
import resource
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

CANCELED = "canceled"
SUSPENDED = "suspended"
RESUMED = "resumed"
STREAMS = ("stdout", "stderr")
#: The environment variable naming the job each job process carries.
MARKER = "AIORES_JOB"
#: Bytes of one stream kept in memory before it goes to its file.
SPILL = 16 * 1024
#: File descriptors the keeper keeps free for records, requests and starts.
SPARE_FDS = 64

_OUTPUT_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
_SPILL_FLAGS = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
_RECORD_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC


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


def append(path: str, line: str) -> None:
    """Append one line to an existing record, in one write (see the module docstring).

    Raises:
        FileNotFoundError: there is no such record (it was reaped).
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def output_path(record: str, which: str) -> str:
    """The file that holds a record's captured ``which`` (``stdout`` or ``stderr``)."""
    return f"{record}.{which}"


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Capture:
    """One captured stream of a job: through a pipe (kept in memory, spilled to its file
    past :data:`SPILL`), or, short of descriptors, written by the job to its file."""

    __slots__ = ("data", "file", "keeper_fd", "path", "piped", "size")

    def __init__(self, path: str, piped: bool) -> None:
        self.path = path
        self.piped = piped
        self.data = bytearray()
        self.size = 0
        self.file: int | None = None  # the output file, once spilled
        self.keeper_fd: int | None = None  # the pipe's read end while it is open

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.file is None:
            if len(self.data) + len(chunk) <= SPILL:
                self.data += chunk
                return
            self.file = os.open(self.path, _SPILL_FLAGS, 0o600)
            _write_all(self.file, self.data)
            self.data = bytearray()
        _write_all(self.file, chunk)

    def finish(self, limit: int) -> tuple[int, bytes]:
        """Write what is kept in memory, if anything; its size and its first ``limit`` bytes."""
        if not self.piped:
            try:
                with open(self.path, "rb") as stream:
                    size = os.fstat(stream.fileno()).st_size
                    head = stream.read(limit)
            except OSError:
                return 0, b""
            if size == 0:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
            return size, head
        if self.file is not None:
            fd, self.file = self.file, None
            try:
                return self.size, os.pread(fd, limit, 0)
            finally:
                os.close(fd)
        data, self.data = self.data, bytearray()
        if data:
            fd = os.open(self.path, _OUTPUT_FLAGS, 0o600)
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
        return self.size, bytes(data[:limit])


class Job:
    """A job the keeper started and has not yet reaped."""

    __slots__ = ("captures", "created", "id", "limit", "pid", "popen", "record", "recorded")

    def __init__(self, job_id: str, record: str, limit: int) -> None:
        self.id = job_id
        self.record = record
        self.limit = limit
        self.created: OSError | None = None  # why its record could not be created
        self.pid = 0
        self.popen: subprocess.Popen[bytes] | None = None
        self.captures: dict[str, Capture] = {}
        self.recorded = False  # its record was written (by the writer)


class Writer:
    """The keeper's second thread: it writes records and talks to the adaptor.

    The main thread queues work here (each a callable returning what to tell the
    adaptor, if anything) and goes back to starting and reaping jobs at once: creating
    a record file costs about as much as starting a process, and the two overlap.
    Work is done in the order it was queued, so answers keep the order of their
    requests and a job's end follows its start, on disk and on the wire; what a run
    of queued work says goes to the adaptor in one write.
    """

    def __init__(self) -> None:
        self.work: queue.SimpleQueue[Callable[[], bytes] | None] = queue.SimpleQueue()
        self.listening = True
        self.thread = threading.Thread(target=self._run, name="writer", daemon=True)
        self.thread.start()

    def later(self, work: Callable[[], bytes]) -> None:
        self.work.put(work)

    def close(self) -> None:
        """Do what is queued, then stop."""
        self.work.put(None)
        self.thread.join()

    def _run(self) -> None:
        while True:
            out = bytearray()
            work = self.work.get()
            while work is not None:
                try:
                    out += work()
                except Exception:  # logged in keeper.log; the keeper must go on
                    import traceback  # seldom needed: the keeper starts faster without

                    traceback.print_exc()
                try:
                    work = self.work.get_nowait()
                except queue.Empty:
                    break
            self._send(out)
            if work is None:
                return

    def _send(self, data: bytearray) -> None:
        if not data or not self.listening:
            return
        try:
            _write_all(1, data)
        except OSError:  # the adaptor is gone: record on, announce nothing
            self.listening = False


def _line(message: dict[str, Any], payload: bytes = b"") -> bytes:
    return json.dumps(message).encode() + b"\n" + payload


class Keeper:
    """The keeper's state: its jobs, and the pipes it reads their output from."""

    def __init__(self, jobs_dir: str) -> None:
        self.jobs_dir = jobs_dir
        self.boot = boot_id()
        self.me = f"{os.getpid()} {start_time(os.getpid())} {self.boot}"
        self.children: dict[int, Job] = {}  # leader pid -> job, until reaped
        self.groups: dict[str, int] = {}  # job id -> process group, for signals
        self.pipes: dict[int, tuple[Job | None, Capture]] = {}  # read end -> owner
        self.poller = select.poll()
        self.writer = Writer()
        self.prepared: list[Job] = []  # jobs of this batch whose records are being created
        self.created: queue.SimpleQueue[Job] = queue.SimpleQueue()  # ... and are made
        self.environ = dict(os.environ)  # what a job inherits (with its marker)
        self.devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.max_pipes = (1 << 30) if soft == resource.RLIM_INFINITY else soft - SPARE_FDS

    def answer(self, message: dict[str, Any]) -> None:
        """Answer a request (after what was queued before it)."""
        data = _line(message)
        self.writer.later(lambda: data)

    def handle(self, request: dict[str, Any]) -> None:
        op = request.get("op")
        if op == "start":
            self.start(request)
        elif op == "signal":
            self.answer(self.signal(request))
        else:
            self.answer({"error": {"errno": 0, "strerror": f"unknown request {op!r}"}})

    # -- starting -------------------------------------------------------------------------
    def prepare(self, request: dict[str, Any]) -> None:
        """Have the writer create the record of a job to start (before it starts)."""
        job_id = request["id"]
        job = Job(job_id, os.path.join(self.jobs_dir, job_id), request["limit"])
        header = f"token {request['token']}\nlimit {job.limit}\nkeeper {self.me}\n".encode()
        self.prepared.append(job)
        self.writer.later(functools.partial(self._create, job, header))

    def _create(self, job: Job, header: bytes) -> bytes:
        """(Writer) Create a job's record, then let the main thread start it."""
        try:
            fd = os.open(job.record, _RECORD_FLAGS, 0o600)
            try:
                os.write(fd, header)
            finally:
                os.close(fd)
        except Exception as exc:  # never started without its record
            job.created = exc if isinstance(exc, OSError) else OSError(0, repr(exc))
            with contextlib.suppress(OSError):
                os.unlink(job.record)
        finally:  # whatever happened: the main thread waits for it
            self.created.put(job)
        return b""

    def start(self, request: dict[str, Any]) -> None:
        """Start a job once its record exists; the writer records its leader, then answers."""
        if not self.prepared or self.prepared[0].id != request["id"]:
            self.prepare(request)
        del self.prepared[0]
        job = self.created.get()  # made in order: this one
        if job.created is not None:
            self.answer({"error": _error(job.created)})
            return
        job_id = job.id
        opened: list[int] = []
        try:
            stdin = self.devnull
            if request["stdin"] is not None:
                stdin = _memory_file(binascii.a2b_base64(request["stdin"]))
                opened.append(stdin)
            fds = self._outputs(request, job, opened)
            env = request["env"]
            env = {**(self.environ if env is None else env), MARKER: job_id}
            job.popen = subprocess.Popen(
                request["argv"],
                stdin=stdin,
                stdout=fds[0],
                stderr=fds[1],
                cwd=request["cwd"],
                env=env,
                start_new_session=True,
            )
        except (_OutputError, OSError, ValueError, TypeError) as exc:
            for capture in job.captures.values():
                if capture.keeper_fd is not None:
                    os.close(capture.keeper_fd)
                if not capture.piped:
                    with contextlib.suppress(OSError):
                        os.unlink(capture.path)
            error = exc.args[0] if isinstance(exc, _OutputError) else _error(exc)
            self.writer.later(functools.partial(self._not_started, job, error))
            return
        finally:
            for fd in opened:
                os.close(fd)
        pid = job.pid = job.popen.pid
        # Read at once: the keeper alone reaps it, and has not yet.
        leader = f"{pid} {start_time(pid)} {self.boot}"
        self.children[pid] = job
        self.groups[job_id] = pid
        for capture in job.captures.values():
            if capture.keeper_fd is not None:
                self.pipes[capture.keeper_fd] = (job, capture)
                self.poller.register(capture.keeper_fd, select.POLLIN)
        self.writer.later(
            functools.partial(
                self._record, job, f"capture {' '.join(job.captures)}\nleader {leader}"
            )
        )

    def _not_started(self, job: Job, error: dict[str, Any]) -> bytes:
        """(Writer) Remove the record of a job that could not start; say why."""
        with contextlib.suppress(OSError):
            os.unlink(job.record)
        return _line({"error": error})

    def _record(self, job: Job, lines: str) -> bytes:
        """(Writer) Record the job's leader, then say it started.

        The record is complete before the answer leaves: once the adaptor knows the
        id, so can any program. A job whose leader cannot be recorded is killed (it
        ends unannounced: the adaptor forgets it on the error).
        """
        try:
            append(job.record, lines)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(job.record)
            with contextlib.suppress(OSError):
                os.killpg(job.pid, signal.SIGKILL)
            return _line({"error": _error(exc)})
        job.recorded = True
        return _line({"pid": job.pid})

    def _outputs(self, request: dict[str, Any], job: Job, opened: list[int]) -> list[int]:
        """The job's stdout and stderr: the description's files (one file once), else
        pipes to the keeper (their write ends go in ``opened``, closed after the start)."""
        by_path: dict[str, int] = {}
        fds = []
        for which in STREAMS:
            named = request[which]
            path = os.path.join(request["cwd"] or "", named) if named else None
            if path is None:
                fds.append(self._capture(job, which, opened))
                continue
            if path in by_path:
                fds.append(by_path[path])
                continue
            try:
                # Never blocks the keeper (a FIFO with no reader fails: ENXIO).
                fd = by_path[path] = os.open(path, _OUTPUT_FLAGS | os.O_NONBLOCK, 0o666)
            except OSError as exc:
                raise _OutputError({**_error(exc), "which": which, "path": named}) from exc
            opened.append(fd)
            os.set_blocking(fd, True)
            fds.append(fd)
        return fds

    def _capture(self, job: Job, which: str, opened: list[int]) -> int:
        """A pipe for one captured stream (its write end); short of descriptors, its file."""
        path = output_path(job.record, which)
        if len(self.pipes) + len(job.captures) < self.max_pipes:
            try:
                read_end, write_end = os.pipe2(os.O_CLOEXEC)
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE):
                    raise
            else:
                os.set_blocking(read_end, False)
                capture = job.captures[which] = Capture(path, piped=True)
                capture.keeper_fd = read_end
                opened.append(write_end)
                return write_end
        job.captures[which] = Capture(path, piped=False)
        fd = os.open(path, _OUTPUT_FLAGS, 0o600)
        opened.append(fd)
        return fd

    # -- output ---------------------------------------------------------------------------
    def pump(self, fd: int) -> None:
        """Read what a pipe holds now (until it would block); close it at its end."""
        owner, capture = self.pipes[fd]
        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self.poller.unregister(fd)
                del self.pipes[fd]
                os.close(fd)
                capture.keeper_fd = None
                return
            if owner is not None:  # else: left open after the leader ended: dropped
                with contextlib.suppress(OSError):
                    capture.feed(chunk)

    # -- signals --------------------------------------------------------------------------
    def signal(self, request: dict[str, Any]) -> dict[str, Any]:
        """Signal a job's group, marking its record first; a job that ended is
        signalled only with ``ended=True`` (its group may outlive its leader)."""
        job_id = request["id"]
        group = self.groups.get(job_id)
        alive = group is not None and group in self.children
        if group is None or not (alive or request.get("ended")):
            return {"sent": False}
        mark = request.get("mark")
        if mark in (SUSPENDED, RESUMED) or (mark == CANCELED and alive):
            # Its record exists: the adaptor signals a job only once told it started.
            with contextlib.suppress(OSError):
                append(os.path.join(self.jobs_dir, job_id), mark)
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
            job = self.children.pop(pid, None)
            if job is None:
                continue
            rc = os.waitstatus_to_exitcode(status)
            if job.popen is not None:
                job.popen.returncode = rc  # reaped here: the Popen must never wait for it
            for capture in job.captures.values():
                if capture.keeper_fd is not None:
                    self.pump(capture.keeper_fd)  # all the leader wrote is in the pipe now
                    if capture.keeper_fd is not None:  # still held open by what it left
                        self.pipes[capture.keeper_fd] = (None, capture)
            self.writer.later(functools.partial(self._ended, job, rc))

    def _ended(self, job: Job, rc: int) -> bytes:
        """(Writer) Record a reaped job's output and exit status; announce them."""
        if not job.recorded:
            return b""  # never announced as started: nobody waits for its end
        line: dict[str, Any] = {"x": job.id, "rc": rc}
        payload = b""
        for which, capture in job.captures.items():
            try:
                size, head = capture.finish(job.limit)
            except OSError:
                size, head = capture.size, b""
            line[which[3:]] = [size, len(head)]
            payload += head
        with contextlib.suppress(OSError):
            append(job.record, f"exit {rc}")
        return _line(line, payload)

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> None:
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, _ignore)
        # Caught, not ignored: an ignored signal stays ignored in the jobs started.
        for ignored in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(ignored, _ignore)
        poller = self.poller
        poller.register(wake_r, select.POLLIN)
        poller.register(0, select.POLLIN)
        reading = True
        pending = b""
        self.answer({"ready": self.me})
        while reading or self.children or self.pipes:
            requests = False
            for fd, _ in poller.poll():
                if fd == wake_r:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(wake_r, 4096):
                            pass
                elif fd == 0:
                    requests = True
                elif fd in self.pipes:
                    self.pump(fd)
            self.reap()
            if reading and requests:
                chunk = os.read(0, 1 << 16)
                if not chunk:
                    reading = False
                    poller.unregister(0)
                    continue
                *lines, pending = (pending + chunk).split(b"\n")
                batch = [json.loads(line) for line in lines]
                for request in batch:  # their records are made while the first start
                    if request.get("op") == "start":
                        self.prepare(request)
                for request in batch:
                    self.handle(request)
                self.reap()
        self.writer.close()


def _ignore(signum: int, frame: object) -> None:
    """A handler that does nothing (the signal only wakes the loop, or is dropped)."""


class _OutputError(Exception):
    """An output file of the description could not be opened."""


def _memory_file(data: bytes) -> int:
    """A file holding ``data``, read from its start, that exists on no disk."""
    try:
        fd = os.memfd_create("aiores-stdin", os.MFD_CLOEXEC)
    except (AttributeError, OSError):  # no memfd here: an unnamed temporary file
        import tempfile  # rarely needed: the keeper starts faster without it

        with tempfile.TemporaryFile() as unnamed:
            fd = os.dup(unnamed.fileno())
    try:
        _write_all(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _error(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, OSError):
        return {"errno": exc.errno, "strerror": exc.strerror, "filename": exc.filename}
    return {"errno": 0, "strerror": str(exc), "filename": None}


if __name__ == "__main__":
    os.set_blocking(0, True)
    Keeper(sys.argv[1]).run()
