"""The cloud's side of its fork server (:mod:`aiores_sim._forkserver`).

A cloud with isolated VMs starts one fork server when it starts, and asks it to make
each VM's machine (:meth:`Spawner.holder`) and to start each command in a VM
(:meth:`Spawner.spawn`). The cloud never forks itself for a VM: a fork of a large
Python process costs milliseconds and its page tables, a fork of the small server
a fraction of that.

A command started this way is the server's child, not the cloud's: the cloud holds
its pid (the leader of its own session and process group, which it signals as
before), the parent ends of its stdin/stdout/stderr pipes, and learns its exit
status from the server (:class:`Command`).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import functools
import itertools
import json
import logging
import os
import signal
import socket
import struct
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from aiores import NoSuccess

__all__ = ["Command", "Spawner"]

log = logging.getLogger("aiores.sim")

_SERVER = Path(__file__).with_name("_forkserver.py")
_HEADER = struct.Struct(">I")
_LINE_LIMIT = 1 << 20
#: Seconds a request cancelled half sent has to send its rest.
_REST_TIMEOUT = 10.0
#: The exit status reported for a command whose fate the cloud cannot learn (the
#: fork server ended first).
UNKNOWN = 255


class Command:
    """A command the fork server started: what the cloud holds of it.

    Shaped as the part of :class:`asyncio.subprocess.Process` the VM uses.
    """

    def __init__(
        self,
        pid: int,
        ended: asyncio.Future[int],
        stdin: asyncio.StreamWriter,
        stdout: asyncio.StreamReader,
        stderr: asyncio.StreamReader,
    ) -> None:
        self.pid = pid
        self.stdin: asyncio.StreamWriter | None = stdin
        self.stdout: asyncio.StreamReader | None = stdout
        self.stderr: asyncio.StreamReader | None = stderr
        self._ended = ended

    @property
    def returncode(self) -> int | None:
        """Its exit status (minus the signal that killed it), None while it runs."""
        return self._ended.result() if self._ended.done() else None

    async def wait(self) -> int:
        """Wait for it to end; its exit status. Cancelling the wait changes nothing."""
        # A shared future (the command's end, set by the reader): a cancelled waiter
        # stops only its own wait.
        return await asyncio.shield(self._ended)


class Spawner:
    """The fork server of one cloud; start it before use, close it when done."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._sock: socket.socket | None = None
        self._ids = itertools.count(1)
        self._answers: dict[int, asyncio.Future[tuple[int, asyncio.Future[int]]]] = {}
        self._exits: dict[int, asyncio.Future[int]] = {}
        self._send_lock = asyncio.Lock()
        self._ended = False
        #: Resolved when it closes: a send waiting for room in the socket ends then.
        self._closing: asyncio.Future[None] | None = None

    @property
    def pid(self) -> int | None:
        """The fork server's pid (None before it started)."""
        return self._process.pid if self._process is not None else None

    async def start(
        self, env: dict[str, str], owner: Callable[[Coroutine[Any, Any, None], str], object]
    ) -> None:
        """Start the fork server; ``owner(coro, what)`` runs its answers' reader.

        Raises:
            NoSuccess: it could not be started.
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-I",
                "-S",
                str(_SERVER),
                str(theirs.fileno()),
                str(os.getpid()),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                pass_fds=(theirs.fileno(),),
                env=env,
                cwd="/",
                start_new_session=True,
                limit=_LINE_LIMIT,
            )
        except OSError as exc:
            ours.close()
            raise NoSuccess(f"cannot start the sim cloud's fork server: {exc}") from exc
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours
        owner(self._read(), "fork server answers")

    async def close(self) -> None:
        """End the fork server (its socket closes) and wait for it, bounded."""
        self._drop_socket()
        if self._process is not None:
            try:
                async with asyncio.timeout(5):
                    await self._process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self._process.kill()
                await self._process.wait()
            except asyncio.CancelledError:
                # A cancelled close ends it at once (asyncio's child watcher reaps it).
                with contextlib.suppress(ProcessLookupError):
                    self._process.kill()
                raise

    def _drop_socket(self) -> None:
        """Close the socket (the server ends once it reads its end); sends waiting for
        room in it fail."""
        if self._closing is not None and not self._closing.done():
            self._closing.set_result(None)
        if self._sock is not None:
            # Its descriptor leaves the loop's selector before it closes (a number
            # reused afterwards is another file's).
            asyncio.get_running_loop().remove_writer(self._sock.fileno())
            self._sock.close()
            self._sock = None

    async def _read(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        stdout = self._process.stdout
        try:
            while line := await stdout.readline():
                message = json.loads(line)
                if "exit" in message:
                    ended = self._exits.pop(message["exit"], None)
                    if ended is not None and not ended.done():
                        ended.set_result(int(message["status"]))
                    continue
                answer = self._answers.pop(message["id"], None)
                if "pid" in message:
                    pid = int(message["pid"])
                    ended = asyncio.get_running_loop().create_future()
                    self._exits[pid] = ended
                    if answer is not None and not answer.done():
                        answer.set_result((pid, ended))
                elif answer is not None and not answer.done():
                    answer.set_exception(OSError(message.get("errno") or None, message["error"]))
        finally:
            self._ended = True
            for answer in self._answers.values():
                if not answer.done():
                    answer.set_exception(OSError(None, "the sim cloud's fork server ended"))
            for ended in self._exits.values():
                if not ended.done():
                    ended.set_result(UNKNOWN)
            self._answers.clear()
            self._exits.clear()

    async def _ask(
        self,
        request: dict[str, Any],
        make_fds: Callable[[], list[int]] = list,
        sent: Callable[[], None] = lambda: None,
    ) -> tuple[int, asyncio.Future[int]]:
        """Send ``request`` with the descriptors ``make_fds()`` makes in its turn to
        send (so that requests waiting to be sent hold none), call ``sent()`` once it
        is (or failed to be) sent; the pid of what it started, and its end.

        If the caller is cancelled once the request is sent, what it started is killed
        (its process group) as soon as its pid is known.
        """
        if self._sock is None or self._ended:
            raise OSError(None, "the sim cloud's fork server is not running")
        loop = asyncio.get_running_loop()
        request_id = next(self._ids)
        answer: asyncio.Future[tuple[int, asyncio.Future[int]]] = loop.create_future()
        self._answers[request_id] = answer
        body = json.dumps({**request, "id": request_id}).encode()
        data = _HEADER.pack(len(body)) + body
        cancelled: asyncio.CancelledError | None = None
        try:
            async with self._send_lock:
                count = await self._send_with(data, make_fds())
                if count < len(data):
                    cancelled = await self._send_rest(data[count:])
        except BaseException:
            self._answers.pop(request_id, None)
            raise
        finally:
            sent()
        if cancelled is not None:  # sent whole all the same: the server acts on it
            answer.add_done_callback(_kill_started)
            raise cancelled
        try:
            # A shared future (set by the reader of answers): a cancelled caller stops
            # only its wait, and the command started meanwhile is killed once known.
            return await asyncio.shield(answer)
        except asyncio.CancelledError:
            answer.add_done_callback(_kill_started)
            raise

    async def _send_rest(self, rest: bytes) -> asyncio.CancelledError | None:
        """Send the rest of a request whose first part is in the stream (the send lock
        held); the caller's cancellation that came meanwhile, if one did.

        A cancelled caller still sends the rest, bounded, before its cancellation goes
        on: the server would otherwise read the next request as this one's rest. If
        the rest is not sent in time, the stream is lost: the socket closes (the server
        ends) and the cancellation is raised.
        """
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        sending = loop.create_task(self._send_tail(rest))
        try:
            # Shielded: the rest must reach the server whatever becomes of the caller
            # (the stream is shared by every request); a cancellation waits, bounded.
            await asyncio.shield(sending)
        except asyncio.CancelledError as exc:
            deadline = loop.time() + _REST_TIMEOUT
            while not sending.done() and loop.time() < deadline:
                # Bounded; a further cancellation is the same one: it goes on below.
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait({sending}, timeout=deadline - loop.time())
            if sending.done() and not sending.cancelled() and sending.exception() is None:
                return exc
            sending.cancel()
            self._drop_socket()
            raise
        return None

    async def _send_tail(self, data: bytes) -> None:
        """Send all of ``data`` (the rest of a request)."""
        sent = 0
        while sent < len(data):
            sent += await self._send_with(data[sent:], [])

    async def _send_with(self, data: bytes, fds: list[int]) -> int:
        """Send the first bytes of ``data`` with ``fds`` attached; how many were sent.

        Raises:
            OSError: the socket failed, or closed (:meth:`close`) while this waited
                for room in it.
        """
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        loop = asyncio.get_running_loop()
        if self._closing is None:
            self._closing = loop.create_future()
        while True:
            sock = self._sock
            if sock is None:
                raise OSError(None, "the sim cloud's fork server is not running")
            try:
                return sock.sendmsg([data], ancillary)
            except BlockingIOError:
                fd = sock.fileno()
                writable = loop.create_future()
                loop.add_writer(fd, writable.set_result, None)
                try:
                    await asyncio.wait(
                        {writable, self._closing}, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    if self._sock is sock:  # else close() removed it with the socket
                        loop.remove_writer(fd)
                    writable.cancel()

    async def holder(
        self, disk: Path, script: str, args: list[str], env: dict[str, str]
    ) -> tuple[int, asyncio.Future[int]]:
        """Make a VM's machine with ``sh -c script sim-holder *args`` in its ``disk``;
        the host pid of its PID 1, and a future of its exit status.

        Raises:
            OSError: it could not be made.
        """
        request = {"op": "holder", "disk": str(disk), "script": script, "args": args, "env": env}
        return await self._ask(request)

    async def spawn(
        self,
        init: int,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        account: tuple[int, int] | None = None,
    ) -> Command:
        """Start ``argv`` in the VM whose PID 1 is ``init``, as ``account`` (uid, gid).

        Raises:
            OSError: it could not be started (the VM has ended, the exec failed).
        """
        uid, gid = account if account is not None else (None, None)
        request = {
            "op": "spawn",
            "init": init,
            "argv": argv,
            "env": env,
            "cwd": cwd,
            "uid": uid,
            "gid": gid,
        }
        theirs: list[int] = []
        ours: list[int] = []

        def make() -> list[int]:
            # Made in the request's turn to be sent, the child's ends closed once sent
            # (the message holds them): a command waiting to start holds nothing here.
            made: list[tuple[int, int]] = []
            try:
                for _ in range(3):
                    made.append(os.pipe2(os.O_CLOEXEC))
            except BaseException:
                for pair in made:
                    for fd in pair:
                        os.close(fd)
                raise
            (in_r, in_w), (out_r, out_w), (err_r, err_w) = made
            theirs.extend((in_r, out_w, err_w))
            ours.extend((in_w, out_r, err_r))
            return list(theirs)

        def close_theirs() -> None:
            while theirs:
                os.close(theirs.pop())

        try:
            try:
                pid, ended = await self._ask(request, make, close_theirs)
            finally:
                close_theirs()
        except BaseException:
            while ours:
                os.close(ours.pop())
            raise
        in_w, out_r, err_r = ours
        try:
            return await _connect(pid, ended, in_w, out_r, err_r)
        except BaseException:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            raise


def _kill_started(answer: asyncio.Future[tuple[int, asyncio.Future[int]]]) -> None:
    if not answer.cancelled() and answer.exception() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(answer.result()[0], signal.SIGKILL)


def _protocol(reader: asyncio.StreamReader) -> asyncio.StreamReaderProtocol:
    return asyncio.StreamReaderProtocol(reader)


async def _connect(
    pid: int, ended: asyncio.Future[int], in_w: int, out_r: int, err_r: int
) -> Command:
    """Wrap the cloud's ends of a command's pipes in streams (it owns them from here)."""
    loop = asyncio.get_running_loop()
    # Wrapping a descriptor opens nothing; the transports close them.
    files = [
        os.fdopen(fd, mode, buffering=0)
        for fd, mode in ((out_r, "rb"), (err_r, "rb"), (in_w, "wb"))
    ]
    transports: list[asyncio.BaseTransport] = []
    try:
        readers = []
        for pipe in files[:2]:
            reader = asyncio.StreamReader(limit=2**16, loop=loop)
            read, _ = await loop.connect_read_pipe(functools.partial(_protocol, reader), pipe)
            transports.append(read)
            readers.append(reader)
        write, protocol = await loop.connect_write_pipe(
            functools.partial(_protocol, asyncio.StreamReader(loop=loop)), files[2]
        )
        transports.append(write)
    except BaseException:
        for transport in transports:
            transport.close()
        for pipe in files:
            pipe.close()
        raise
    writer = asyncio.StreamWriter(write, protocol, None, loop)
    return Command(pid, ended, writer, readers[0], readers[1])
