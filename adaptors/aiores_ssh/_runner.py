"""Running one command over SSH, with its remote process group known.

The remote side prints the pid of the shell that runs the command before anything
else (see :func:`~aiores_ssh._scripts.wrap_command`); that shell leads the command's
process group. Cancelling or timing out a run signals that group over a fresh
channel (TERM, then KILL after a grace period) instead of only closing the channel:
OpenSSH does not forward signals, and closing a channel without a terminal leaves
the command running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import asyncssh

from aiores._exceptions import AioresError, ConnectionLost, Timeout
from aiores._fleet import RunResult
from aiores.adaptor import CommandRunner

from ._base import SSHBase
from ._errors import map_errors
from ._pool import Pool, Target
from ._scripts import command_text, stop_script, wrap_command

__all__ = ["CommandTimeout", "Outcome", "SSHCommandRunner", "execute"]

log = logging.getLogger("aiores.ssh")

_READ = 65536
#: Seconds a stop (the kill over a fresh channel) may take beyond its grace period.
_STOP_SLACK = 5.0
#: Seconds to wait for the pid line when a run is stopped before it arrived.
_PID_WAIT = 2.0
_cleanups: set[asyncio.Task[None]] = set()


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


@dataclass(slots=True)
class _Run:
    pid: int | None = None
    pid_read: bool = False
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)


async def execute(
    pool: Pool,
    target: Target,
    command: str,
    *,
    stdin: bytes | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    grace: float = 2.0,
) -> Outcome:
    """Run shell ``command`` on ``target`` to completion.

    Raises:
        CommandTimeout: ``timeout`` passed (connecting included); the command was stopped.
        ConnectionLost: the connection broke while the command ran.
        HostKeyError, AuthenticationFailed, Timeout, NoSuccess: connecting failed.

    Cancelling it stops the remote command (TERM to its process group, KILL after
    ``grace`` seconds), bounded and shielded, then re-raises.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    remote = wrap_command(command, env)
    run = _Run()

    async def opener(conn: asyncssh.SSHClientConnection) -> asyncssh.SSHClientProcess[bytes]:
        return await conn.create_process(remote, encoding=None)

    try:
        async with asyncio.timeout(timeout), pool.open(target, opener) as proc:
            try:
                with map_errors(target.where, "running a command"):
                    await _collect(proc, run, stdin)
            except BaseException:
                await _stop(pool, target, proc, run, grace)
                raise
            status, signal = _exit(proc)
    except TimeoutError as exc:
        if isinstance(exc, AioresError):
            raise
        raise CommandTimeout(
            f"command on {target.where} did not finish in {timeout} s; it was stopped",
            stdout=run.stdout.decode(errors="replace"),
            stderr=run.stderr.decode(errors="replace"),
        ) from None
    if status is None and signal is None and proc.channel.get_connection().is_closed():
        raise ConnectionLost(f"connection to {target.where} lost while a command ran")
    return Outcome(status, signal, bytes(run.stdout), bytes(run.stderr), loop.time() - start)


def _exit(proc: asyncssh.SSHClientProcess[bytes]) -> tuple[int | None, str | None]:
    signal = proc.exit_signal
    if signal is not None:
        return None, signal[0]
    return proc.exit_status, None


async def _pump(stream: asyncssh.SSHReader[bytes], buf: bytearray) -> None:
    while chunk := await stream.read(_READ):
        buf.extend(chunk)


async def _collect(proc: asyncssh.SSHClientProcess[bytes], run: _Run, stdin: bytes | None) -> None:
    async def out() -> None:
        line = await proc.stdout.readline()
        run.pid_read = True
        if line.endswith(b"\n") and line[:-1].isdigit():
            run.pid = int(line[:-1])
        else:  # the wrapper did not run (odd login shell): keep what came
            run.stdout.extend(line)
        await _pump(proc.stdout, run.stdout)

    async def feed(data: bytes) -> None:
        # The command may exit without reading its input: that is not an error, and a
        # broken connection is reported by the readers.
        with contextlib.suppress(BrokenPipeError, ConnectionError, asyncssh.Error):
            proc.stdin.write(data)
            await proc.stdin.drain()
            proc.stdin.write_eof()

    # stdout is read in this task; stderr (and stdin, if any) alongside.
    tasks = [asyncio.ensure_future(_pump(proc.stderr, run.stderr))]
    if stdin:
        tasks.append(asyncio.ensure_future(feed(stdin)))
    else:
        proc.stdin.write_eof()
    try:
        await out()
        await asyncio.gather(*tasks)
        await proc.wait_closed()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _stop(
    pool: Pool, target: Target, proc: asyncssh.SSHClientProcess[bytes], run: _Run, grace: float
) -> None:
    """Stop the remote command; shielded from cancellation, bounded in time."""
    task = asyncio.ensure_future(_stop_now(pool, target, proc, run, grace))
    _cleanups.add(task)
    task.add_done_callback(_cleanups.discard)
    # A second cancellation ends the wait; the stop goes on in the background.
    await asyncio.shield(task)


async def _stop_now(
    pool: Pool, target: Target, proc: asyncssh.SSHClientProcess[bytes], run: _Run, grace: float
) -> None:
    try:
        async with asyncio.timeout(grace + _STOP_SLACK):
            if not run.pid_read and not proc.is_closing():
                with contextlib.suppress(asyncssh.Error, OSError, TimeoutError):
                    line = await asyncio.wait_for(proc.stdout.readline(), _PID_WAIT)
                    if line.endswith(b"\n") and line[:-1].isdigit():
                        run.pid = int(line[:-1])
            if run.pid is not None:
                script = stop_script(run.pid, grace)

                async def opener(conn: asyncssh.SSHClientConnection) -> object:
                    return await conn.run(script, check=False)

                async with pool.open(target, opener):
                    pass
    except (AioresError, TimeoutError, asyncssh.Error, OSError) as exc:
        log.warning("could not stop a command on %s: %s", target.where, exc)
    finally:
        proc.close()


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
    ) -> RunResult:
        """Run ``command`` on the remote host and return its result.

        A str is a shell command; a sequence is quoted argument by argument. ``env``
        is exported by the remote shell (sshd accepts few variables otherwise). A
        non-zero exit is a result, not an error.

        Raises:
            CommandTimeout: after ``timeout`` seconds (connecting included), having
                stopped the remote command; carries the partial output.
            ConnectionLost: the connection broke while the command ran.
            HostKeyError, AuthenticationFailed, Timeout, NoSuccess: connecting failed.

        Cancelling it sends TERM to the remote process group (KILL after
        :attr:`kill_grace` seconds) over a fresh channel, closes the channel, then
        re-raises the cancellation.
        """
        pool, target = self._endpoint()
        outcome = await execute(
            pool,
            target,
            command_text(command),
            stdin=stdin,
            env=env,
            timeout=timeout,
            grace=self.kill_grace,
        )
        return RunResult(
            exit_status=outcome.exit_status,
            stdout=outcome.stdout.decode(errors="replace"),
            stderr=outcome.stderr.decode(errors="replace"),
            exit_signal=outcome.exit_signal,
            elapsed=outcome.elapsed,
        )
