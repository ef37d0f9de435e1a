"""Child processes watched from the event loop, without polling and without a thread each.

A :class:`Child` is a process started with :class:`subprocess.Popen` in its own session
(so its process group can be signalled as a whole). Its pipes are read by loop reader
callbacks into bounded buffers; its exit is watched through a pidfd registered with the
loop (Linux 5.3+), so that one job costs one process, up to three file descriptors and
no thread. Where pidfds are missing a daemon thread waits for the process instead.

Nothing here awaits: owners are told through one ``on_done`` callback, which runs on the
loop once the process has exited and its captured pipes are closed.

Why not ``asyncio.create_subprocess_exec``: its transport kills the process when it is
closed (and warns if it is not), while a job must outlive the session that started
it; and on Python 3.11 its default child watcher starts one thread per process. The
process is started the same way (``subprocess.Popen``, which asyncio also uses).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence

from aiores import AioresError, DoesNotExist, NoSuccess, PermissionDenied
from aiores.adaptor import truncation_marker

__all__ = [
    "Capture",
    "Child",
    "check_startable",
    "merged_environment",
    "signal_name",
    "spawn",
    "spawn_error",
]

_READ_SIZE = 65536
#: Seconds to keep reading captured pipes after the process exited, for output still
#: held by its children (``cmd &``); then the pipes are closed and the job ends.
DRAIN_AFTER_EXIT = 1.0


def signal_name(signum: int) -> str:
    """``"SIGTERM"`` for 15; ``"signal 99"`` for numbers without a name."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def merged_environment(extra: Mapping[str, str] | None) -> dict[str, str] | None:
    """This process's environment plus ``extra`` (None, meaning "inherit", if none)."""
    if not extra:
        return None
    env = dict(os.environ)
    env.update(extra)
    return env


class Capture:
    """One captured pipe: keeps at most ``limit`` bytes (None: all), counts the rest.

    ``on_chunk``, if given, is called on the loop with each chunk read (all of it,
    whatever ``limit`` keeps); it must not raise.
    """

    __slots__ = ("_child", "_fd", "_limit", "_on_chunk", "data", "total")

    def __init__(
        self,
        child: Child,
        fd: int,
        limit: int | None,
        on_chunk: Callable[[bytes], None] | None = None,
    ) -> None:
        self._child = child
        self._fd = fd
        self._limit = limit
        self._on_chunk = on_chunk
        self.data = bytearray()
        self.total = 0
        os.set_blocking(fd, False)
        child.loop.add_reader(fd, self._on_readable)

    def _on_readable(self) -> None:
        try:
            chunk = os.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""  # EIO and the like: nothing more will come
        if chunk:
            self.total += len(chunk)
            if self._limit is None:
                self.data += chunk
            elif len(self.data) < self._limit:
                self.data += chunk[: self._limit - len(self.data)]
            if self._on_chunk is not None:
                self._on_chunk(chunk)
            return
        self.close()
        self._child._pipe_closed()

    @property
    def open(self) -> bool:
        return self._fd >= 0

    def close(self) -> None:
        if self._fd >= 0:
            self._child.loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

    def take(self) -> bytes:
        """The kept bytes, ending with a marker if some were dropped; frees the buffer."""
        data, self.data = bytes(self.data), bytearray()
        if self.total <= len(data):
            return data
        return data + truncation_marker(len(data), self.total - len(data))


class Child:
    """A started process, its captured pipes and its exit, watched from the loop.

    Attributes:
        pid: The process id, also its process group id.
        returncode: None while it runs; its exit status, or ``-signum`` if a signal
            ended it.
        done: True once ``on_done`` has been called (or the child was detached).
    """

    __slots__ = (
        "_drain",
        "_on_done",
        "_open",
        "_pidfd",
        "_popen",
        "_stdin",
        "_stdin_fd",
        "_writing",
        "detached",
        "done",
        "err",
        "loop",
        "out",
        "pid",
        "returncode",
    )

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        *,
        out_fd: int | None,
        err_fd: int | None,
        limit: int | None,
        stdin_fd: int | None,
        stdin: bytes | None,
        on_done: Callable[[Child], None],
        on_output: Callable[[str, bytes], None] | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self._popen = popen
        self.pid = popen.pid
        self.returncode: int | None = None
        self.done = False
        self.detached = False
        self._on_done = on_done
        self._drain: asyncio.TimerHandle | None = None
        self.out = (
            None if out_fd is None else Capture(self, out_fd, limit, _tag(on_output, "stdout"))
        )
        self.err = (
            None if err_fd is None else Capture(self, err_fd, limit, _tag(on_output, "stderr"))
        )
        self._open = (out_fd is not None) + (err_fd is not None)
        self._stdin_fd = -1 if stdin_fd is None else stdin_fd
        self._stdin = memoryview(stdin or b"")
        self._writing = False
        if stdin_fd is not None:
            os.set_blocking(stdin_fd, False)
            self._write_stdin()
        self._pidfd = -1
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # no pidfds here (or no fd left): a thread waits
            threading.Thread(
                target=self._wait_in_thread, name=f"aiores-local-wait-{self.pid}", daemon=True
            ).start()
        else:
            self.loop.add_reader(self._pidfd, self._on_pidfd)

    # -- signals -------------------------------------------------------------------
    def signal(self, signum: int) -> None:
        """Send ``signum`` to the whole process group; a group already gone is fine."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signum)

    def group_alive(self) -> bool:
        """True while any process of the group exists."""
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    # -- stdin ---------------------------------------------------------------------
    def _write_stdin(self) -> None:
        try:
            written = os.write(self._stdin_fd, self._stdin) if self._stdin else 0
        except BlockingIOError:
            written = 0
        except OSError:  # EPIPE: the process does not read its input; nothing to do
            self._close_stdin()
            return
        self._stdin = self._stdin[written:]
        if not self._stdin:
            self._close_stdin()
        elif not self._writing:
            self._writing = True
            self.loop.add_writer(self._stdin_fd, self._write_stdin)

    def _close_stdin(self) -> None:
        if self._stdin_fd >= 0:
            if self._writing:
                self.loop.remove_writer(self._stdin_fd)
                self._writing = False
            os.close(self._stdin_fd)
            self._stdin_fd = -1
        self._stdin = memoryview(b"")

    # -- exit ----------------------------------------------------------------------
    def _on_pidfd(self) -> None:
        self._close_pidfd()
        self._exited(self._popen.poll())

    def _close_pidfd(self) -> None:
        if self._pidfd >= 0:
            self.loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1

    def _wait_in_thread(self) -> None:
        returncode = self._popen.wait()
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
            self.loop.call_soon_threadsafe(self._exited, returncode)

    def _exited(self, returncode: int | None) -> None:
        if self.detached or self.returncode is not None:
            return
        # poll() cannot miss after a pidfd woke us; 0 covers a child reaped elsewhere.
        self.returncode = 0 if returncode is None else returncode
        if self._open == 0:
            self._finish()
        else:
            self._drain = self.loop.call_later(DRAIN_AFTER_EXIT, self._stop_draining)

    def _pipe_closed(self) -> None:
        self._open -= 1
        if self._open == 0 and self.returncode is not None:
            self._finish()

    def _stop_draining(self) -> None:
        self._drain = None
        for capture in (self.out, self.err):
            if capture is not None:
                capture.close()
        self._open = 0
        self._finish()

    def _finish(self) -> None:
        if self._drain is not None:
            self._drain.cancel()
            self._drain = None
        self._close_stdin()
        self.done = True
        self._on_done(self)

    def detach(self) -> None:
        """Stop watching; the process runs on and a daemon thread reaps it when it exits.

        Captured pipes are closed: a process that writes to them afterwards gets EPIPE
        (SIGPIPE), as a command piped into ``head`` does.
        """
        if self.done or self.detached:
            return
        self.detached = True
        self.done = True
        if self._drain is not None:
            self._drain.cancel()
            self._drain = None
        self._close_stdin()
        for capture in (self.out, self.err):
            if capture is not None:
                capture.close()
        if self._pidfd >= 0:
            self._close_pidfd()
            if self.returncode is None:
                threading.Thread(
                    target=self._popen.wait, name=f"aiores-local-reap-{self.pid}", daemon=True
                ).start()


def spawn(
    argv: Sequence[str],
    *,
    cwd: str | None,
    env: Mapping[str, str] | None,
    stdin: bytes | None,
    stdout: int | None,
    stderr: int | None,
    limit: int | None,
    devnull: int,
    on_done: Callable[[Child], None],
    on_output: Callable[[str, bytes], None] | None = None,
) -> Child:
    """Start ``argv`` in a new session and watch it.

    Args:
        argv: The program and its arguments (never through a shell).
        cwd: Working directory, or None for this process's.
        env: The whole environment, or None to inherit this process's.
        stdin: Bytes written to its standard input, then closed; None gives it ``devnull``.
        stdout: A file descriptor to write standard output to, or None to capture it.
        stderr: Likewise for standard error.
        limit: Bytes kept per captured stream (None: all).
        devnull: An open file descriptor on ``/dev/null``.
        on_done: Called on the loop once the process exited and its pipes closed.
        on_output: Called on the loop with ``"stdout"`` or ``"stderr"`` and each chunk
            read from a captured pipe, as it arrives (before ``on_done``); it must
            not raise.

    Raises:
        OSError: The process could not start (see :func:`spawn_error`).
    """
    ours: list[int] = []  # our ends, closed only if the start fails
    theirs: list[int] = []  # the child's ends, closed in any case once it started
    try:
        out_r = err_r = in_w = None
        if stdout is None:
            out_r, stdout = os.pipe()
            ours.append(out_r)
            theirs.append(stdout)
        if stderr is None:
            err_r, stderr = os.pipe()
            ours.append(err_r)
            theirs.append(stderr)
        child_in = devnull
        if stdin is not None:
            child_in, in_w = os.pipe()
            ours.append(in_w)
            theirs.append(child_in)
        popen = subprocess.Popen(
            argv,
            stdin=child_in,
            stdout=stdout,
            stderr=stderr,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
    except BaseException:
        for fd in ours:
            os.close(fd)
        raise
    finally:
        for fd in theirs:
            os.close(fd)
    return Child(
        popen,
        out_fd=out_r,
        err_fd=err_r,
        limit=limit,
        stdin_fd=in_w,
        stdin=stdin,
        on_done=on_done,
        on_output=on_output,
    )


def _tag(
    on_output: Callable[[str, bytes], None] | None, stream: str
) -> Callable[[bytes], None] | None:
    """``on_output`` for one stream's chunks (None stays None)."""
    if on_output is None:
        return None
    return lambda chunk: on_output(stream, chunk)


def _not_found(executable: str) -> str:
    if "/" in executable:
        return f"executable {executable!r} does not exist"
    return f"executable {executable!r} was not found in PATH; give its full path"


def _not_executable(executable: str) -> str:
    return f"executable {executable!r} is not an executable file (check its mode: chmod +x)"


def spawn_error(exc: OSError, executable: str, cwd: str | None) -> AioresError:
    """The aiores error for a process that could not start (the message says what to fix)."""
    if cwd is not None and exc.filename == cwd:
        if isinstance(exc, FileNotFoundError):
            return DoesNotExist(f"working directory {cwd!r} does not exist")
        if isinstance(exc, NotADirectoryError):
            return DoesNotExist(f"working directory {cwd!r} is not a directory")
        if isinstance(exc, PermissionError):
            return PermissionDenied(f"working directory {cwd!r} cannot be entered: {exc.strerror}")
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        return DoesNotExist(_not_found(executable))
    if isinstance(exc, PermissionError):
        return PermissionDenied(_not_executable(executable))
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        return NoSuccess(
            f"cannot start {executable!r}: too many open files ({exc.strerror}); raise the "
            "limit (ulimit -n) or bound concurrency with local://?max_running=N"
        )
    return NoSuccess(f"cannot start {executable!r}: {exc}")


def check_startable(
    executable: str, cwd: str | None, env: Mapping[str, str] | None
) -> AioresError | None:
    """Blocking: what would keep ``executable`` from starting in ``cwd`` now, or None.

    Used for jobs that start later (held or queued), so that ``submit`` still reports
    a wrong path at once. Run it in a thread.
    """
    if cwd is not None:
        if not os.path.exists(cwd):
            return DoesNotExist(f"working directory {cwd!r} does not exist")
        if not os.path.isdir(cwd):
            return DoesNotExist(f"working directory {cwd!r} is not a directory")
        if not os.access(cwd, os.X_OK):
            return PermissionDenied(f"working directory {cwd!r} cannot be entered")
    if "/" in executable:
        path = os.path.join(cwd or "", executable)
        if not os.path.exists(path):
            return DoesNotExist(_not_found(executable))
        if os.path.isdir(path) or not os.access(path, os.X_OK):
            return PermissionDenied(_not_executable(executable))
        return None
    search = (env or os.environ).get("PATH", os.defpath)
    if shutil.which(executable, path=search) is None:
        return DoesNotExist(_not_found(executable))
    return None
