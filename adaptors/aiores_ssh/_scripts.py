"""POSIX sh snippets run on the remote side (dash, bash, busybox sh).

Every value spliced into a script is quoted once, where it is used, with
:mod:`aiores.adaptor.shell`.

A command run over SSH is marked with a token in its environment and found by it
only when it must be stopped (:func:`mark_command`, :func:`stop_script`).

A job's process is known by its pid together with its identity: its start time (field 22
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
    "RUN_VAR",
    "command_text",
    "exports",
    "identify",
    "mark_command",
    "read_stdin",
    "stop_script",
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


#: The variable that marks the processes of one run: ``TOKEN.PGID`` (see :func:`mark_command`).
RUN_VAR = "AIORES_RUN"

#: What a run's token looks like (it is spliced into a pattern unquoted).
_TOKEN = re.compile(r"[0-9a-f]{8,64}", re.ASCII)


def mark_command(
    command: str, token: str, env: Mapping[str, str] | None = None, *, stdin: bool = True
) -> tuple[str, bytes]:
    """The remote command line for ``command`` and what to send before its stdin.

    The login shell (it leads the process group: sshd starts each session with
    ``setsid``) exports ``AIORES_RUN=TOKEN.PID`` with its own pid, then runs
    ``command`` itself: no extra exec, nothing printed. Every process the command
    starts inherits the variable; the shell's own command line holds the token too.
    Only when a run must be stopped does :func:`stop_script` look for the token.

    ``env`` travels on standard input ahead of the command's own, never in the
    command line, which every user of the host can read with ``ps``.

    With ``stdin`` False (the caller sends nothing on the channel) and no ``env``,
    the shell reads its standard input from ``/dev/null``: the command sees an empty
    input at once, and the caller need not send an EOF (one packet less per run).
    The preamble is then empty.
    """
    if not _TOKEN.fullmatch(token):
        raise BadParameter(f"not a run token: {token!r}")
    preamble = exports(env).encode() if env else b""
    # A hex token (checked above) is one shell word as it stands, so the mark in the
    # shell's command line reads "AIORES_RUN=TOKEN.$$", as stop_script looks for it.
    # The mark is set after the caller's env, which cannot undo it (an env named
    # AIORES_RUN would hide the run's processes from its stop).
    mark = f"{RUN_VAR}={token}.$$; export {RUN_VAR}\n"
    if preamble:
        head = f'eval "$({read_stdin(len(preamble))})"\n' + mark
    elif not stdin:
        head = mark + "exec </dev/null\n"
    else:
        head = mark
    return head + command, preamble


#: Shell functions that find and stop the processes of one run by its token.
#: ``groups`` prints the process groups of the live processes marked with the token
#: (``$_t``, a pattern that matches the mark but not itself): from ``/proc`` (every
#: process's environment, and the command line of the login shell that set it), or
#: without procfs from ``ps`` (command lines: the login shell's group). ``stoprun
#: TICKS`` sends TERM and CONT to those groups, waits up to TICKS tenths of a second
#: for them to go, then KILLs what is left; it returns 3 if it never found the run,
#: 1 if something is still there five seconds later.
_STOP_LIB = r"""_g=
groups() {
  _g=
  if [ -r /proc/self/environ ]; then
    for _f in $(grep -l -a -e "$_t" /proc/[0-9]*/environ /proc/[0-9]*/cmdline 2>/dev/null); do
      _p=${_f#/proc/}; _p=${_p%%/*}
      { read -r _s <"/proc/$_p/stat"; } 2>/dev/null || continue
      set -- ${_s##*) }
      [ "$1" = Z ] || [ "$3" -le 1 ] && continue
      case " $_g " in *" $3 "*) ;; *) _g="$_g $3" ;; esac
    done
  else
    for _p in $(ps -A -o pgid= -o args= 2>/dev/null | grep -e "$_t" |
      while read -r _q _r; do echo "$_q"; done); do
      [ "$_p" -le 1 ] && continue
      case " $_g " in *" $_p "*) ;; *) _g="$_g $_p" ;; esac
    done
  fi
  [ -n "$_g" ]
}
nap() { sleep 0.1 2>/dev/null || sleep 1; }
signal() { for _p in $_g; do kill "-$1" "-$_p" 2>/dev/null; done; return 0; }
stoprun() {
  i=0
  until groups; do [ "$i" -lt 10 ] || return 3; nap; i=$((i + 1)); done
  signal TERM; signal CONT
  i=0
  while groups && [ "$i" -lt "$1" ]; do nap; i=$((i + 1)); done
  i=0
  while groups; do signal KILL; [ "$i" -lt 50 ] || return 1; nap; i=$((i + 1)); done
  return 0
}
"""


def stop_script(token: str, grace: float) -> str:
    """Stop the processes of the run marked with ``token`` (see :func:`mark_command`):
    TERM to their process groups, up to ``grace`` seconds, then KILL. The script
    exits 0 once none is left, 3 if it found none (the command never started, or
    ended), 1 if some outlived the KILL."""
    if not _TOKEN.fullmatch(token):
        raise BadParameter(f"not a run token: {token!r}")
    ticks = max(1, round(grace * 10))
    # "[.]": the pattern matches the mark, never the text of this script or grep's
    # own arguments, which hold the pattern.
    mark = shell.assign({"_t": (f"{RUN_VAR}={token}[.]", "token")})
    return mark + _STOP_LIB + f"stoprun {ticks}\n"
