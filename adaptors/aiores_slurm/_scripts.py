"""What the Slurm adaptor sends to the login host, and how it reads the answers.

Every value that reaches a shell is quoted here once, with
:mod:`aiores.adaptor.shell`. The shell commands are small: ``sbatch`` with a batch
script on its standard input, one ``squeue`` for many ids, and one ``sh`` loop that
reads the files finished jobs left in the job files directory.

A job's files live in the job files directory (``$HOME/.aiores/slurm`` on the login
host unless the URL's ``dir=`` names another; it must be shared with the compute
nodes, as home directories are on clusters), named by the job's Slurm id ``<id>``:

- ``<id>.exit``: the program's exit status, written by the batch script when the
  program ended: how a job is read once Slurm forgot it (after ``MinJobAge``) on a
  cluster without accounting.
- ``<id>.out`` / ``<id>.err``: captured output (when the description names no file),
  ``<id>.limit``: the capture limit, ``<id>.slurm``: Slurm's own messages
  (``slurmstepd: error: *** JOB 12 CANCELLED DUE TO TIME LIMIT ***``).
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aiores import JobDescription, JobState
from aiores.adaptor import JobInfo, shell, truncation_marker

__all__ = [
    "COMMENT_PREFIX",
    "SQUEUE_FIELDS",
    "STATES",
    "batch_script",
    "exit_code",
    "files_script",
    "is_job_id",
    "job_dir_assignment",
    "parse_files",
    "parse_squeue",
    "sbatch_command",
    "squeue_command",
    "state_of",
]

#: What ``--comment`` holds before the submit's idempotency token.
COMMENT_PREFIX = "aiores:"

#: Slurm's job states (long names, as squeue's ``%T``/``State`` prints them, and the
#: compact codes of ``%t``) and what they are in aiores. A pending job whose reason
#: says it is held is HELD (see :func:`state_of`).
STATES: Mapping[str, JobState] = {
    "PENDING": JobState.QUEUED,
    "PD": JobState.QUEUED,
    "CONFIGURING": JobState.QUEUED,
    "CF": JobState.QUEUED,
    "REQUEUED": JobState.QUEUED,
    "RQ": JobState.QUEUED,
    "REQUEUE_FED": JobState.QUEUED,
    "RF": JobState.QUEUED,
    "REQUEUE_HOLD": JobState.HELD,
    "RH": JobState.HELD,
    "RUNNING": JobState.RUNNING,
    "R": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,
    "CG": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "SI": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "SO": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
    "RS": JobState.RUNNING,
    "SUSPENDED": JobState.SUSPENDED,
    "S": JobState.SUSPENDED,
    "STOPPED": JobState.SUSPENDED,
    "ST": JobState.SUSPENDED,
    "COMPLETED": JobState.DONE,
    "CD": JobState.DONE,
    "FAILED": JobState.FAILED,
    "F": JobState.FAILED,
    "TIMEOUT": JobState.FAILED,
    "TO": JobState.FAILED,
    "NODE_FAIL": JobState.FAILED,
    "NF": JobState.FAILED,
    "OUT_OF_MEMORY": JobState.FAILED,
    "OOM": JobState.FAILED,
    "BOOT_FAIL": JobState.FAILED,
    "BF": JobState.FAILED,
    "DEADLINE": JobState.FAILED,
    "DL": JobState.FAILED,
    "PREEMPTED": JobState.FAILED,
    "PR": JobState.FAILED,
    "SPECIAL_EXIT": JobState.FAILED,
    "SE": JobState.FAILED,
    "CANCELLED": JobState.CANCELED,
    "CA": JobState.CANCELED,
    "REVOKED": JobState.CANCELED,
    "RV": JobState.CANCELED,
}

#: Pending reasons that mean "held until released".
HELD_REASONS = frozenset({"JobHeldUser", "JobHeldAdmin", "held"})

#: squeue's ``--Format`` fields, in order, each ending at ``|``; the comment comes
#: last, so a ``|`` in a comment (not one of ours) cannot shift the others.
SQUEUE_FIELDS = ("JobID", "State", "Reason", "exit_code", "Partition", "Name", "Comment")

_JOB_ID = re.compile(r"\d+(_\d+)?", re.ASCII)


def job_dir_assignment(directory: str | None) -> str:
    """``D=<the job files directory>`` for a shell script (``$HOME/...`` by default)."""
    if directory is None:
        return 'D="$HOME/.aiores/slurm"\n'
    return shell.assign({"D": (directory, "the dir= option of the slurm URL")})


def is_job_id(value: str) -> bool:
    """Whether ``value`` is a Slurm job id (``12``, or an array task ``12_3``)."""
    return _JOB_ID.fullmatch(value) is not None


def batch_script(description: JobDescription, directory: str | None) -> str:
    """The batch script sbatch reads: runs the program, records its exit status.

    The program runs as a child of the script (not ``exec``'d) so that its status is
    written to ``<id>.exit`` when it ends, whichever way it ends; the script exits
    with that status, which Slurm records as the job's exit code.
    """
    d = description
    what = "JobDescription"
    lines = ["#!/bin/sh", job_dir_assignment(directory).rstrip("\n")]
    lines.append('J="${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}"')
    lines.append('J="${J:-$SLURM_JOB_ID}"')
    lines.append(
        '[ -n "$SLURM_ARRAY_TASK_ID" ] && export AIORES_ARRAY_INDEX="$SLURM_ARRAY_TASK_ID"'
    )
    for name, value in d.environment.items():
        lines.append(f"export {name}={shell.quote(value, f'{what}.environment[{name!r}]')}")
    if d.stdout is None or d.stderr is None:
        lines.append(f'printf "%s\\n" {d.capture_limit} > "$D/$J.limit"')
    program = shell.join([d.executable, *d.arguments], f"{what}.arguments")
    out = '"$D/$J.out"' if d.stdout is None else shell.quote(d.stdout, f"{what}.stdout")
    err = '"$D/$J.err"' if d.stderr is None else shell.quote(d.stderr, f"{what}.stderr")
    data = d.stdin_bytes
    # Slurm TERMs the whole job (cancel, time limit): the script outlives its program
    # to record its status (a trap with a handler, so the program keeps TERM's default).
    lines.append("trap 'caught=TERM' TERM")
    if data:
        encoded = base64.b64encode(data).decode()
        lines.append(f"printf '%s' {encoded} | base64 -d | {program} > {out} 2> {err}")
    else:
        lines.append(f"{program} < /dev/null > {out} 2> {err}")
    lines.append("rc=$?")
    lines.append('printf "%s\\n" "$rc" > "$D/$J.exit.tmp" && mv -f "$D/$J.exit.tmp" "$D/$J.exit"')
    lines.append('exit "$rc"')
    return "\n".join(lines) + "\n"


def sbatch_options(description: JobDescription, token: str, *, hold: bool) -> list[str]:
    """sbatch's options for ``description`` (each one shell word once quoted)."""
    d = description
    options = [
        "--parsable",
        f"--comment={COMMENT_PREFIX}{token}",
        f"--job-name={d.name or 'aiores'}",
    ]
    if d.working_directory is not None:
        options.append(f"--chdir={d.working_directory}")
    if d.queue is not None:
        options.append(f"--partition={d.queue}")
    if d.project is not None:
        options.append(f"--account={d.project}")
    if d.walltime is not None:
        # Slurm counts time limits in minutes: at least one, never less than asked.
        options.append(f"--time={max(1, math.ceil(d.walltime / 60))}")
    if d.processes is not None:
        options.append(f"--ntasks={d.processes}")
    if d.cores is not None:
        options.append(f"--cpus-per-task={d.cores}")
    if d.memory is not None:
        options.append(f"--mem={d.memory}M")
    if hold:
        options.append("--hold")
    return options


def sbatch_command(
    description: JobDescription,
    token: str,
    directory: str | None,
    *,
    hold: bool,
    array: str | None = None,
) -> str:
    """The shell command that submits: makes the job files directory, checks the
    working directory, runs sbatch (script on standard input).

    Exit 66: the working directory does not exist (nothing was submitted).
    """
    options = sbatch_options(description, token, hold=hold)
    if array is not None:
        options.append(f"--array={array}")
    slurm_out = '"$D/%A_%a.slurm"' if array is not None else '"$D/%j.slurm"'
    lines = [job_dir_assignment(directory).rstrip("\n"), 'mkdir -p "$D" || exit 1']
    if description.working_directory is not None:
        wd = shell.quote(description.working_directory, "JobDescription.working_directory")
        lines.append(f"[ -d {wd} ] || exit 66")
    words = shell.join(options, "JobDescription")
    lines.append(f"exec sbatch {words} --output={slurm_out} --error={slurm_out}")
    return "\n".join(lines) + "\n"


def squeue_command(ids: Sequence[str] | None) -> list[str]:
    """One squeue for ``ids`` (None: this user's jobs), finished ones included."""
    fmt = ",".join(f"{field}:|" for field in SQUEUE_FIELDS)
    argv = ["squeue", "--noheader", "--states=all", f"--Format={fmt}"]
    if ids is None:
        argv.append("--me")
    else:
        argv.append(f"--jobs={','.join(ids)}")
    return argv


def exit_code(raw: int) -> int:
    """A wait status as Slurm reports it (``768``) as an aiores exit code (3;
    killed by signal n: -n)."""
    signal = raw & 0x7F
    return -signal if signal else (raw >> 8) & 0xFF


def state_of(word: str, reason: str) -> JobState:
    """The aiores state of Slurm state ``word`` (long or compact) and its reason."""
    base = word.split()[0].rstrip("+") if word else ""
    state = STATES.get(base)
    if state is None:
        return JobState.QUEUED  # a state this table does not know yet: not final
    if state is JobState.QUEUED and reason in HELD_REASONS:
        return JobState.HELD
    return state


@dataclass(frozen=True, slots=True)
class Row:
    """One squeue line."""

    id: str
    state: str
    reason: str
    raw_exit: int
    partition: str
    name: str
    comment: str

    @property
    def token(self) -> str | None:
        if self.comment.startswith(COMMENT_PREFIX):
            return self.comment[len(COMMENT_PREFIX) :]
        return None

    def info(self) -> JobInfo:
        state = state_of(self.state, self.reason)
        reason = "" if self.reason in ("None", "") else self.reason
        detail = f"{self.state} ({reason})" if reason else self.state
        code: int | None = None
        if state in (JobState.DONE, JobState.FAILED) or (
            state is JobState.CANCELED and self.raw_exit
        ):
            code = exit_code(self.raw_exit)
        return JobInfo(
            id=self.id,
            state=state,
            state_detail=detail,
            exit_code=code,
            token=self.token,
            extra={
                "slurm_state": self.state,
                "reason": reason,
                "partition": self.partition,
                "name": self.name,
            },
        )


def _expand(job_id: str) -> list[str]:
    """Ids of an squeue id: ``12``, ``12_3``, or pending tasks ``12_[0-3,7%2]``."""
    if "_[" not in job_id:
        return [job_id]
    base, _, spec = job_id.partition("_[")
    spec = spec.rstrip("]").split("%", 1)[0]
    ids: list[str] = []
    for part in spec.split(","):
        if not part:
            continue
        low, _, rest = part.partition("-")
        high, _, step = rest.partition(":")
        if not high:
            ids.append(f"{base}_{int(low)}")
            continue
        ids.extend(f"{base}_{i}" for i in range(int(low), int(high) + 1, int(step or 1)))
    return ids


def parse_squeue(text: str) -> list[Row]:
    """The rows of :func:`squeue_command`'s output (pending array tasks expanded)."""
    rows: list[Row] = []
    width = len(SQUEUE_FIELDS)
    for line in text.splitlines():
        fields = line.split("|", width - 1)
        if len(fields) < width:
            continue
        job_id, state, reason, raw, partition, name, comment = fields
        comment = comment.removesuffix("|")
        raw_exit = int(raw) if raw.strip().isdigit() else 0
        for one in _expand(job_id.strip()):
            rows.append(Row(one, state.strip(), reason.strip(), raw_exit, partition, name, comment))
    return rows


def files_script(ids: Sequence[str], directory: str | None, outputs: Sequence[str]) -> str:
    """A script printing, per id, its recorded exit status and (for ``outputs``) its
    captured output, cut at its capture limit.

    Per id: ``J <id> <exit or -> <has files 0/1>``, then for each captured stream
    of an id in ``outputs``: ``O <stream> <size> <sent>``, the ``sent`` bytes in
    base64 (command runners hand back text) and a line ``.``.
    """
    for job_id in (*ids, *outputs):
        if not is_job_id(job_id):
            raise ValueError(f"not a Slurm job id: {job_id!r}")
    want = " ".join(outputs)
    return (
        job_dir_assignment(directory)
        + f"want=' {want} '\n"
        + f"for j in {' '.join(ids)}; do\n"
        + '  e=-; [ -r "$D/$j.exit" ] && e=$(cat "$D/$j.exit")\n'
        + '  k=0; [ -e "$D/$j.slurm" ] || [ -e "$D/$j.exit" ] && k=1\n'
        + '  echo "J $j ${e:--} $k"\n'
        + '  case "$want" in *" $j "*) ;; *) continue ;; esac\n'
        + '  lim=8388608; [ -r "$D/$j.limit" ] && lim=$(cat "$D/$j.limit")\n'
        + "  for s in out err; do\n"
        + '    f="$D/$j.$s"; [ -r "$f" ] || continue\n'
        + '    n=$(wc -c < "$f"); n=$((n)); m=$n; [ "$m" -gt "$lim" ] && m=$lim\n'
        + '    echo "O $s $n $m"; head -c "$m" "$f" | base64; echo .\n'
        + "  done\n"
        + "done\n"
    )


@dataclass(slots=True)
class Files:
    """What :func:`files_script` found for one id."""

    exit: int | None = None
    known: bool = False
    stdout: bytes | None = None
    stderr: bytes | None = None


def parse_files(text: str) -> dict[str, Files]:
    """Read :func:`files_script`'s output."""
    found: dict[str, Files] = {}
    current: Files | None = None
    lines = iter(text.splitlines())
    for line in lines:
        fields = line.split(" ")
        if fields[0] == "J" and len(fields) == 4:
            exit_text = fields[2]
            current = found[fields[1]] = Files(
                exit=int(exit_text) if exit_text.lstrip("-").isdigit() else None,
                known=fields[3] == "1",
            )
        elif fields[0] == "O" and len(fields) == 4 and current is not None:
            size, sent = int(fields[2]), int(fields[3])
            encoded = []
            for chunk_line in lines:
                if chunk_line == ".":
                    break
                encoded.append(chunk_line)
            chunk = base64.b64decode("".join(encoded))
            if size > sent:
                chunk += truncation_marker(sent, size - sent)
            if fields[1] == "out":
                current.stdout = chunk
            else:
                current.stderr = chunk
    return found
