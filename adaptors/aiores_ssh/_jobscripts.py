"""The remote side of SSH jobs: the job directory layout and the scripts that use it.

Each job lives in ``$HOME/.aiores/jobs/<id>/``::

    token        the idempotency token it was submitted under
    limit        bytes of captured output kept per stream
    description.json   the JobDescription (for people and tools reading the host;
                 environment values left out)
    env          the job's environment (``export`` lines), until the wrapper read it
    stdin        the job's standard input
    run.sh       the wrapper: records its pid, waits for ``release`` if the job is
                 held, runs the program unless a cancel came first, then writes ``exit``
    held         present if the job was submitted held
    gate         a FIFO a held job's wrapper blocks on (absent where ``mkfifo``
                 failed: the wrapper then looks for ``release`` once a second)
    release      made by a release: a held job's wrapper goes on once it exists (a
                 release then writes a line into ``gate`` to wake it)
    pid          ``PID START BOOT`` of the wrapper, which leads the job's process
                 group: its pid, start time and the boot it runs in (see
                 :mod:`aiores_ssh._scripts`: a pid alone is never trusted); written
                 by the wrapper itself and by the submit command, whichever is first
    stdout, stderr     captured output (absent when the description names files)
    end          made (atomically, by ``mkdir``) by whichever comes first: the wrapper
                 when the program ended, or a cancel
    exit         the program's exit code, written when it ends
    canceled     present if a cancel came before the program ended
    suspended    present while the job is stopped (SIGSTOP)

A cancel can come at any point of the start-up (a cancelled submit is undone by one),
so the wrapper and a cancel meet as in Dekker's protocol: the wrapper records its pid,
then looks for ``end``; a cancel makes ``end``, then reads the pid. Whichever comes
second sees the other: either the cancel signals the wrapper, or the wrapper sees the
cancel and never starts the program. A cancel that finds no pid is therefore final:
a wrapper that starts later (its submit command was cut off, or is still running)
exits at once.

A held job's wrapper opens ``gate`` for reading and writing (so neither it nor a
release blocks in ``open``), then looks for ``release`` and reads a line from the
gate until it exists: a release makes the marker first and writes into the gate
second, so a wrapper that looked too early is woken, and one that opens the gate
later sees the marker. A cancel ends a held wrapper like any other (its TERM comes
before the wrapper sets its trap), and a cancel that claimed ``end`` first keeps it
from ever starting the program, as above.

A submit command whose end could not be confirmed (its stop failed, its connection
broke) may still make the job directory: :func:`claim_script` makes the directory
itself and claims ``end`` in it, like a cancel, so the job never starts its program
whatever the submit command still does (the wrapper, when it starts, sees the claim).

Everything aiores needs to control or reconnect to a job is in that directory, so a
fresh client (another process, after a restart) finds it by id. The directory and
its files are the user's alone (umask 077); environment values reach ``env`` over
the channel's input, never through a command line other users could read.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import asdict

from aiores import JobDescription
from aiores.adaptor import shell

from ._scripts import LIB, exports, identify, read_stdin

__all__ = [
    "JOBS_DIR",
    "cancel_script",
    "claim_script",
    "describe_script",
    "find_script",
    "reap_script",
    "release_script",
    "resume_script",
    "submit_script",
    "suspend_script",
]

#: Where job directories live, relative to the login directory.
JOBS_DIR = ".aiores/jobs"
#: Exit codes the control scripts use to report a condition.
MISSING = 3
FINISHED = 4
UNSTOPPED = 5
NOT_HELD = 6

_JOBS = f'"$HOME"/{JOBS_DIR}'


#: Where a held job's wrapper waits for its release (see the module).
_HOLD = (
    'if [ -p "$d/gate" ]; then exec 3<>"$d/gate"; fi\n'
    'while [ ! -e "$d/release" ]; do\n'
    '  [ -d "$d/end" ] && exit 0\n'
    '  if [ -p "$d/gate" ]; then read -r _g <&3 || sleep 1; else sleep 1; fi\n'
    "done\n"
    "exec 3<&-\n"
)


def _wrapper(desc: JobDescription, hold: bool = False) -> str:
    """run.sh: run the program in the job's group, record its exit code.

    The description's paths become shell variables at the top (quoted once, by
    :func:`aiores.adaptor.shell.assign`); the rest of the script refers to them only
    as ``"$name"``. A relative working directory, like a command over SSH, starts
    from the login directory.
    """
    owner = "JobDescription"
    values: dict[str, tuple[str, str]] = {}
    if desc.stdout:
        values["o"] = (desc.stdout, f"{owner}.stdout")
    if desc.stderr:
        values["r"] = (desc.stderr, f"{owner}.stderr")
    if desc.working_directory:
        values["w"] = (desc.working_directory, f"{owner}.working_directory")
    program = shell.join([desc.executable, *desc.arguments], f"{owner}.executable/arguments")
    cd = 'cd "$HOME" 2>/dev/null || cd /\n'
    if desc.working_directory:
        cd += (
            'case $w in -*) w="./$w" ;; esac\n'
            'cd "$w" 2>/dev/null || {\n'
            '  printf \'aiores: cannot enter working directory %s\\n\' "$w" >>"$r"\n'
            '  mkdir "$d/end" 2>/dev/null\n'
            '  echo 126 >"$d/exit.tmp"; mv "$d/exit.tmp" "$d/exit"; exit 126\n'
            "}\n"
        )
    # First the pid, then the look for a cancel's claim (see the module): a cancel
    # either finds the pid and signals this group, or is seen here. Until the trap is
    # set a TERM ends the wrapper. The trap then keeps it alive through a TERM sent to
    # the whole group, so it can record the program's status; the program's subshell
    # gets the default action, and looks for the claim once more before it execs (a
    # TERM the trap took before the fork). The environment is read and its file
    # removed at once, and applied only in the program's subshell, where it cannot
    # change the wrapper's own variables.
    return (
        "d=$(pwd)\n"
        + identify("$$")
        + 'set --\n{ echo "$$ $_is $_ib" >"$d/pid.w" && mv -f "$d/pid.w" "$d/pid"; } || exit 1\n'
        '[ -d "$d/end" ] && exit 0\n'
        + (_HOLD if hold else "")
        + shell.assign(values)
        + ("" if desc.stdout else 'o="$d/stdout"\n')
        + ("" if desc.stderr else 'r="$d/stderr"\n')
        + "trap ': > \"$d/terminated\"' TERM\n"
        'e=$(cat "$d/env" 2>/dev/null) || e=\n'
        'rm -f "$d/env"\n'
        + cd
        + f'([ -d "$d/end" ] && exit 143; eval "$e"; exec {program}) <"$d/stdin" >"$o" 2>"$r"\n'
        "rc=$?\n"
        # Claim the end: a cancel that comes later finds the job finished.
        'mkdir "$d/end" 2>/dev/null\n'
        'echo "$rc" >"$d/exit.tmp" && mv "$d/exit.tmp" "$d/exit"\n'
    )


def submit_script(
    job_id: str, token: str, desc: JobDescription, stdin: bytes | None, hold: bool = False
) -> tuple[str, bytes]:
    """The script that makes the job directory and starts the job detached (it prints
    the job's pid), and what to send on its input: the job's environment, then the
    job's standard input. A ``hold`` job's wrapper waits for its release."""
    d = f"{_JOBS}/{job_id}"
    env = exports(desc.environment).encode()
    shown = asdict(desc) | {"stdin": None, "environment": dict.fromkeys(desc.environment)}
    description = json.dumps(shown, default=str, sort_keys=True)
    script = (
        "set -e\numask 077\n"
        f"mkdir -p {d}\ncd {d}\n"
        f"printf '%s\\n' {shell.quote(token, 'token')} >token\n"
        f"printf '%s\\n' {desc.capture_limit} >limit\n"
        f"printf '%s\\n' {shell.quote(description, 'JobDescription')} >description.json\n"
        + (f"{read_stdin(len(env))} >env\n" if env else "")
        + ("cat >stdin\n" if stdin is not None else ": >stdin\n")
        + (": >held\nmkfifo gate 2>/dev/null || :\n" if hold else "")
        + f"printf '%s' {shell.quote(_wrapper(desc, hold), 'JobDescription')} >run.sh\n"
        "if command -v setsid >/dev/null 2>&1; then\n"
        "  setsid /bin/sh run.sh </dev/null >/dev/null 2>&1 &\n"
        "elif command -v perl >/dev/null 2>&1; then\n"
        "  perl -e 'setpgrp(0, 0); exec @ARGV' /bin/sh run.sh </dev/null >/dev/null 2>&1 &\n"
        "else\n"
        "  /bin/sh run.sh </dev/null >/dev/null 2>&1 &\n"
        "fi\n"
        # Its identity is read at once, with builtins only: nothing has reaped it yet.
        "p=$!\n" + identify("$p") + 'set --\necho "$p $_is $_ib" >pid.tmp && mv pid.tmp pid\n'
        'echo "$p"\n'
    )
    return script, env + (stdin or b"")


def describe_script(
    ids: Sequence[str] | None, output_for: Collection[str] = (), budget: int = 0
) -> str:
    """One line per job (``J id pid alive exit canceled suspended held token``;
    ``held``: submitted held and not released).

    Each finished job named in ``output_for`` has its captured streams follow its
    line as ``O stream size sent`` and then exactly ``sent`` bytes, as long as the
    output sent so far stays within ``budget`` bytes (the first job's always goes);
    a job whose output would pass it gets a line ``P`` instead: ask again for it.
    ``ids=None``: every job. The ids are checked (``[A-Za-z0-9_-]+``) by the caller.
    """
    names = shell.join(ids, "job id") if ids is not None else "*"
    setup = show = ""
    if output_for:
        setup = shell.assign({"w": (" ".join(output_for), "job id")}) + "b=0\n"
        show = (
            '  case " $w " in *" $id "*) ;; *) continue ;; esac\n'
            '  [ -n "$e" ] || { [ "$a" = 0 ] && [ -n "$p" ]; } || continue\n'
            '  l=$(cat "$id/limit" 2>/dev/null) || l=0\n'
            "  k=0; m=\n"
            "  for f in stdout stderr; do\n"
            '    [ -f "$id/$f" ] || continue\n'
            '    n=$(wc -c <"$id/$f"); n=$((n + 0))\n'
            '    if [ "$n" -gt "$l" ]; then j=$l; else j=$n; fi\n'
            '    k=$((k + j)); m="$m $f:$n:$j"\n'
            "  done\n"
            f'  if [ "$b" -gt 0 ] && [ $((b + k)) -gt {int(budget)} ]; then echo P; continue; fi\n'
            "  b=$((b + k))\n"
            "  for x in $m; do\n"
            "    f=${x%%:*}; x=${x#*:}; n=${x%%:*}; j=${x#*:}\n"
            '    printf \'O %s %s %s\\n\' "$f" "$n" "$j"\n'
            '    head -c "$j" "$id/$f"\n'
            "  done\n"
        )
    return (
        LIB + f"cd {_JOBS} 2>/dev/null || exit 0\n" + setup + f"for id in {names}; do\n"
        '  [ -d "$id" ] || continue\n'
        '  p=; st=; bt=; { read -r p st bt <"$id/pid"; } 2>/dev/null\n'
        '  a=0; [ -n "$p" ] && alive "$p" "$st" "$bt" && a=1\n'
        '  e=$(cat "$id/exit" 2>/dev/null) || e=\n'
        '  c=0; [ -e "$id/canceled" ] && c=1\n'
        '  s=0; [ -e "$id/suspended" ] && s=1\n'
        '  h=0; [ -e "$id/held" ] && [ ! -e "$id/release" ] && h=1\n'
        '  t=$(cat "$id/token" 2>/dev/null) || t=\n'
        '  printf \'J %s %s %s %s %s %s %s %s\\n\' "$id" "${p:--}" "$a" "${e:--}" '
        '"$c" "$s" "$h" "${t:--}"\n' + show + "done\n"
    )


def find_script(token: str) -> str:
    """Ids of the jobs submitted under ``token``, one a line."""
    return (
        f"cd {_JOBS} 2>/dev/null || exit 0\n"
        "for id in *; do\n"
        f'  [ "$(cat "$id/token" 2>/dev/null)" = {shell.quote(token, "token")} ] && echo "$id"\n'
        "done\nexit 0\n"
    )


_READ_PID = 'p=; st=; bt=; { read -r p st bt <"$d/pid"; } 2>/dev/null\n'


def _job(job_id: str) -> str:
    return (
        LIB
        + f"d={_JOBS}/{shell.quote(job_id, 'job id')}\n"
        + f'[ -d "$d" ] || exit {MISSING}\n'
        + _READ_PID
    )


def cancel_script(job_id: str, grace: float) -> str:
    """Mark the job cancelled; TERM its group, KILL after ``grace`` seconds.

    A job that already ended is left as it is (exit ``FINISHED``): one whose wrapper
    is gone, or one whose wrapper claimed the end first. Only a cancel that claims
    it marks the job cancelled, so an exit code recorded before the cancel stands.

    The pid is read again once the end is claimed: a wrapper that recorded it before
    it could see the claim is signalled; one that had not will see the claim and
    never start the program. Exits ``UNSTOPPED`` if the wrapper still runs after the
    KILL.
    """
    return _job(job_id) + _cancel(grace)


def claim_script(job_id: str, token: str, grace: float) -> str:
    """Cancel job ``job_id`` of ``token`` whether or not its directory exists yet.

    For a submit command that may still be running (see the module): the directory
    is made (with the token, so ``find`` names it) if it is not there, and its end
    claimed as :func:`cancel_script` does. Exits as that does (never ``MISSING``).
    """
    return (
        LIB
        + "umask 077\n"
        + f"d={_JOBS}/{shell.quote(job_id, 'job id')}\n"
        + 'mkdir -p "$d" || exit 1\n'
        + f'[ -s "$d/token" ] || printf \'%s\\n\' {shell.quote(token, "token")} >"$d/token"\n'
        + _READ_PID
        + _cancel(grace)
    )


def _cancel(grace: float) -> str:
    ticks = max(1, round(grace * 10))
    return (
        f'[ -e "$d/exit" ] && exit {FINISHED}\n'
        + f'[ -n "$p" ] && ! alive "$p" "$st" "$bt" && exit {FINISHED}\n'
        + f'mkdir "$d/end" 2>/dev/null || exit {FINISHED}\n'
        + ': >"$d/canceled"\n'
        + _READ_PID
        + f'[ -n "$p" ] && {{ stop "$p" "$st" "$bt" {ticks} || exit {UNSTOPPED}; }}\n'
        + 'rm -f "$d/suspended"\nexit 0\n'
    )


def release_script(job_id: str) -> str:
    """Let a held job start: make ``release``, then wake the wrapper through ``gate``.

    Exits ``NOT_HELD`` if the job was not submitted held or is released already,
    ``FINISHED`` if it ended (or was cancelled) first.
    """
    return (
        _job(job_id)
        + f'{{ [ -e "$d/held" ] && [ ! -e "$d/release" ]; }} || exit {NOT_HELD}\n'
        + f'[ -d "$d/end" ] && exit {FINISHED}\n'
        + f'[ -n "$p" ] && ! alive "$p" "$st" "$bt" && exit {FINISHED}\n'
        + ': >"$d/release"\n'
        + 'if [ -p "$d/gate" ]; then { echo >&3; } 3<>"$d/gate" 2>/dev/null || :; fi\n'
        + "exit 0\n"
    )


#: Exit ``FINISHED`` unless the job's program may be running (started, not ended, not held).
_NOT_RUNNING = (
    f'{{ [ -e "$d/exit" ] || [ -z "$p" ] || ! alive "$p" "$st" "$bt"; }} && exit {FINISHED}\n'
    f'[ -e "$d/held" ] && [ ! -e "$d/release" ] && exit {FINISHED}\n'
)


def suspend_script(job_id: str) -> str:
    """SIGSTOP the job's group and mark it suspended."""
    return _job(job_id) + _NOT_RUNNING + 'sig STOP "$p" "$st" "$bt"\n: >"$d/suspended"\n'


def resume_script(job_id: str) -> str:
    """SIGCONT the job's group and clear the suspended mark."""
    return _job(job_id) + _NOT_RUNNING + 'sig CONT "$p" "$st" "$bt"\nrm -f "$d/suspended"\n'


def reap_script(job_id: str) -> str:
    """Remove a finished job's directory."""
    return (
        _job(job_id)
        + f'[ -n "$p" ] && alive "$p" "$st" "$bt" && [ ! -e "$d/exit" ] && exit {FINISHED}\n'
        + 'rm -rf "$d"\n'
    )
