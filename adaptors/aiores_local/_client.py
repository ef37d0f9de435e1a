"""The adaptor's side of the keeper (see :mod:`._keeper`): starting it and talking to it.

One keeper serves one job adaptor. Requests are written to its input without
waiting (those of one turn of the event loop in one write); each gets a future for
its answer (answers come in request order), and an optional callback that runs on
the loop, in order with the keeper's announcements of ended jobs, before the future
is set. The futures never fail: a keeper that is gone (or whose answers can no
longer be read) answers ``{"error": ...}``, at once for later requests. A request is
sent whole once made, even if whoever awaits its answer is cancelled meanwhile (its
``then`` still runs; a future nobody awaits any more is left as it is).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiores import NoSuccess
from aiores.adaptor import concurrency, private, truncation_marker

__all__ = ["KeeperClient", "launch", "stop"]

#: The keeper's program (standard library only: it starts in milliseconds).
SCRIPT = Path(__file__).with_name("_keeper.py")
#: Seconds a new keeper may take to say it is ready.
READY_TIMEOUT = 30.0
#: Answers (job starts, job ends) handled per loop iteration.
_ANSWERS_PER_TURN = 64

log = logging.getLogger("aiores.local")

Answer = dict[str, Any]
OnExit = Callable[[str, int, bytes | None, bytes | None], None]


def launch(jobs_dir: Path) -> subprocess.Popen[bytes]:
    """Blocking: make the jobs directory (0700) and start a keeper for it.

    The keeper runs in a session of its own (a Ctrl-C meant for this program does not
    reach it or its jobs); what it says on standard error goes to ``keeper.log`` beside
    the jobs directory.
    """
    private.private_dir(jobs_dir.parent)
    private.private_dir(jobs_dir)
    log = jobs_dir.parent / "keeper.log"
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        return subprocess.Popen(
            [sys.executable, "-I", "-S", str(SCRIPT), str(jobs_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log_fd,
            start_new_session=True,
        )
    finally:
        os.close(log_fd)


def stop(popen: subprocess.Popen[bytes]) -> None:
    """Blocking: end a keeper that has started no job (closing its input ends it)."""
    for pipe in (popen.stdin, popen.stdout):
        if pipe is not None:
            pipe.close()
    popen.wait()


class KeeperClient:
    """Requests to one keeper process, and its announcements of ended jobs."""

    def __init__(self, popen: subprocess.Popen[bytes], on_exit: OnExit) -> None:
        self._popen = popen
        self._on_exit = on_exit
        self._waiting: deque[tuple[asyncio.Future[Answer], Callable[[Answer], None] | None]] = (
            deque()
        )
        self._reader = asyncio.StreamReader(limit=1 << 20)
        self._writer: asyncio.WriteTransport | None = None
        self._outbox = bytearray()
        self._read_transport: asyncio.BaseTransport | None = None
        self.gone = False
        #: Called once if the keeper goes away while this client listens.
        self.on_gone: Callable[[], None] = lambda: None
        #: Called once if this client stops listening because its reader was cancelled.
        self.on_detached: Callable[[], None] = lambda: None
        self._environ: dict[Any, Any] = {}

    @property
    def pid(self) -> int:
        return self._popen.pid

    async def connect(self) -> None:
        """Attach its pipes to the loop and wait until it says it is ready.

        Raises:
            NoSuccess: it ended, or said nothing within :data:`READY_TIMEOUT` seconds.
        """
        loop = asyncio.get_running_loop()
        popen = self._popen
        assert popen.stdin is not None
        assert popen.stdout is not None
        self._environ = _environ_now()  # what its jobs inherit
        self._read_transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(self._reader), popen.stdout
        )
        writer, _ = await loop.connect_write_pipe(asyncio.Protocol, popen.stdin)
        self._writer = writer
        # Reaped whenever it ends (it outlives this program if jobs still run).
        threading.Thread(target=popen.wait, name="aiores-local-keeper", daemon=True).start()
        async with concurrency.fail_after(READY_TIMEOUT, "the local job keeper did not start"):
            line = await self._reader.readline()
        if not line or "ready" not in json.loads(line):
            raise NoSuccess(f"the local job keeper did not start (it said {line!r})")

    def environ_changed(self) -> bool:
        """True if ``os.environ`` is no longer what the keeper inherited."""
        return _environ_now(copy=False) != self._environ

    def request(
        self, message: dict[str, Any], then: Callable[[Answer], None] | None = None
    ) -> asyncio.Future[Answer]:
        """Send ``message``; its answer (``then(answer)`` runs first, on the loop)."""
        answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        if self.gone or self._writer is None or self._writer.is_closing():
            why = f"the local job keeper (pid {self.pid}) is gone"
            _deliver(answer, then, {"error": {"errno": 0, "strerror": why}})
            return answer
        self._waiting.append((answer, then))
        if not self._outbox:  # the first this turn: sent with the rest once it is over
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox += json.dumps(message).encode() + b"\n"
        return answer

    def _flush(self) -> None:
        """Send what was requested this turn of the loop, in one write (the keeper
        reads it in one go and handles it together)."""
        data, self._outbox = self._outbox, bytearray()
        if data and self._writer is not None and not self._writer.is_closing():
            self._writer.write(data)

    async def read(self) -> None:
        """Deliver answers and ended jobs until the keeper's output ends."""
        reader = self._reader
        # A line already buffered is read without a pause: a thousand answers that
        # came together would be handled in one step of the loop; at most
        # _ANSWERS_PER_TURN per iteration, the loop gets its turns in between.
        turns = concurrency.TurnGate(_ANSWERS_PER_TURN)
        try:
            while line := await reader.readline():
                await turns.turn()
                message = json.loads(line)
                if "x" in message:
                    out = await self._output(message.get("out"))
                    err = await self._output(message.get("err"))
                    self._on_exit(message["x"], message["rc"], out, err)
                elif self._waiting:
                    answer, then = self._waiting.popleft()
                    _deliver(answer, then, message)
        except (OSError, ValueError, asyncio.IncompleteReadError):
            pass  # the keeper died mid-line: as gone as at end of file
        except asyncio.CancelledError:  # the session ends: stop listening, the keeper goes on
            self.on_detached()
            self.close()
            raise
        except Exception:  # a bug here: never leave requests waiting for answers
            log.exception("local job keeper %d: reading its answers failed", self.pid)
            self._gone(f"the local job keeper (pid {self.pid}) can no longer be heard")
            self.close()  # its input closed: it records its jobs on, then ends
            return
        self._gone()

    async def _output(self, sizes: list[int] | None) -> bytes | None:
        if sizes is None:
            return None
        size, sent = sizes
        data = await self._reader.readexactly(sent)
        return data if size <= sent else data + truncation_marker(sent, size - sent)

    def _gone(self, why: str | None = None) -> None:
        if not self.gone:
            self._unanswered(why or f"the local job keeper (pid {self.pid}) ended")
            self.on_gone()

    def _unanswered(self, why: str) -> None:
        self.gone = True
        while self._waiting:
            answer, then = self._waiting.popleft()
            _deliver(answer, then, {"error": {"errno": 0, "strerror": why}})

    def close(self) -> None:
        """Stop talking: the keeper goes on recording its jobs, then ends.

        What was sent (or requested before this) is still delivered; answers not yet
        read are answered ``{"error": ...}`` here.
        """
        self._flush()
        self._unanswered("the local job service closed")
        for transport in (self._writer, self._read_transport):
            if transport is not None:
                transport.close()


def _deliver(
    answer: asyncio.Future[Answer], then: Callable[[Answer], None] | None, message: Answer
) -> None:
    """Run ``then`` (even if nobody awaits the answer any more), then set the answer
    unless its awaiter cancelled it."""
    try:
        if then is not None:
            then(message)
    finally:
        if not answer.done():
            answer.set_result(message)


def _environ_now(*, copy: bool = True) -> dict[Any, Any]:
    """``os.environ`` as a dict, cheap to compare (once per job submitted).

    ``os.environ`` encodes every key and value when iterated; the dict of bytes it
    keeps them in (CPython's) is compared in C.
    """
    data = getattr(os.environ, "_data", None)
    if not isinstance(data, dict):
        return dict(os.environ)
    return dict(data) if copy else data
