"""POSIX sh snippets run on the remote side (dash, bash, busybox sh).

Every value spliced into a script is quoted once, where it is used, with
:mod:`aiores.adaptor.shell`.

A process is known by its pid together with its identity: its start time (field 22
of ``/proc/PID/stat``) and the host's boot id, recorded when it starts. A pid alone
may name another process by the time it is used (pids are reused), so nothing is
reported alive, and nothing signalled, on the pid alone:

- the recorded process itself (a zombie, too) is signalled through its group,
  ``kill -SIG -PGID`` (dash's ``kill`` takes no ``--``), or alone if it leads none;
- if its pid is free, its group may live on: Linux does not reuse a pid while a
  group of that number has members, so the group is signalled, on the same boot;
- if another process has its pid, or its identity was never recorded, nothing is.

Without procfs identities are ``-`` and cannot be checked: liveness falls back to
``kill -0`` and signals go to the group only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from aiores import BadParameter
from aiores.adaptor import shell

__all__ = [
    "LIB",
    "command_text",
    "exports",
    "identify",
    "parse_identity",
    "read_stdin",
    "stop_script",
    "wrap_command",
]


def identify(pid: str) -> str:
    """Shell lines that set ``_is`` and ``_ib`` to the start time and boot id of
    process ``pid`` (a shell word such as ``$$``; ``-`` where unknown) and ``_iz`` to
    its state letter: builtins only, no fork. The stat line's second field (the
    name) may hold spaces and parentheses: fields are counted after its last ``)``,
    so field 22 is the 20th. They change the positional arguments (``set --``).
    """
    return (
        f"_is=; _ib=-; _iz=\n"
        f'{{ read -r _is <"/proc/{pid}/stat"; '
        "read -r _ib </proc/sys/kernel/random/boot_id; } 2>/dev/null || :\n"
        "set -- ${_is##*) }\n"
        "if [ $# -ge 20 ]; then _is=${20}; _iz=$1; else _is=-; fi\n"
    )


#: Shell functions shared by the scripts. ``pstart PID`` prints ``START BOOT STATE``
#: (fails if there is no such process); ``alive PID START BOOT`` is true while that
#: very process runs (not a zombie: a reaped parent may never come for an orphan);
#: ``sig SIG PID START BOOT`` signals it as the module says; ``stop PID START BOOT
#: TICKS`` sends TERM (and CONT, so a stopped group sees it), waits up to TICKS
#: tenths of a second for the leader to go, then KILLs what is left, and fails if
#: the leader is still there five seconds later.
LIB = (
    r"""pstart() {
  if [ ! -e /proc/self/stat ]; then kill -0 "$1" 2>/dev/null && echo "- - ?"; return; fi
"""
    + identify("$1")
    + r"""  [ "$_is" != - ] && echo "$_is $_ib $_iz"
}
alive() {
  case $(pstart "$1") in
    "$2 $3 Z") return 1 ;;
    "$2 $3 "*) return 0 ;;
  esac
  return 1
}
sig() {
  if [ ! -e /proc/self/stat ]; then kill "-$1" "-$2" 2>/dev/null; return 0; fi
  [ "$3" = - ] && return 0
  _ip=$(pstart "$2")
  if [ -z "$_ip" ]; then
    _ib=-; { read -r _ib </proc/sys/kernel/random/boot_id; } 2>/dev/null
    [ "$_ib" = "$4" ] && kill "-$1" "-$2" 2>/dev/null
  elif [ "${_ip% *}" = "$3 $4" ]; then
    kill "-$1" "-$2" 2>/dev/null || kill "-$1" "$2" 2>/dev/null
  fi
  return 0
}
nap() { sleep 0.1 2>/dev/null || sleep 1; }
stop() {
  sig TERM "$1" "$2" "$3"; sig CONT "$1" "$2" "$3"
  i=0
  while alive "$1" "$2" "$3" && [ "$i" -lt "$4" ]; do nap; i=$((i + 1)); done
  sig KILL "$1" "$2" "$3"
  i=0
  while alive "$1" "$2" "$3"; do [ "$i" -lt 50 ] || return 1; nap; i=$((i + 1)); done
  return 0
}
"""
)

#: What a start time and a boot id look like (``-``: unknown).
_START = re.compile(r"-|[0-9]+", re.ASCII)
_BOOT = re.compile(r"-|[0-9A-Fa-f-]+", re.ASCII)


def parse_identity(line: bytes) -> tuple[int, str, str] | None:
    """``PID START BOOT`` (as the scripts print it), or None if ``line`` is not that."""
    fields = line.decode(errors="replace").split(" ")
    if (
        len(fields) == 3
        and fields[0].isascii()
        and fields[0].isdigit()
        and _START.fullmatch(fields[1])
        and _BOOT.fullmatch(fields[2])
    ):
        return int(fields[0]), fields[1], fields[2]
    return None


def command_text(command: str | Sequence[str]) -> str:
    """A shell command line: a str as given, a sequence quoted argument by argument."""
    if isinstance(command, str):
        return shell.check_text(command, "command")
    return shell.join(command, "command")


def exports(env: Mapping[str, str] | None) -> str:
    """``export NAME=value`` lines (sshd accepts few variables through env requests)."""
    if not env:
        return ""
    lines = []
    for name, value in env.items():
        if not shell.is_name(name):
            raise BadParameter(
                f"not a valid environment variable name: {name!r} (a portable name is "
                "ASCII letters, digits and _, not starting with a digit)"
            )
        lines.append(f"export {name}={shell.quote(value, f'env[{name!r}]')}\n")
    return "".join(lines)


def read_stdin(nbytes: int) -> str:
    """Shell words that print exactly the next ``nbytes`` bytes of standard input.

    One byte per read, so nothing meant for the command after it is consumed
    (``head -c`` may read ahead through stdio on some systems).
    """
    return f"dd bs=1 count={int(nbytes)} 2>/dev/null"


def wrap_command(command: str, env: Mapping[str, str] | None = None) -> tuple[str, bytes]:
    """The remote command line for ``command`` and what to send before its stdin.

    The login shell execs ``/bin/sh``, which prints its pid and identity (it leads
    the process group: sshd starts each session with ``setsid``) and runs
    ``command``; signalling
    that group reaches everything the command started. ``env`` travels on standard
    input ahead of the command's own, never in the command line, which every user
    of the host can read with ``ps``.
    """
    preamble = exports(env).encode()
    inner = identify("$$") + 'set --\necho "$$ $_is $_ib"\n'
    if preamble:
        inner += f'eval "$({read_stdin(len(preamble))})"\n'
    return "exec /bin/sh -c " + shell.quote(inner + command, "command"), preamble


def stop_script(pid: int, start: str, boot: str, grace: float) -> str:
    """Stop the process group process ``pid`` (of that start time and boot) leads:
    TERM, up to ``grace`` seconds, then KILL."""
    ticks = max(1, round(grace * 10))
    return LIB + f"stop {int(pid)} {shell.join([start, boot], 'identity')} {ticks}\n"
