"""Running one command over SSH, so that it can be stopped on the host.

The login shell that runs the command leads its process group (the group sshd
signals for a channel ``signal`` request) and exports a token of the run to it
(:func:`~aiores_ssh._scripts.mark_command`): nothing more is sent or run per
command. Cancelling or timing out a run stops the command's process groups (TERM,
then KILL after a grace period) instead of only closing the channel, which would
leave the command running (OpenSSH closes a session only once its command has ended):

- first over the run's own channel (``signal`` requests; OpenSSH 7.9+ and asyncssh
  servers pass them to the group), which needs no channel slot;
- then, if the channel has not closed shortly after, over another channel, by a
  script that finds the run's processes by its token and signals their groups
  (:func:`~aiores_ssh._scripts.stop_script`); that channel is opened ahead of every
  queued request (:meth:`~aiores_ssh._pool.Pool.urgent`): when the slots are all
  held by the commands being stopped, a stop that queued for a slot would wait for
  itself.

A run's channel slot is given back only once its channel has closed. The stop of a
cancelled run is a cleanup of the session (:attr:`~aiores.adaptor.AdaptorEnv.cleanups`):
cancelling the caller again does not cut it off, and the session waits for it on close.

A stop is confirmed only when the host showed the command gone: its channel closed
with an exit status or signal, or the stop by token saw its processes end. A caller
that must know whether a command it gave up on can still act on the host (a job
submit: it may still make the job) passes ``ended`` to :func:`execute`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import asyncssh

from aiores import AioresError, ConnectionLost, RunResult, Timeout
from aiores.adaptor import CommandRunner, concurrency, validate

from ._base import SSHBase
from ._errors import translate
from ._pool import Lease, Pool, Target
from ._scripts import command_text, mark_command, stop_script

__all__ = ["CommandTimeout", "Outcome", "SSHCommandRunner", "execute"]

log = logging.getLogger("aiores.ssh")

#: Seconds a stop may take beyond its grace period (connecting for it included).
_STOP_SLACK = 5.0
#: Tokens of runs: random per process, counted within it (unique across clients).
_TOKENS = itertools.count()
_TOKEN_PREFIX = secrets.token_hex(6)


def _new_token_prefix() -> None:
    """A forked child draws a prefix of its own: its runs' tokens would otherwise be
    its parent's (and its siblings'), and a stop by token would end theirs too."""
    global _TOKEN_PREFIX
    _TOKEN_PREFIX = secrets.token_hex(6)


os.register_at_fork(after_in_child=_new_token_prefix)


def _run_token() -> str:
    """A token for one run (see :func:`~aiores_ssh._scripts.mark_command`)."""
    return f"{_TOKEN_PREFIX}{next(_TOKENS):x}"


#: Seconds a channel has, after the TERM sent over it, to close before the run is
#: also stopped by its token over another channel.
_SIGNAL_WAIT = 0.5
#: Seconds to wait for a stopped command's channel to close before giving its slot back.
_CLOSE_WAIT = 2.0
#: The scope of a run with no timeout (reusable: it holds no state).
_NO_DEADLINE = contextlib.nullcontext()


class CommandTimeout(Timeout):
    """A remote command outlived its timeout and was stopped.

    Attributes:
        stdout: What it wrote to standard output before it was stopped.
        stderr: What it wrote to standard error.
    """

    def __init__(self, message: str, stdout: str = "", stderr: str = "") -> None:
        super().__init__(message)
        self.stdout = stdout
        self.stderr = stderr


@dataclass(slots=True)
class Outcome:
    """What a remote command produced, undecoded."""

    exit_status: int | None
    exit_signal: str | None
    stdout: bytes
    stderr: bytes
    elapsed: float


class _Run(asyncssh.SSHClientSession[bytes]):
    """One command's channel callbacks: output collected as it arrives, no reader tasks.

    The output also goes to ``on_output`` as it arrives, until that raises (its
    error is kept in ``error`` and ``broken`` resolved) or the run is ``over``.
    """

    def __init__(self, token: str, on_output: Callable[[str, bytes], None] | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.token = token
        self.chan: asyncssh.SSHClientChannel[bytes] | None = None
        self.closed: asyncio.Future[Exception | None] = loop.create_future()
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.status: int | None = None
        self.signal: str | None = None
        #: The server refused the command (its channel or its exec request).
        self.refused = False
        self.on_output = on_output
        self.error: Exception | None = None
        #: Resolved once ``on_output`` raised (made only when there is one).
        self.broken: asyncio.Future[Exception | None] | None = (
            loop.create_future() if on_output is not None else None
        )
        #: Set once the caller's run is over: nothing more goes to ``on_output``.
        self.over = False
        #: The caller's own wait for the close (see :meth:`closing`).
        self._closing: asyncio.Future[None] | None = None

    @property
    def exec_sent(self) -> bool:
        """Whether the command may have reached the server (its channel opened and
        the server did not refuse it): no channel, no command."""
        return self.chan is not None and not self.refused

    def ended(self) -> bool:
        """Whether the server closed the channel after the command ended (an exit
        status or signal came); a connection that broke shows nothing."""
        return (
            self.closed.done()
            and self.closed.result() is None
            and (self.status is not None or self.signal is not None)
        )

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self.chan = chan

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            self.stderr.extend(data)
            if self.on_output is not None:
                self._tell("stderr", data)
        else:
            self.stdout.extend(data)
            if self.on_output is not None:
                self._tell("stdout", data)

    def _tell(self, stream: str, data: bytes) -> None:
        if self.on_output is None or self.over or self.error is not None or not data:
            return
        try:
            self.on_output(stream, data)
        except Exception as exc:  # the caller's: raised by execute, never into asyncssh
            self.error = exc
            assert self.broken is not None
            self.broken.set_result(exc)

    def eof_received(self) -> bool:
        # True keeps our side open, as asyncssh's own stream sessions do: asyncssh
        # would otherwise answer the server's EOF with one of ours, a packet for
        # nothing (the command's input is ended already, or was /dev/null), and
        # the server closes the channel once the command has exited.
        return True

    def exit_status_received(self, status: int) -> None:
        self.status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.signal = signal

    def channel(self) -> asyncssh.SSHClientChannel[bytes]:
        """The channel (known once the session is open)."""
        assert self.chan is not None
        return self.chan

    def closing(self) -> asyncio.Future[None]:
        """A future of the caller's own, resolved once the channel closes (call it
        while :attr:`closed` is not done).

        Cancelling a wait on it leaves :attr:`closed` alone (a stop waits on that
        too); the close resolves it directly, a loop callback less than a wait on
        ``asyncio.shield(closed)``.
        """
        self._closing = self.closed.get_loop().create_future()
        return self._closing

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)
        if self._closing is not None and not self._closing.done():
            self._closing.set_result(None)


async def execute(
    pool: Pool,
    target: Target,
    command: str,
    *,
    stdin: bytes | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    grace: float = 2.0,
    ended: asyncio.Future[bool] | None = None,
    on_output: Callable[[str, bytes], None] | None = None,
) -> Outcome:
    """Run shell ``command`` on ``target`` to completion.

    ``on_output``, if given, gets each chunk of the command's output as it arrives
    (``"stdout"`` or ``"stderr"``, bytes), never after this has returned or raised.

    ``ended``, if given, is resolved once the command's fate on the host is known:
    True if it ended there or never started (it completed; it was stopped and the
    host showed it gone; no channel was opened for it), False if that could not be
    confirmed (the connection broke, the stop failed or ran out of time): the
    command may still run, and act, on the host. A stop that a second cancellation
    cut off from the caller resolves it when it ends, after this has raised.

    Raises:
        CommandTimeout: ``timeout`` passed (connecting included); the command was stopped.
        ConnectionLost: the connection broke while the command ran.
        HostKeyError, AuthenticationFailed, Timeout, NoSuccess: connecting failed.
        Exception: what ``on_output`` raised; the command was stopped as on a cancel.

    Cancelling it stops the remote command (TERM to its process group, KILL after
    ``grace`` seconds) as a cleanup of the pool's session (bounded, not cut off by
    a second cancellation, awaited when the session closes), then re-raises.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    token = _run_token()
    remote, preamble = mark_command(command, token, env, stdin=bool(stdin))
    # Whether anything goes on the channel's input (else the command reads
    # /dev/null and no EOF is sent: one packet less per run).
    feeds = bool(preamble or stdin)
    started: _Run | None = None  # for the partial output of a run that timed out
    tried: list[_Run] = []  # every channel opened for it (the pool may retry)

    def settle(gone: bool) -> None:
        if ended is not None and not ended.done():
            ended.set_result(gone)

    async def opener(conn: asyncssh.SSHClientConnection) -> _Run:
        run = _Run(token, on_output)
        tried.append(run)
        return await _open(conn, remote, run)

    async def abandon(lease: Lease, run: _Run) -> None:
        gone = False
        try:
            gone = await _stop_now(pool, lease, run, grace)
        finally:
            settle(gone)

    try:
        finished: _Run | None = None
        async with concurrency.move_on_after(timeout) if timeout is not None else _NO_DEADLINE:
            try:
                lease, run = await pool.channel(target, opener, abandon)
            except BaseException:
                # An abandoned channel's stop has settled it already, unless a second
                # cancel cut the wait for that stop short: a command that may have
                # reached the host then counts as unconfirmed (its stop's answer is late).
                settle(not any(r.exec_sent for r in tried))
                raise
            started = run
            try:
                chan = run.channel()
                if feeds:
                    if preamble:
                        chan.write(preamble)
                    if stdin:
                        chan.write(stdin)
                    chan.write_eof()
                # A wait of its own / asyncio.wait: a cancelled wait leaves the future
                # to the stop below, which waits on it too (a shared future).
                if run.broken is None:
                    if not run.closed.done():
                        await run.closing()
                else:
                    await asyncio.wait(
                        {run.closed, run.broken}, return_when=asyncio.FIRST_COMPLETED
                    )
                if run.error is not None:  # on_output raised: stop the command
                    raise run.error
                lost = run.closed.result()
            except BaseException:
                await _stop(pool, lease, run, grace, settle)
                raise
            lease.release()
            finished = run
        if finished is None:  # the deadline ended the block (anything else raised)
            out = started.stdout if started is not None else b""
            err = started.stderr if started is not None else b""
            raise CommandTimeout(
                f"command on {target.where} did not finish in {timeout} s; it was stopped",
                stdout=out.decode(errors="replace"),
                stderr=err.decode(errors="replace"),
            )
        # The connection is asked through the lease: a channel closed with it no
        # longer knows its connection (asyncssh's get_connection() asserts then).
        if lost is not None or (
            run.status is None and run.signal is None and lease.conn.is_closed()
        ):
            settle(False)
            error = translate(lost, target.where, "running a command") if lost else lost
            if not isinstance(error, ConnectionLost):
                error = ConnectionLost(f"connection to {target.where} lost while a command ran")
            raise error from lost
        settle(True)
        status = None if run.signal is not None else run.status
        elapsed = loop.time() - start
        return Outcome(status, run.signal, bytes(run.stdout), bytes(run.stderr), elapsed)
    finally:
        for tried_run in tried:  # a stop that outlives the caller reports nothing
            tried_run.over = True


async def _open(
    conn: asyncssh.SSHClientConnection, command: str, session: _Run | None = None
) -> _Run:
    """Start ``command`` on a new channel of ``conn`` (with ``session``'s callbacks)."""
    if session is None:
        session = _Run("")
    try:
        await conn.create_session(lambda: session, command, encoding=None)
    except Exception as exc:
        if isinstance(exc, asyncssh.ChannelOpenError) and not conn.is_closed():
            session.refused = True  # the server answered: it runs nothing
        if session.chan is not None:  # opened, then the command was refused
            session.chan.close()
            await _closes_within(session, _CLOSE_WAIT)
        raise
    return session


async def _stop(
    pool: Pool, lease: Lease, run: _Run, grace: float, settle: Callable[[bool], None]
) -> None:
    """Stop the remote command, close its channel, give back its slot: a cleanup of the
    session (a second cancellation ends only the wait; the session waits for it).
    ``settle`` learns whether the stop was confirmed (see :func:`execute`)."""

    async def stop() -> None:
        gone = False
        try:
            gone = await _stop_now(pool, lease, run, grace)
        finally:
            settle(gone)

    await pool.cleanups.run(stop, what=f"stopping a command on {lease.target.where}")


async def _stop_now(pool: Pool, lease: Lease, run: _Run, grace: float) -> bool:
    """Stop the run; whether the host showed its command gone (see the module)."""
    where = lease.target.where
    chan = run.channel()
    gone = False
    try:
        async with asyncio.timeout(grace + _SIGNAL_WAIT + _STOP_SLACK):
            gone = await _terminate(pool, lease, run, grace)
    except (AioresError, TimeoutError, asyncssh.Error, OSError) as exc:
        log.warning("could not stop a command on %s: %s", where, exc)
    finally:
        chan.close()
        try:
            await _closes_within(run, _CLOSE_WAIT)
        finally:
            lease.release()
    if not gone:
        log.debug("a command stopped on %s was not seen to end", where)
    return gone


async def _terminate(pool: Pool, lease: Lease, run: _Run, grace: float) -> bool:
    chan = run.channel()
    if run.closed.done():
        return run.ended()
    _signal(chan, "TERM")
    _signal(chan, "CONT")  # a stopped group sees the TERM, too
    if await _closes_within(run, min(grace, _SIGNAL_WAIT)):
        return run.ended()
    # Still open: the command takes its time over TERM, or the server does not act on
    # signal requests. Stop its groups by its token as well.
    gone = False
    try:
        gone = await _stop_by_token(pool, lease, run, grace)
    finally:
        if not await _closes_within(run, _SIGNAL_WAIT):
            _signal(chan, "KILL")
    return gone or run.ended()


async def _stop_by_token(pool: Pool, lease: Lease, run: _Run, grace: float) -> bool:
    """TERM the process groups of the run's processes, found by its token, KILL them
    after ``grace`` seconds; whether they are seen gone."""
    if run.closed.done():
        return run.ended()
    script = stop_script(run.token, grace)

    async def opener(conn: asyncssh.SSHClientConnection) -> _Run:
        return await _open(conn, script)

    stop_lease, stopper = await pool.urgent(lease.target, opener, near=lease)
    try:
        stopper.channel().write_eof()
        await stopper.closed
    finally:
        stopper.channel().close()
        stop_lease.release()
    # 3: none found; the command has not started yet, or has ended (its channel tells).
    return stopper.ended() and stopper.status == 0


def _signal(chan: asyncssh.SSHClientChannel[bytes], name: str) -> None:
    with contextlib.suppress(OSError, asyncssh.Error):
        chan.send_signal(name)


async def _closes_within(run: _Run, seconds: float) -> bool:
    """Whether the run's channel closes within ``seconds``."""
    # asyncio.wait: a wait that ends leaves the future alone (others wait on it).
    await asyncio.wait({run.closed}, timeout=seconds)
    return run.closed.done()


class SSHCommandRunner(SSHBase, CommandRunner):
    """Runs commands on one ``ssh://`` endpoint over the session's pooled connections."""

    #: Seconds between TERM and KILL when a run is cancelled or times out.
    kill_grace: float = 2.0

    async def run(
        self,
        command: str | Sequence[str],
        *,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        on_output: Callable[[str, bytes], None] | None = None,
    ) -> RunResult:
        """Run ``command`` on the remote host and return its result.

        A str is a shell command; a sequence is quoted argument by argument. ``env``
        is exported by the remote shell (sshd accepts few variables otherwise); the
        values travel on the channel's input, never in a command line other users
        of the host could read. A non-zero exit is a result, not an error.
        ``on_output`` gets each chunk of output as the channel delivers it
        (``"stdout"`` or ``"stderr"``, bytes), never after this returns or raises.

        Raises:
            CommandTimeout: after ``timeout`` seconds (connecting included), having
                stopped the remote command; carries the partial output.
            ConnectionLost: the connection broke while the command ran.
            HostKeyError, AuthenticationFailed, Timeout, NoSuccess: connecting failed.
            Exception: what ``on_output`` raised; the command was stopped as when
                cancelled.

        Cancelling it sends TERM to the remote process group over the run's channel
        and, if that does not end it, to the command's process groups (found by the
        run's token) over another channel, KILL after :attr:`kill_grace` seconds;
        closes the channel, then re-raises the cancellation.
        """
        command, stdin, env, timeout = validate.run_arguments(command, stdin, env, timeout)
        pool, target = self._endpoint()
        outcome = await execute(
            pool,
            target,
            command if isinstance(command, str) else command_text(command),  # str: checked
            stdin=stdin,
            env=env,
            timeout=timeout,
            grace=self.kill_grace,
            on_output=on_output,
        )
        return RunResult(
            exit_status=outcome.exit_status,
            stdout=outcome.stdout.decode(errors="replace"),
            stderr=outcome.stderr.decode(errors="replace"),
            exit_signal=outcome.exit_signal,
            elapsed=outcome.elapsed,
        )
