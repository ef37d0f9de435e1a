"""Reading the records the keeper leaves, for jobs found again (see :mod:`._keeper`).

A job's record file says all a later program needs: whose token the job was
submitted under, its leader's identity (pid, start time, boot), its exit status once
it ended, and which streams it captured (their output is in the files beside it). The
leader counts as alive only while a process with its pid *and* its start time runs
in this boot: a pid reused by another process is never taken for the job, nor
signalled.

Everything here blocks (it reads files and ``/proc``): call it in a thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiores import JobState
from aiores.adaptor import JobInfo, truncation_marker

from ._keeper import (
    CANCELED,
    MARKER,
    RESUMED,
    STREAMS,
    SUSPENDED,
    append,
    boot_id,
    output_path,
    start_time,
)

__all__ = [
    "ID",
    "Identity",
    "Record",
    "exit_detail",
    "find",
    "list_ids",
    "open_pidfd",
    "read",
    "read_many",
    "remove",
    "signal_group",
    "signal_unrecorded",
    "unrecorded",
]

log = logging.getLogger("aiores.local")

#: What a local job id looks like (ids are directory names: nothing else is read).
ID = re.compile(r"j-[0-9a-f]{12}", re.ASCII)
#: A number in a record: ASCII digits only (``str.isdigit`` takes "²"), and few of them.
_NUMBER = re.compile(r"-?[0-9]{1,19}", re.ASCII)
#: The most of a record that is read (a record is a few lines; more is not one).
_MAX_RECORD = 1 << 20


class Unreadable(Exception):
    """A record that cannot be read as one (not a regular file, not UTF-8, too big)."""


@dataclass(frozen=True, slots=True)
class Identity:
    """A process as recorded: its pid, its start time and the boot it runs in."""

    pid: int
    start: str
    boot: str

    def alive(self) -> bool:
        """True while this very process runs (not a zombie, not a reuse of its pid)."""
        return self.boot == boot_id() and start_time(self.pid) == self.start


@dataclass(frozen=True, slots=True)
class Record:
    """One job directory, read at one moment, with the liveness of what it names."""

    id: str
    token: str | None
    leader: Identity | None
    leader_alive: bool
    keeper_alive: bool
    exit_code: int | None
    canceled: bool
    suspended: bool
    stdout: bytes | None = None
    stderr: bytes | None = None
    #: Live processes carrying the job's marker although its leader was never
    #: recorded (its keeper died while starting it); looked for only then.
    unrecorded: tuple[int, ...] = ()
    #: Why the record cannot be read (then nothing else in it is known).
    problem: str | None = None

    def info(self) -> JobInfo:
        """What the record says, as the adaptor reports it."""
        if self.problem is not None:
            state, detail = JobState.FAILED, f"its record is unreadable: {self.problem}"
        elif self.exit_code is not None:
            how = exit_detail(self.exit_code)
            if self.canceled:
                state, detail = JobState.CANCELED, f"canceled: {how}"
            else:
                state, detail = (JobState.DONE if self.exit_code == 0 else JobState.FAILED), how
        elif self.leader is None:
            if self.keeper_alive:
                state, detail = JobState.QUEUED, "being started"
            elif self.unrecorded:
                state = JobState.RUNNING
                detail = (
                    "running, its leader unrecorded (its keeper died while starting it): "
                    f"processes {', '.join(map(str, self.unrecorded))} carry its {MARKER}"
                )
            elif self.canceled:
                state, detail = JobState.CANCELED, "canceled: its start was cut off"
            else:
                state, detail = JobState.FAILED, "its start was cut off: no process recorded"
        elif self.leader_alive:
            if self.suspended:
                state, detail = JobState.SUSPENDED, "suspended (SIGSTOP)"
            else:
                state, detail = JobState.RUNNING, "running"
        elif self.keeper_alive:
            state, detail = JobState.RUNNING, "ended: its exit status is being recorded"
        else:
            state = JobState.CANCELED if self.canceled else JobState.FAILED
            detail = "ended while nothing recorded its exit status (its keeper process is gone)"
        return JobInfo(
            id=self.id,
            state=state,
            state_detail=detail,
            exit_code=self.exit_code,
            stdout=self.stdout,
            stderr=self.stderr,
            token=self.token,
            extra={} if self.leader is None else {"pid": self.leader.pid},
        )


def exit_detail(rc: int) -> str:
    """``"exited 3"``, or ``"killed by SIGTERM"`` for a negative status."""
    if rc >= 0:
        return f"exited {rc}"
    try:
        name = signal.Signals(-rc).name
    except ValueError:
        name = f"signal {-rc}"
    return f"killed by {name}"


def _number(text: str) -> int | None:
    return int(text) if _NUMBER.fullmatch(text) else None


def _identity(text: str) -> Identity | None:
    fields = text.split()
    if len(fields) == 3 and (pid := _number(fields[0])) is not None and pid > 0:
        return Identity(pid, fields[1], fields[2])
    return None


def _text(path: Path) -> str | None:
    """A record's complete lines (a line still being appended has no newline yet);
    None if there is none.

    Never blocks and never follows a link: a FIFO or a device put in its place is
    refused, not read.

    Raises:
        Unreadable: it is not a regular file, not UTF-8, or far too big.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise Unreadable(f"{path}: {exc.strerror}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Unreadable(f"{path} is not a regular file")
        data = b""
        while chunk := os.read(fd, _MAX_RECORD + 1 - len(data)):
            data += chunk
            if len(data) > _MAX_RECORD:
                raise Unreadable(f"{path} is larger than {_MAX_RECORD} bytes")
    except OSError as exc:
        raise Unreadable(f"{path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        raise Unreadable(f"{path} is not UTF-8 text (byte {exc.start})") from exc
    return text[: text.rfind("\n") + 1]


def _output(path: Path, limit: int) -> bytes:
    """The first ``limit`` bytes of a captured stream's file (never blocking on one
    that is not a regular file: such a file is read as empty)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return b""  # captured, and empty: no file is written for nothing
    except OSError as exc:
        log.warning("local job output %s cannot be read: %s", path, exc.strerror)
        return b""
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            log.warning("local job output %s is not a regular file: not read", path)
            return b""
        size = info.st_size
        data = os.pread(fd, limit, 0) if limit else b""
    except OSError as exc:
        log.warning("local job output %s cannot be read: %s", path, exc.strerror)
        return b""
    finally:
        os.close(fd)
    return data if size <= len(data) else data + truncation_marker(len(data), size - len(data))


def _token(text: str) -> str | None:
    key, _, value = text.partition("\n")[0].partition(" ")
    return (value or None) if key == "token" else None


def read(
    jobs_dir: Path,
    job_id: str,
    *,
    output: bool = True,
    marked: dict[str, list[int]] | None = None,
) -> Record | None:
    """The record of ``job_id``, or None if there is none (with its captured output
    once it ended, if ``output``). ``marked`` (filled on first need) shares one look
    at every process's marker among the records read together."""
    if not ID.fullmatch(job_id):
        return None
    path = jobs_dir / job_id
    try:
        text = _text(path)
    except Unreadable as exc:
        return Record(
            id=job_id,
            token=None,
            leader=None,
            leader_alive=False,
            keeper_alive=False,
            exit_code=None,
            canceled=False,
            suspended=False,
            problem=str(exc),
        )
    if text is None or not text.startswith("token "):
        return None  # none, or its first line is not written yet
    fields: dict[str, str] = {}
    canceled = suspended = False
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == CANCELED:
            canceled = True
        elif key in (SUSPENDED, RESUMED):
            suspended = key == SUSPENDED
        else:
            fields.setdefault(key, value)
    limit = max(0, _number(fields.get("limit", "")) or 0)
    keeper = _identity(fields.get("keeper", ""))
    leader = _identity(fields.get("leader", ""))
    exit_code = _number(fields.get("exit", ""))
    leader_alive = exit_code is None and leader is not None and leader.alive()
    keeper_alive = exit_code is None and not leader_alive and keeper is not None and keeper.alive()
    found: tuple[int, ...] = ()
    if exit_code is None and leader is None and not keeper_alive:
        if marked is None:
            found = tuple(unrecorded(job_id))
        else:
            if not marked:
                marked.update(_marked())
            found = tuple(marked.get(job_id, ()))
    if exit_code is None and not (leader_alive or keeper_alive or found) and not canceled:
        # Ended unrecorded, seen after the text was read: a cancel marks the record
        # before it signals, so a mark that came meanwhile is in the text now.
        with contextlib.suppress(Unreadable):
            canceled = CANCELED in (_text(path) or "").splitlines()
    stdout = stderr = None
    if output and exit_code is not None:
        captured = fields.get("capture", "").split()
        stdout, stderr = (
            _output(Path(output_path(str(path), which)), limit) if which in captured else None
            for which in STREAMS
        )
    return Record(
        id=job_id,
        token=_token(text),
        leader=leader,
        leader_alive=leader_alive,
        keeper_alive=keeper_alive,
        exit_code=exit_code,
        canceled=canceled,
        suspended=suspended,
        stdout=stdout,
        stderr=stderr,
        unrecorded=found,
    )


def read_many(jobs_dir: Path, ids: Iterable[str], *, output: bool = True) -> list[Record]:
    """The records of ``ids`` that exist."""
    marked: dict[str, list[int]] = {}
    found = (read(jobs_dir, job_id, output=output, marked=marked) for job_id in ids)
    return [r for r in found if r is not None]


def list_ids(jobs_dir: Path) -> list[str]:
    """Every job id with a record."""
    try:
        names = os.listdir(jobs_dir)
    except FileNotFoundError:
        return []
    return sorted(name for name in names if ID.fullmatch(name))


def find(jobs_dir: Path, token: str) -> list[Record]:
    """The records of the jobs submitted under ``token``."""
    matching = []
    for job_id in list_ids(jobs_dir):
        try:
            text = _text(jobs_dir / job_id)
        except Unreadable as exc:
            log.warning("local job %s: skipped: its record is unreadable: %s", job_id, exc)
            continue
        if text is not None and _token(text) == token:
            matching.append(job_id)
    return read_many(jobs_dir, matching)


def signal_group(
    jobs_dir: Path, job_id: str, leader: Identity, signals: Sequence[int], mark: str | None
) -> bool:
    """Signal the job's process group if its leader is still that process; True if sent.

    ``mark`` (``canceled``, ``suspended`` or ``resumed``) is appended to its record
    first, so that whoever reads the record next knows why the job ended or stopped.
    """
    if not leader.alive():
        return False
    _mark(jobs_dir, job_id, mark)
    sent = True
    for signum in signals:
        try:
            os.killpg(leader.pid, signum)
        except ProcessLookupError:
            sent = False
    return sent


def _mark(jobs_dir: Path, job_id: str, mark: str | None) -> None:
    """Mark a record before a signal; one that cannot be marked is signalled all the
    same (a cancel must stop the job even where its record is read-only)."""
    if mark not in (CANCELED, SUSPENDED, RESUMED):
        return
    try:
        append(str(jobs_dir / job_id), mark)
    except FileNotFoundError:
        pass  # reaped meanwhile
    except OSError as exc:
        log.warning("local job %s: signalled without its %r mark: %s", job_id, mark, exc)


def unrecorded(job_id: str) -> list[int]:
    """The live processes of this user that carry ``job_id``'s marker in their
    environment (``AIORES_JOB=<id>``, set by the keeper for every job it starts).

    Only a job whose leader was never recorded is looked for this way (its keeper
    died between starting it and recording it): reading ``/proc/*/environ`` costs a
    file per process, the records cost one per job. The marker is the cheapest
    reliable mark: a process group id is known only after the fork, and the keeper
    may die before it writes it down; the environment is set before the job runs and
    is inherited by what it starts.
    """
    return _marked().get(job_id, [])


def _marked() -> dict[str, list[int]]:
    """Every live process of this user carrying a job marker, by job id (and ``""``
    so that an empty result still counts as looked at)."""
    prefix = f"{MARKER}=".encode()
    found: dict[str, list[int]] = {"": []}
    for name in os.listdir("/proc"):
        if not name.isdigit() or not name.isascii():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as environ:
                data = environ.read()
        except OSError:  # ended, or another user's
            continue
        if prefix not in data:
            continue
        for entry in data.split(b"\0"):
            if entry.startswith(prefix):
                job_id = entry[len(prefix) :].decode("ascii", "replace")
                if ID.fullmatch(job_id) and start_time(int(name)) is not None:
                    found.setdefault(job_id, []).append(int(name))
                break
    return found


def signal_unrecorded(
    jobs_dir: Path, job_id: str, signals: Sequence[int], mark: str | None
) -> bool:
    """Signal the processes of a job whose leader was never recorded; True if any.

    Each process carrying its marker is signalled with its process group when it
    leads that group (the job's leader leads its own), else alone.
    """
    pids = unrecorded(job_id)
    if not pids:
        return False
    _mark(jobs_dir, job_id, mark)
    sent = False
    for pid in pids:
        for signum in signals:
            try:
                if os.getpgid(pid) == pid:
                    os.killpg(pid, signum)
                else:
                    os.kill(pid, signum)
            except ProcessLookupError:
                continue
            sent = True
    return sent


def open_pidfd(leader: Identity) -> int | None:
    """A pidfd on the leader if it is still that process (None: it has ended).

    Raises:
        OSError: pidfds are not available here.
    """
    try:
        fd = os.pidfd_open(leader.pid)
    except ProcessLookupError:
        return None
    if leader.alive():  # checked after opening: the fd is the recorded process
        return fd
    os.close(fd)
    return None


def remove(jobs_dir: Path, job_id: str) -> None:
    """Forget a job: remove its record and its output files."""
    if not ID.fullmatch(job_id):
        return
    path = jobs_dir / job_id
    if path.is_dir():  # the layout of an earlier version: a directory per job
        shutil.rmtree(path, ignore_errors=True)
        return
    for name in (*(output_path(str(path), which) for which in STREAMS), str(path)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
