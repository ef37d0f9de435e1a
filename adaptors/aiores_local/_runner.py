"""Run one command on this host to completion: the ``local://`` command runner."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
from collections.abc import Callable, Mapping, Sequence

from aiores import RunResult, Timeout
from aiores.adaptor import URL, AdaptorEnv, CommandRunner, concurrency, validate

from ._options import check_grace, parse_options
from ._process import (
    Capture,
    Child,
    merged_environment,
    signal_name,
    spawn,
    spawn_error,
)

__all__ = ["LocalCommandRunner"]

#: Seconds to wait for a process group to go after SIGKILL before giving up on it.
_KILL_WAIT = 5.0


class LocalCommandRunner(CommandRunner):
    """Runs commands as processes of this host, each in its own process group.

    Args:
        url: ``local://`` (``?grace=SECONDS``: SIGTERM to SIGKILL when cancelled).
        env: The session's services.
        grace: Overrides the URL's ``grace``.
    """

    def __init__(self, url: URL, env: AdaptorEnv, *, grace: float | None = None) -> None:
        super().__init__(url, env)
        self.grace = parse_options(url).grace if grace is None else check_grace(grace)
        self._devnull = -1
        #: Spawns pass at most 8 per loop iteration: fork and exec block the loop.
        self._gate = concurrency.TurnGate(8)

    async def open(self) -> None:
        """Open ``/dev/null`` once for the standard input of commands given none."""
        if self._devnull < 0:
            self._devnull = await asyncio.to_thread(os.open, os.devnull, os.O_RDWR | os.O_CLOEXEC)

    async def aclose(self) -> None:
        """Release ``/dev/null``; commands still running belong to their callers."""
        if self._devnull >= 0:
            os.close(self._devnull)
            self._devnull = -1

    async def run(
        self,
        command: str | Sequence[str],
        *,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        on_output: Callable[[str, bytes], None] | None = None,
    ) -> RunResult:
        """Run ``command`` and return its exit status and output.

        Args:
            command: A str is a shell command (``/bin/sh -c``); a sequence is a program
                and its arguments, run without a shell.
            stdin: Bytes written to its standard input, which is then closed (None:
                ``/dev/null``).
            env: Variables added to this process's environment for the command.
            timeout: Seconds before the command is killed.
            on_output: Called with ``"stdout"`` or ``"stderr"`` and each chunk as the
                command writes it (see :meth:`CommandRunner.run
                <aiores.adaptor.CommandRunner.run>`); not after the run is over.

        Returns:
            The result; a non-zero exit or a signal is a result, not an error.

        Raises:
            Timeout: ``timeout`` passed; the command's process group was killed (SIGKILL).
            DoesNotExist: the program does not exist.
            PermissionDenied: the program is not executable.
            BadParameter: ``command`` is empty or not str, text holds a NUL or a lone
                surrogate, an environment name is not portable, a bad ``timeout``.
            Exception: what ``on_output`` raised; the command was stopped as a
                cancelled one is.

        Cancelling it sends SIGTERM to the command's process group, then SIGKILL after
        the grace period, waits (bounded) for the process to go, and re-raises. That
        stop is one of the session's cleanups: cancelling again stops only the waiting,
        the stop goes on and the session waits for it when it closes.
        """
        command, stdin, env, timeout = validate.run_arguments(command, stdin, env, timeout)
        argv = ("/bin/sh", "-c", command) if isinstance(command, str) else command
        loop = asyncio.get_running_loop()
        finished = asyncio.Event()  # the process ended and its pipes closed
        woken = asyncio.Event()  # that, or on_output failed
        output = None if on_output is None else _Output(on_output, woken)
        started = loop.time()
        if self._devnull < 0:
            await self.open()
        await self._gate.turn()

        def done(_: Child) -> None:
            finished.set()
            woken.set()

        try:
            child = spawn(
                argv,
                cwd=None,
                env=merged_environment(env),
                stdin=stdin,
                stdout=None,
                stderr=None,
                limit=None,
                devnull=self._devnull,
                on_done=done,
                on_output=output,
            )
        except OSError as exc:
            raise spawn_error(exc, argv[0], None) from exc
        try:
            async with concurrency.fail_after(
                timeout,
                lambda: (
                    f"{_shown(command)} did not finish within {timeout:g} s; "
                    "its process group was killed"
                ),
            ):
                await woken.wait()
        except Timeout:
            await self._stop(child, finished, grace=0.0)
            raise
        except asyncio.CancelledError:
            await self._stop(child, finished, grace=self.grace)
            raise
        finally:
            if output is not None:
                output.over = True  # a stop that outlives the caller reports nothing
        if output is not None and output.error is not None:
            if not finished.is_set():
                await self._stop(child, finished, grace=self.grace)
            raise output.error
        rc = child.returncode
        assert rc is not None
        return RunResult(
            exit_status=rc if rc >= 0 else None,
            exit_signal=None if rc >= 0 else signal_name(-rc).removeprefix("SIG"),
            stdout=_text(child.out),
            stderr=_text(child.err),
            elapsed=loop.time() - started,
        )

    async def _stop(self, child: Child, finished: asyncio.Event, *, grace: float) -> None:
        """Stop ``child``'s group as one of the session's cleanups: a further cancellation
        of the caller stops only the waiting, and the session waits for it on close."""
        await self.env.cleanups.run(
            functools.partial(_stop, child, finished, grace=grace),
            what=f"stopping local command (pid {child.pid})",
            timeout=grace + _KILL_WAIT + 1.0,  # _stop bounds itself; never cut it short
        )


class _Output:
    """A run's ``on_output``, guarded: the first error it raises is kept and wakes the
    run (which stops the command and raises it); nothing is passed on after that, nor
    once the run is over."""

    __slots__ = ("error", "on_output", "over", "woken")

    def __init__(self, on_output: Callable[[str, bytes], None], woken: asyncio.Event) -> None:
        self.on_output = on_output
        self.woken = woken
        self.error: Exception | None = None
        self.over = False

    def __call__(self, stream: str, chunk: bytes) -> None:
        if self.over or self.error is not None:
            return
        try:
            self.on_output(stream, chunk)
        except Exception as exc:  # the caller's: raised by run, not by a loop callback
            self.error = exc
            self.woken.set()


def _text(capture: Capture | None) -> str:
    return "" if capture is None else capture.take().decode("utf-8", errors="replace")


def _shown(command: str | Sequence[str]) -> str:
    text = command if isinstance(command, str) else " ".join(command)
    return repr(text if len(text) <= 80 else text[:77] + "...")


async def _stop(child: Child, finished: asyncio.Event, *, grace: float) -> None:
    """SIGTERM the group (if ``grace``), SIGKILL it after ``grace``; bounded."""
    try:
        if grace > 0 and not finished.is_set():
            child.signal(signal.SIGTERM)
            child.signal(signal.SIGCONT)
            async with concurrency.move_on_after(grace):
                await finished.wait()
        child.signal(signal.SIGKILL)  # also members that outlived the leader
        async with concurrency.move_on_after(_KILL_WAIT):  # unkillable: stop watching it
            await finished.wait()
    finally:
        child.detach()
