"""Finding, starting, talking to and stopping the cloud process of a directory.

The cloud is started on demand as ``python -m aiores_sim.server --daemon``: that
launcher forks the cloud into a session of its own (so it outlives the client and
its terminal) and exits once the cloud listens, so starting it is one awaited
subprocess, never a blocking call on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from aiores import ConnectionLost, NoSuccess, PermissionDenied, Timeout
from aiores.adaptor import concurrency

from ._cloud import is_locked, wipe_stale
from ._protocol import LINE_LIMIT, decode_error, encode, socket_path

__all__ = ["CloudClient", "cloud_pid", "start_cloud", "stop_cloud"]

log = logging.getLogger("aiores.sim")

#: Seconds starting the cloud process may take.
START_TIMEOUT = 30.0
#: Seconds a connection attempt keeps retrying while another process starts the cloud.
CONNECT_PATIENCE = 10.0
#: A cloud started on demand stops after this many seconds with no VM and no client.
IDLE_EXIT = 600.0

Spawner = Callable[[Callable[[], Awaitable[None]], str], None]


async def _open(directory: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to the cloud's control socket.

    Raises:
        FileNotFoundError, ConnectionRefusedError: no cloud listens (start one).
        PermissionDenied, NoSuccess: the socket cannot be reached at all (a directory
            that is not one, or not ours).
    """
    path = await asyncio.to_thread(socket_path, directory)
    try:
        return await asyncio.open_unix_connection(str(path), limit=LINE_LIMIT)
    except (FileNotFoundError, ConnectionRefusedError):
        raise
    except PermissionError as exc:
        raise PermissionDenied(f"cannot reach the sim cloud at {path}: {exc.strerror}") from exc
    except OSError as exc:
        raise NoSuccess(f"cannot reach the sim cloud at {path}: {exc.strerror or exc}") from exc


async def start_cloud(
    directory: Path,
    *,
    idle_exit: float | None = None,
    cleanups: concurrency.Cleanups | None = None,
    region_capacity: int | None = None,
    region_of: int | None = None,
) -> None:
    """Start the cloud process of ``directory`` (returns once it listens).

    Another process starting it at the same time is not an error: one of them wins.

    ``region_capacity`` is how many live VMs one process serves before the cloud
    starts another (see :mod:`aiores_sim._regions`; default: what its descriptor
    limit allows). ``region_of`` starts a region process of the cloud whose pid it
    is instead (serving its share of VMs, stopping when that process ends).

    Raises:
        NoSuccess: it did not start (the message carries what it said).
        Timeout: it took longer than :data:`START_TIMEOUT`.

    Cancelling it leaves the launcher to finish on its own (the cloud may still come
    up): waiting for it to end is a cleanup in ``cleanups``, which their owner (a
    :class:`CloudClient`) waits for when it closes. Without ``cleanups`` the
    cancellation waits for the launcher (bounded by :data:`START_TIMEOUT`; a second
    cancellation stops the wait).
    """
    argv = [sys.executable, "-m", "aiores_sim.server", "--daemon", "--dir", str(directory)]
    if idle_exit is not None:
        argv += ["--idle-exit", str(idle_exit)]
    if region_capacity is not None:
        argv += ["--region-capacity", str(region_capacity)]
    if region_of is not None:
        argv += ["--region-of", str(region_of)]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with concurrency.fail_after(
            START_TIMEOUT, f"the sim cloud in {directory} did not start in {START_TIMEOUT} s"
        ):
            out, err = await proc.communicate()
    except Timeout:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    except asyncio.CancelledError:
        reap = functools.partial(_reap, proc)
        what = f"reaping the launcher of the sim cloud in {directory}"
        if cleanups is not None:
            cleanups.start(reap, what=what)
        else:
            await concurrency.Cleanups(START_TIMEOUT, log).run(reap, what=what)
        raise
    if proc.returncode != 0:
        said = (err or out).decode(errors="replace").strip()
        raise NoSuccess(f"the sim cloud in {directory} did not start: {said}")


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """Wait for a launcher to end (it does once the cloud listens or has failed)."""
    await proc.wait()


async def cloud_pid(directory: Path) -> int | None:
    """The pid in the cloud's pid file, if that process is alive and is a sim cloud."""

    def read() -> int | None:
        try:
            pid = int((directory / "cloud.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if b"aiores_sim.server" in cmdline else None

    return await asyncio.to_thread(read)


def _running(pid: int) -> bool:
    """True while ``pid`` runs (a zombie its new parent has not reaped yet has ended)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return b") Z " not in handle.read()
    except OSError:
        return False


async def _gone(pid: int) -> None:
    # A process we did not start ends: there is no event to await for it.
    while await asyncio.to_thread(_running, pid):  # noqa: ASYNC110
        await asyncio.sleep(0.02)


async def stop_cloud(directory: Path, *, timeout: float = 60.0) -> bool:
    """Stop the cloud of ``directory`` (every VM ends); False if there was nothing to stop.

    Asks it over the control socket; if it does not answer, sends SIGTERM to the pid
    in its pid file (after checking that the process is a sim cloud). Returns once
    the process has exited. If no cloud runs but one crashed there, what it left (VM
    processes and disks, its pid file and socket) is removed, and the result is True.

    Raises:
        Timeout: it did not exit within ``timeout`` seconds.
    """
    late = f"the sim cloud in {directory} did not stop within {timeout} s"
    async with concurrency.fail_after(timeout, late):
        while True:
            pid = await _shutdown(directory)
            if pid is not None:
                break
            # No answer. If no cloud holds the directory, remove what a crashed one left.
            wiped = await asyncio.to_thread(wipe_stale, directory)
            if wiped is not None:
                return wiped
            pid = await cloud_pid(directory)
            if pid is not None:  # it holds the lock but does not answer
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                break
            await asyncio.sleep(0.05)  # it is starting (not announced yet): ask again
    async with concurrency.fail_after(timeout, late):
        await _gone(pid)
    return True


async def _shutdown(directory: Path) -> int | None:
    """Ask the cloud to stop; its pid if it answered."""
    client = CloudClient(directory)
    try:
        await client.connect(start=False)
        answer = await client.call("shutdown")
    except (NoSuccess, ConnectionLost, OSError):
        return None
    finally:
        await client.close()
    return int(answer["pid"])


class CloudClient:
    """One control connection to the cloud of ``directory``.

    Args:
        directory: The cloud's directory.
        on_event: Called with each VM record the cloud pushes (after ``subscribe``).
        spawn: Runs the connection's reader in the caller's task group (default: a
            task this object owns).
        subscribe: Ask for VM events on every connection (``on_event`` gets them).
        on_lost: Called when a connection that was up breaks or the cloud closes it
            (not when :meth:`close` closes it): events may have been missed since.

    A start of the cloud that was cancelled leaves its launcher running; the client
    reaps it and :meth:`close` waits for that (bounded).
    """

    def __init__(
        self,
        directory: Path,
        *,
        on_event: Callable[[Mapping[str, Any]], None] | None = None,
        spawn: Spawner | None = None,
        subscribe: bool = False,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self.directory = directory
        self._on_event = on_event
        self._on_lost = on_lost
        self._spawn = spawn
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._cleanups = concurrency.Cleanups(START_TIMEOUT, log)
        self._subscribe = subscribe
        self._closed = False

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def connect(self, *, start: bool = True) -> None:
        """Connect, starting the cloud first if none runs and ``start`` is true.

        Raises:
            NoSuccess: no cloud runs (and ``start`` is false), or it could not start.
        """
        async with self._lock:
            if self.connected:
                return
            if self._closed:
                raise NoSuccess("this sim cloud client is closed")
            try:
                reader, writer = await _open(self.directory)
            except (FileNotFoundError, ConnectionRefusedError):
                if not start:
                    raise NoSuccess(f"no sim cloud runs in {self.directory}") from None
                await self._start_cloud()
                reader, writer = await self._patient_open()
            self._writer = writer
            self._run_reader(reader, writer)
            if self._subscribe:
                await self._request("subscribe", {})

    async def _start_cloud(self) -> None:
        await start_cloud(self.directory, idle_exit=IDLE_EXIT, cleanups=self._cleanups)

    async def _patient_open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect once the cloud listens; start it again if one that was stopping is gone.

        Raises:
            Timeout: no cloud listened within :data:`CONNECT_PATIENCE` seconds.
        """
        delay = 0.01
        async with concurrency.fail_after(
            CONNECT_PATIENCE,
            f"the sim cloud in {self.directory} did not answer within {CONNECT_PATIENCE:g} s "
            f"(it is starting or stopping; see {self.directory / 'cloud.log'}). Try again; "
            "if it hangs, `aiores sim stop` ends it.",
        ):
            while True:
                try:
                    return await _open(self.directory)
                except (FileNotFoundError, ConnectionRefusedError):
                    pass
                if not await asyncio.to_thread(is_locked, self.directory):
                    # No cloud holds the directory (the one there was has stopped).
                    await self._start_cloud()
                    continue
                # A cloud holds it: about to listen, or stopping.
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

    def _run_reader(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def read() -> None:
            await self._read(reader, writer)

        if self._spawn is not None:
            self._spawn(read, f"aiores-sim-control {self.directory}")
        else:
            task = asyncio.ensure_future(read())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                message = json.loads(line)
                if "event" in message:
                    if self._on_event is not None and message.get("event") == "vm":
                        self._on_event(message["vm"])
                    continue
                fut = self._pending.pop(message.get("id"), None)
                if fut is None or fut.done():
                    continue  # its caller was cancelled
                if message.get("ok"):
                    fut.set_result(message.get("result"))
                else:
                    fut.set_exception(decode_error(message))
        except (ConnectionError, ValueError) as exc:
            log.warning("sim cloud connection broke: %r", exc)
        finally:
            broken = self._writer is writer
            if broken:
                self._writer = None
            writer.close()
            lost = ConnectionLost(f"the sim cloud in {self.directory} closed the connection")
            pending, self._pending = self._pending, {}
            for fut in pending.values():
                if not fut.done():
                    fut.set_exception(lost)
            if broken and not self._closed and self._on_lost is not None:
                self._on_lost()

    async def call(
        self, op: str, args: Mapping[str, Any] | None = None, *, start: bool = True
    ) -> Any:
        """Send one request and await its answer (connecting first if needed).

        Raises:
            AioresError: The error the cloud answered with.
            ConnectionLost: The connection broke first.
            NoSuccess: No cloud runs and ``start`` is false.

        Cancelling it abandons the answer; what the cloud does with the request goes on.
        """
        if not self.connected:
            await self.connect(start=start)
        return await self._request(op, dict(args or {}))

    async def _request(self, op: str, args: dict[str, Any]) -> Any:
        writer = self._writer
        if writer is None or writer.is_closing():
            raise ConnectionLost(f"the sim cloud in {self.directory} closed the connection")
        request_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = fut
        try:
            writer.write(encode({"id": request_id, "op": op, "args": args}))
            await writer.drain()
            return await fut
        finally:
            self._pending.pop(request_id, None)

    async def close(self) -> None:
        """Close the connection (the cloud and its VMs go on); wait for its cleanups."""
        self._closed = True
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        # Wait for the reader to end (it does at the connection's end), not for an
        # outcome: what broke the connection it has logged.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._cleanups.drain(START_TIMEOUT)
