"""``aiores pool run``: a file of shell commands run on an elastic pool of machines.

The commands (one a line) go to :meth:`aiores.Pool.map`; the pool acquires machines as
the queue needs them, between ``--min`` and ``--max``, releases those idle for
``--idle-timeout`` seconds, runs a command again elsewhere when its machine is revoked
or fails under it, and releases every machine when the command ends (also on Ctrl-C).

Standard output: one line per command as it completes (see :func:`result_line`), or
one JSON object per line with ``--json``. Standard error: the progress (a live line on
a terminal, else a plain line every ``--progress`` seconds) and a summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from rich.live import Live
from rich.text import Text

from .. import _validate as validate
from .._concurrency import TaskSet
from .._descriptions import ComputeDescription
from .._exceptions import BadParameter
from .._pool import Pool, check_size
from .._results import RunResult
from .._session import Session
from ._common import EXIT_FAILED, check_name, check_tags, check_url, err, host_label, run
from ._machines import _result_json, _status

__all__ = ["pool", "read_commands", "result_line"]


@dataclass(frozen=True, slots=True)
class Command:
    """One command of the input: its line number (from 1) and its text."""

    line: int
    text: str


#: Characters of a command's output shown on its result line.
OUTPUT_CHARS = 200
#: Seconds between two refreshes of the live progress line on a terminal.
LIVE_REFRESH = 0.25


def read_commands(text: str, source: str) -> list[Command]:
    """The commands of ``text``: one a line; blank lines and ``#`` comments skipped.

    Raises:
        BadParameter: a line with a NUL or a lone surrogate, or no command at all
            (``source`` names the input in the message).
    """
    commands = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        validate.text(stripped, f"{source} line {number}")
        commands.append(Command(number, stripped))
    if not commands:
        raise BadParameter(f"{source} holds no command (only blank lines and # comments)")
    return commands


def _read_input(path: str | None) -> tuple[str, list[Command]]:
    """The commands of FILE (or of standard input: None or ``-``), and the input's name."""
    if path is None or path == "-":
        source = "standard input"
        if sys.stdin.isatty():
            err.print("reading commands from standard input (one a line; Ctrl-D ends)")
        data = sys.stdin.buffer.read()
    else:
        source = f"FILE {path!r}"
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise BadParameter(f"{source} cannot be read: {exc.strerror or exc}") from exc
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        raise BadParameter(f"{source} is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    return source, read_commands(text, source)


def _shown(output: str) -> str:
    """``output`` in one line: escapes for newlines and control characters, and at most
    :data:`OUTPUT_CHARS` characters (``...`` after a cut)."""
    one = json.dumps(output.rstrip("\n"), ensure_ascii=False)[1:-1]
    return one if len(one) <= OUTPUT_CHARS else one[:OUTPUT_CHARS] + "..."


def result_line(command: Command, result: RunResult) -> str:
    """A command's result in one line: ``line N: STATUS on MACHINE: OUTPUT``.

    ``N`` is the command's line number in the input; ``STATUS`` ``exit 0``, ``exit 3``,
    ``killed by signal 9`` or the error that stopped it (``NoSuccess: ...``);
    ``MACHINE`` the native id of the machine it last ran on (``?`` when it never ran);
    ``OUTPUT`` its standard output, or when that is empty its standard error, in one
    line (newlines shown as ``\\n``), cut after a few hundred characters.
    """
    output = result.stdout or result.stderr
    line = f"line {command.line}: {_status(result)} on {host_label(result.resource)}"
    return line + (f": {_shown(output)}" if output else "")


def _result_object(index: int, command: Command, result: RunResult) -> dict[str, Any]:
    return {"index": index, "line": command.line, "command": command.text, **_result_json(result)}


class _Progress:
    """The pool's figures on standard error while the commands run.

    On a terminal, one live line (machines by state, commands done, running, queued,
    failed); else a plain line every ``interval`` seconds (none when it is 0).
    """

    def __init__(self, pool: Pool, total: int, interval: float) -> None:
        self.pool = pool
        self.total = total
        self.interval = interval
        self.done = 0
        self.failed = 0
        # Results printed on the same terminal go above the live line; printed
        # elsewhere (a pipe, a file), they must not be taken into standard error.
        self.live = (
            Live(
                console=err,
                transient=True,
                auto_refresh=False,
                redirect_stdout=sys.stdout.isatty(),
                redirect_stderr=False,
            )
            if err.is_terminal
            else None
        )

    def line(self) -> str:
        s = self.pool.stats()
        return (
            f"pool: machines {s.booting} booting, {s.busy} busy, {s.idle} idle, "
            f"{s.draining} draining; commands {self.done}/{self.total} done, "
            f"{s.running} running, {s.queued} queued, {self.failed} failed"
        )

    async def show(self) -> None:
        """Refresh the figures until cancelled."""
        if self.live is not None:
            with self.live:
                while True:
                    self.live.update(Text(self.line()), refresh=True)
                    await asyncio.sleep(LIVE_REFRESH)
        elif self.interval > 0:
            while True:
                await asyncio.sleep(self.interval)
                err.print(self.line())


@click.group()
def pool() -> None:
    """Elastic pools: machines acquired as work needs them, released when idle."""


@pool.command("run")
@click.argument("url")
@click.argument("file", required=False)
@click.option("--min", "low", default=0, show_default=True, help="Machines kept at least.")
@click.option("--max", "high", default=10, show_default=True, help="Machines held at most.")
@click.option("--tag", "-t", "tags", multiple=True, help="A tag for the machines (repeatable).")
@click.option("--slots", default=1, show_default=True, help="Commands one machine runs at once.")
@click.option(
    "--idle-timeout",
    default=60.0,
    show_default=True,
    help="Seconds a machine may stay idle before it is released.",
)
@click.option("--timeout", type=float, help="Seconds each command may take on its machine.")
@click.option("--image", help="The image to boot (see the cloud's images).")
@click.option("--template", help="The size to boot (sim://: tiny, small, medium, large, xlarge).")
@click.option(
    "--progress",
    "interval",
    default=10.0,
    show_default=True,
    help="Seconds between progress lines when standard error is not a terminal (0: none).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per command and line.")
def run_pool(
    url: str,
    file: str | None,
    low: int,
    high: int,
    tags: tuple[str, ...],
    slots: int,
    idle_timeout: float,
    timeout: float | None,
    image: str | None,
    template: str | None,
    interval: float,
    as_json: bool,
) -> None:
    """Run the shell commands of FILE (one a line; none or - : standard input) on a pool
    of machines at URL, each on one machine, as many at once as the pool has slots.

    Blank lines and lines starting with # are skipped. The pool grows up to --max
    machines while commands wait and gives back machines idle for --idle-timeout
    seconds (keeping --min). A command whose machine is revoked or fails under it
    runs again on another; a command that exits non-zero is a result, never rerun.

    Each command's result is printed as it completes, one line each:

    \b
      line N: exit S on MACHINE: OUTPUT

    N is the command's line number in the input, S its exit status (or "killed by
    signal 9", or the error that stopped it), MACHINE the machine it ran on, OUTPUT
    its standard output (or, if empty, its standard error) in one line, cut after
    200 characters. --json prints one JSON object a line instead, with the whole
    output. A summary follows on standard error. The exit status is 1 if any
    command failed (exited non-zero, or could not run).

    \b
    Examples:
      aiores pool run sim:// commands.txt --max 20 --tag batch
      seq 100 | sed 's/^/sleep 1; echo /' | aiores pool run sim:// --min 2 --max 10
      aiores pool run 'sim://?preempt_after=5' jobs.txt --json | jq .exit_status

    Every option is checked before anything is acquired (exit status 2). Ctrl-C
    stops the commands still running, releases every machine of the pool and exits
    with status 130.
    """
    check_url(url)
    check_size(low, high, ("--min", "--max"))
    check_tags(tags)
    validate.count(slots, "--slots")
    idle = validate.seconds(idle_timeout, "--idle-timeout", zero=True)
    seconds = validate.timeout(timeout, "--timeout")
    every = validate.seconds(interval, "--progress", zero=True)
    desc = ComputeDescription(
        image=check_name(image, "--image"),
        template=check_name(template, "--template"),
        tags=frozenset(tags),
    )
    source, commands = _read_input(file)

    async def go() -> list[tuple[Command, RunResult]]:
        async with Session() as session:
            mine = session.pool(url, desc, min=low, max=high, slots=slots, idle_timeout=idle)
            try:
                async with mine:
                    return await _run(mine, commands, seconds, as_json, every)
            finally:
                _released(mine)

    results = run(go)
    _summary(results, source)
    if any(not result.ok for _, result in results):
        raise SystemExit(EXIT_FAILED)


async def _run(
    pool: Pool,
    commands: Sequence[Command],
    timeout: float | None,
    as_json: bool,
    interval: float,
) -> list[tuple[Command, RunResult]]:
    """Every command on ``pool``, each result printed as it completes."""
    progress = _Progress(pool, len(commands), interval)
    done: list[tuple[Command, RunResult]] = []
    async with TaskSet("pool-progress") as shown:
        shown.spawn(progress.show(), name="aiores-pool-progress")
        results = pool.map([c.text for c in commands], timeout=timeout)
        async with contextlib.aclosing(results):
            try:
                async for index, result in results:
                    command = commands[index]
                    done.append((command, result))
                    progress.done += 1
                    progress.failed += not result.ok
                    if as_json:
                        obj = _result_object(index, command, result)
                        click.echo(json.dumps(obj, sort_keys=True))
                    else:
                        click.echo(result_line(command, result))
            except asyncio.CancelledError:
                err.print(
                    f"interrupted: {len(done)} commands finished, "
                    f"{len(commands) - len(done)} stopped or not started; releasing "
                    f"{pool.stats().size} machines"
                )
                raise
    return done


def _released(pool: Pool) -> None:
    """Say on standard error whether the closed pool released every machine."""
    stats = pool.stats()
    if stats.size:
        err.print(
            f"aiores: {stats.size} machines of the pool may not have been released", style="red"
        )
    else:
        err.print(
            f"released every machine of the pool ({stats.revoked} revoked, "
            f"{stats.requeued} commands run again elsewhere)"
        )


def _summary(results: Sequence[tuple[Command, RunResult]], source: str) -> None:
    failed = [(c, r) for c, r in results if not r.ok]
    line = f"{len(results)} commands of {source}: {len(results) - len(failed)} ok, "
    line += f"{len(failed)} failed"
    if failed:
        line += ": " + ", ".join(f"line {c.line} ({_status(r)})" for c, r in failed[:10])
        if len(failed) > 10:
            line += f" and {len(failed) - 10} more"
    err.print(f"pool: {line}", style="red" if failed else "green")
