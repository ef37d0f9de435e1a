"""POSIX sh snippets run on the remote side (dash, bash, busybox sh).

Every value spliced into a script is quoted with :func:`shlex.quote` by the caller.
Signals go to a process group as ``kill -SIG -PGID`` (dash's ``kill`` takes no
``--``), falling back to the single pid where the process leads no group.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence

from aiores import BadParameter

__all__ = ["LIB", "command_text", "exports", "read_stdin", "stop_script", "wrap_command"]

#: Shell functions shared by the scripts: ``alive PID`` ignores zombies (a reaped
#: parent may never come for an orphan); ``sig SIG PID`` signals the group, else the
#: pid; ``stop PID TICKS`` sends TERM (and CONT, so a stopped group sees it), waits up
#: to TICKS tenths of a second for the leader to go, then KILLs what is left.
LIB = r"""alive() {
  kill -0 "$1" 2>/dev/null || return 1
  case $(cat "/proc/$1/stat" 2>/dev/null) in *") Z "*) return 1 ;; esac
  return 0
}
sig() { kill "-$1" "-$2" 2>/dev/null || kill "-$1" "$2" 2>/dev/null; }
nap() { sleep 0.1 2>/dev/null || sleep 1; }
stop() {
  sig TERM "$1"; sig CONT "$1"
  i=0
  while alive "$1" && [ "$i" -lt "$2" ]; do nap; i=$((i + 1)); done
  sig KILL "$1"
  return 0
}
"""


#: A name every POSIX shell takes for a variable (str.isalnum() would let "²" pass).
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)


def command_text(command: str | Sequence[str]) -> str:
    """A shell command line: a str as given, a sequence quoted argument by argument."""
    if isinstance(command, str):
        return command
    return shlex.join(command)


def exports(env: Mapping[str, str] | None) -> str:
    """``export NAME=value`` lines (sshd accepts few variables through env requests)."""
    if not env:
        return ""
    lines = []
    for name, value in env.items():
        if not _NAME.fullmatch(name):
            raise BadParameter(
                f"not a valid environment variable name: {name!r} (a portable name is "
                "ASCII letters, digits and _, not starting with a digit)"
            )
        lines.append(f"export {name}={shlex.quote(value)}\n")
    return "".join(lines)


def read_stdin(nbytes: int) -> str:
    """Shell words that print exactly the next ``nbytes`` bytes of standard input.

    One byte per read, so nothing meant for the command after it is consumed
    (``head -c`` may read ahead through stdio on some systems).
    """
    return f"dd bs=1 count={int(nbytes)} 2>/dev/null"


def wrap_command(command: str, env: Mapping[str, str] | None = None) -> tuple[str, bytes]:
    """The remote command line for ``command`` and what to send before its stdin.

    The login shell execs ``/bin/sh``, which prints its pid (which leads the process
    group: sshd starts each session with ``setsid``) and runs ``command``; signalling
    that group reaches everything the command started. ``env`` travels on standard
    input ahead of the command's own, never in the command line, which every user
    of the host can read with ``ps``.
    """
    preamble = exports(env).encode()
    inner = 'echo "$$"\n'
    if preamble:
        inner += f'eval "$({read_stdin(len(preamble))})"\n'
    return "exec /bin/sh -c " + shlex.quote(inner + command), preamble


def stop_script(pid: int, grace: float) -> str:
    """Stop process group ``pid``: TERM, up to ``grace`` seconds, then KILL."""
    ticks = max(1, round(grace * 10))
    return LIB + f"stop {int(pid)} {ticks}\n"
