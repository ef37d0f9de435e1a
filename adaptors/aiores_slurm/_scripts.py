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

from aiores import BadParameter, JobDescription, JobState
from aiores.adaptor import JobInfo, MachineInfo, QueueInfo, shell, truncation_marker

__all__ = [
    "COMMENT_PREFIX",
    "SQUEUE_FIELDS",
    "STATES",
    "array_spec",
    "batch_script",
    "exit_code",
    "files_script",
    "id_words",
    "is_job_id",
    "job_dir_assignment",
    "parse_files",
    "parse_nodes",
    "parse_partitions",
    "parse_sacct",
    "parse_squeue",
    "sacct_command",
    "sbatch_command",
    "sinfo_nodes_command",
    "sinfo_partitions_command",
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
SQUEUE_FIELDS = ("JobArrayID", "State", "Reason", "exit_code", "Partition", "Name", "Comment")

_JOB_ID = re.compile(r"\d+(_\d+)?", re.ASCII)


def job_dir_assignment(directory: str | None) -> str:
    """``D=<the job files directory>`` for a shell script (``$HOME/...`` by default)."""
    if directory is None:
        return 'D="$HOME/.aiores/slurm"\n'
    return shell.assign({"D": (directory, "the dir= option of the slurm URL")})


def is_job_id(value: str) -> bool:
    """Whether ``value`` is a Slurm job id (``12``, or an array task ``12_3``)."""
    return _JOB_ID.fullmatch(value) is not None


def id_words(ids: Sequence[str]) -> list[str]:
    """Job ids as few words as scancel and scontrol take: the tasks of one array as
    ``12_[0-9,12]``, other ids as they are (each id must pass :func:`is_job_id`)."""
    words: list[str] = []
    tasks: dict[str, list[int]] = {}
    for job_id in dict.fromkeys(ids):
        base, _, index = job_id.partition("_")
        if index:
            tasks.setdefault(base, []).append(int(index))
        else:
            words.append(job_id)
    for base, indices in tasks.items():
        if len(indices) == 1:
            words.append(f"{base}_{indices[0]}")
            continue
        ordered = sorted(indices)
        runs: list[str] = []
        start = previous = ordered[0]
        for following in [*ordered[1:], None]:
            if following is not None and following == previous + 1:
                previous = following
                continue
            runs.append(str(start) if start == previous else f"{start}-{previous}")
            if following is not None:
                start = previous = following
        words.append(f"{base}_[{','.join(runs)}]")
    return words


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
    options.extend(native_options(d))
    if hold:
        options.append("--hold")
    return options


#: sbatch options aiores sets itself: a native option may not change them, or the
#: job could not be found or read again.
RESERVED = ("--array", "--comment", "--output", "--error", "--parsable", "--hold", "--wrap")
RESERVED_SHORT = ("-a", "-o", "-e", "-H")


def native_options(description: JobDescription) -> list[str]:
    """``description.native`` as sbatch options, checked (each is one word).

    Raises:
        BadParameter: an item is not an option (it would be read as the script's
            name) or is one aiores sets itself.
    """
    checked = []
    for i, option in enumerate(description.native):
        what = f"JobDescription.native[{i}]"
        if not option.startswith("-") or option in ("-", "--"):
            raise BadParameter(f"{what} must be an sbatch option (--name=value), not {option!r}")
        name = option.split("=", 1)[0]
        if name.startswith("--"):
            taken = any(r.startswith(name) and len(name) > 3 for r in RESERVED)
        else:
            taken = option[:2] in RESERVED_SHORT
        if taken:
            raise BadParameter(f"{what}: aiores sets {option!r} itself")
        checked.append(shell.check_text(option, what))
    return checked


def array_spec(indices: Sequence[int], max_parallel: int | None) -> str:
    """sbatch's ``--array`` value: ``indices`` as ranges (``0-9,12,20-30:5``), then
    ``%max_parallel``."""
    ordered = sorted(indices)
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        # The longest run with one step from ordered[i] (at least 3 items for a step).
        if i + 1 < len(ordered):
            step = ordered[i + 1] - ordered[i]
            while j + 1 < len(ordered) and ordered[j + 1] - ordered[j] == step:
                j += 1
            if j - i < 2 and step != 1:
                j = i
        if j == i:
            parts.append(str(ordered[i]))
        elif step == 1:
            parts.append(f"{ordered[i]}-{ordered[j]}")
        else:
            parts.append(f"{ordered[i]}-{ordered[j]}:{step}")
        i = j + 1
    spec = ",".join(parts)
    return spec if max_parallel is None else f"{spec}%{max_parallel}"


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


#: sinfo's output fields (each ends at ``|``): per partition, and per node.
PARTITION_FORMAT = "%P|%a|%D|%C|%m|%l|%N|"
NODE_FORMAT = "%N|%T|%c|%m|%R|%C|%O|"


def sinfo_partitions_command() -> list[str]:
    """One sinfo: a line per partition (``--summarize``)."""
    return ["sinfo", "--noheader", "--summarize", f"--format={PARTITION_FORMAT}"]


def sinfo_nodes_command() -> list[str]:
    """One sinfo: a line per node and partition (``--Node``)."""
    return ["sinfo", "--noheader", "--Node", f"--format={NODE_FORMAT}"]


def _int(text: str) -> int | None:
    text = text.strip().rstrip("+")
    return int(text) if text.isdigit() else None


def _cpus(text: str) -> tuple[int | None, int | None]:
    """sinfo's ``%C`` (allocated/idle/other/total): total and idle."""
    parts = text.strip().split("/")
    if len(parts) != 4:
        return None, None
    return _int(parts[3]), _int(parts[1])


def time_limit(text: str) -> float | None:
    """A Slurm time limit (``infinite``, ``30:00``, ``2-12:00:00``) in seconds."""
    text = text.strip()
    days = 0
    if "-" in text:
        day_text, _, text = text.partition("-")
        if not day_text.isdigit():
            return None
        days = int(day_text)
        fields = [*text.split(":"), "0", "0"][:3]  # hours[:minutes[:seconds]]
    else:
        fields = text.split(":")
        if len(fields) == 1:
            fields = ["0", *fields, "0"]  # minutes
        elif len(fields) == 2:
            fields = ["0", *fields]  # minutes:seconds
    if len(fields) != 3 or not all(f.isdigit() for f in fields):
        return None
    hours, minutes, seconds = (int(f) for f in fields)
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def parse_partitions(text: str) -> list[QueueInfo]:
    """Read :func:`sinfo_partitions_command`'s output."""
    queues = []
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) < 7:
            continue
        name, avail, nodes, cpus, memory, limit, node_names = fields[:7]
        total, idle = _cpus(cpus)
        queues.append(
            QueueInfo(
                name=name.strip().rstrip("*"),
                state=avail.strip(),
                default=name.strip().endswith("*"),
                nodes=_int(nodes),
                cpus=total,
                memory=_int(memory),
                walltime=time_limit(limit),
                extra={"cpus_idle": idle, "node_names": node_names.strip()},
            )
        )
    return queues


def parse_nodes(text: str) -> list[MachineInfo]:
    """Read :func:`sinfo_nodes_command`'s output (a node's partitions gathered)."""
    nodes: dict[str, MachineInfo] = {}
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) < 7:
            continue
        name, state, cpus, memory, partition, alloc, load = (f.strip() for f in fields[:7])
        known = nodes.get(name)
        if known is not None:
            nodes[name] = MachineInfo(
                name=known.name,
                state=known.state,
                cpus=known.cpus,
                memory=known.memory,
                queues=(*known.queues, partition),
                extra=known.extra,
            )
            continue
        _, idle = _cpus(alloc)
        try:
            load_value: float | None = float(load)
        except ValueError:
            load_value = None
        nodes[name] = MachineInfo(
            name=name,
            state=state,
            cpus=_int(cpus),
            memory=_int(memory),
            queues=(partition,),
            extra={"cpus_idle": idle, "load": load_value},
        )
    return list(nodes.values())


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
    # A pending array task may carry several reasons ("JobArrayTaskLimit,JobHeldUser").
    if state is JobState.QUEUED and not HELD_REASONS.isdisjoint(reason.split(",")):
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


def sacct_command(ids: Sequence[str]) -> list[str]:
    """One sacct for ``ids``: a line per job (no steps), ``JobID|State|ExitCode``."""
    return [
        "sacct",
        "--noheader",
        "--parsable2",
        "--allocations",
        "--starttime=1970-01-01",
        "--format=JobID,State,ExitCode",
        f"--jobs={','.join(ids)}",
    ]


def parse_sacct(text: str) -> dict[str, JobInfo]:
    """Read :func:`sacct_command`'s output: the final jobs' states and exit codes
    (``ExitCode`` is ``code:signal``); jobs not final yet are left out."""
    infos: dict[str, JobInfo] = {}
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) < 3 or not is_job_id(fields[0]):
            continue
        job_id, word, exit_text = fields[:3]
        state = state_of(word, "")
        if not state.final:
            continue
        code_text, _, signal_text = exit_text.partition(":")
        code: int | None = None
        if code_text.isdigit() and signal_text.isdigit():
            code = -int(signal_text) if int(signal_text) else int(code_text)
        if state is JobState.CANCELED and not code:
            code = None
        infos[job_id] = JobInfo(
            id=job_id,
            state=state,
            state_detail=f"{word} (left the queue; from sacct)",
            exit_code=code,
            extra={"slurm_state": word.split()[0] if word else ""},
        )
    return infos
