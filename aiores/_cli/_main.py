"""The ``aiores`` group: built-in commands, then those of the ``aiores.commands`` group.

The machine commands (``provision``, ``ls``, ``run``, ``put``, ``get``,
``deprovision``) live in :mod:`aiores._cli._machines`; ``jobs``, ``recover`` and ``gc``
in :mod:`aiores._cli._admin`; ``pool`` in :mod:`aiores._cli._pool`. Packages add
commands through the entry point group ``aiores.commands``: its name is the
command's, its value a :class:`click.Command` (``aiores_sim`` adds ``demo`` and
``sim`` so). They are loaded only when named or listed; one that cannot be loaded
is reported on standard error and left out, and the other commands work as before.

The group also keeps every command's errors to one line on standard error: an aiores
error (exit status 1, or 2 for bad input), click's own usage errors (a missing
argument, an unknown option or command: exit status 2, click's message as is), and
a Ctrl-C that reaches it outside :func:`~aiores._cli._common.run` (exit status 130).
``--help``, and a group named without a command, print the help as before.
"""

from __future__ import annotations

import importlib.metadata
import sys
from typing import IO, Any, NoReturn

import click

from .. import __version__
from .._exceptions import AioresError
from ._admin import gc, jobs, recover
from ._common import EXIT_INTERRUPTED, err, fail
from ._machines import deprovision, get, ls, provision, put, run_command
from ._pool import pool

__all__ = ["COMMANDS_GROUP", "main"]

#: The entry point group through which packages add ``aiores`` commands.
COMMANDS_GROUP = "aiores.commands"


class _UsageLine(click.UsageError):
    """A usage error of click said in one line on standard error: ``aiores: <click's
    message> Try '<command> --help' for help.``"""

    def __init__(self, error: click.UsageError) -> None:
        super().__init__(error.format_message(), error.ctx)

    def show(self, file: IO[Any] | None = None) -> None:
        message = "; ".join(line.strip() for line in self.message.splitlines() if line.strip())
        if self.ctx is not None:
            message += f" Try '{self.ctx.command_path} --help' for help."
        err.print(f"aiores: {message}", style="red", soft_wrap=True)


def _one_line(error: click.UsageError) -> NoReturn:
    """Raise ``error`` as a one-line usage error (the help a group named without a
    command prints stays as it is)."""
    if isinstance(error, _UsageLine | click.exceptions.NoArgsIsHelpError):
        raise error
    raise _UsageLine(error) from error


class _AioresGroup(click.Group):
    """Built-in commands, then plugin commands loaded on first use."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._plugins: dict[str, click.Command | None] = {}  # name -> loaded, or broken

    def _entry_points(self) -> dict[str, list[importlib.metadata.EntryPoint]]:
        """Plugin commands by name (a built-in command keeps its name)."""
        found: dict[str, list[importlib.metadata.EntryPoint]] = {}
        for entry in importlib.metadata.entry_points(group=COMMANDS_GROUP):
            claims = found.setdefault(entry.name, [])
            if entry.name not in self.commands and entry.value not in {e.value for e in claims}:
                claims.append(entry)
        return {name: claims for name, claims in found.items() if claims}

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        # The options of ``aiores`` itself (an unknown one is a usage error).
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            _one_line(exc)

    def invoke(self, ctx: click.Context) -> Any:
        # Every command's aiores errors (also those raised building its arguments,
        # outside its coroutine) are one line and an exit status, never a traceback;
        # so are click's usage errors of every command (parsed in here).
        try:
            return super().invoke(ctx)
        except AioresError as exc:
            fail(exc)
        except click.UsageError as exc:
            _one_line(exc)
        except KeyboardInterrupt:  # outside run(), which says so itself
            err.print("aiores: interrupted", style="yellow")
            sys.exit(EXIT_INTERRUPTED)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._entry_points()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        if cmd_name not in self._plugins:
            claims = self._entry_points().get(cmd_name)
            if not claims:
                return None
            self._plugins[cmd_name] = _load(cmd_name, claims)
        return self._plugins[cmd_name]


def _load(name: str, claims: list[importlib.metadata.EntryPoint]) -> click.Command | None:
    """The command ``name`` of its entry point, or None after saying why not."""
    if len(claims) > 1:
        _report(f"the command {name!r} is claimed by " + ", ".join(e.value for e in claims))
        return None
    (entry,) = claims
    try:
        command = entry.load()
    except Exception as exc:  # a broken plugin must not take the other commands down
        why = f"{type(exc).__name__}: {exc}"
        _report(f"the command {name!r} ({entry.value}) could not be loaded: {why}")
        return None
    if not isinstance(command, click.Command):
        _report(f"the command {name!r} ({entry.value}) is not a click command")
        return None
    return command


def _report(problem: str) -> None:
    err.print(f"aiores: {problem}", style="yellow", soft_wrap=True)


@click.group(cls=_AioresGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="aiores")
def main() -> None:
    """Asyncio-native orchestration of compute.

    State (the journal of what was acquired and submitted, keys, the simulated
    cloud) lives in $AIORES_STATE_DIR, else the platform's user state directory.
    Machines outlive the command that provisioned them; later commands find them
    through the journal and select them by tag.

    Exit statuses: 0 done, 1 the operation failed (a host, a backend, a timeout,
    an unknown id), 2 bad input (nothing was done), 130 interrupted by Ctrl-C.

    \b
    Examples:
      aiores provision sim:// --count 4 --tag web --wait
      aiores ls --tag web
      aiores run --tag web -- uname -n
      aiores deprovision --tag web
      aiores gc --yes
    """


main.add_command(provision)
main.add_command(ls)
main.add_command(run_command)
main.add_command(put)
main.add_command(get)
main.add_command(deprovision)
main.add_command(jobs)
main.add_command(recover)
main.add_command(gc)
main.add_command(pool)
