"""Finding, killing and reaping the processes of simulated VMs.

Every command a VM runs starts in a session of its own (the shell leads it) and the
VM records that session's id. One scan of ``/proc`` finds a VM's processes by four
marks, any of which will do:

- its session: a detached job (``nohup cmd &``, ``env -i cmd &``) stays in the
  session of the command that started it;
- its environment: every process a VM starts carries ``AIORES_SIM_VM=<id>``;
- its working directory: in the VM's disk;
- its ancestry: a descendant of a process found by one of the above.

A job that leaves all four behind (``setsid``, ``env -i``, ``cd /``, and its parent
gone) is attributed to no VM. The cloud process is therefore a child subreaper
(``prctl(PR_SET_CHILD_SUBREAPER)``): orphans of VM processes are re-parented to the
cloud, not to init, so every VM process stays a descendant of the cloud. That lets the
cloud scan only its own descendants (a pid reused by an unrelated process is never
hit), kill every descendant when it stops (nothing else runs under it), and reap the
orphans it adopted when they exit. An in-process cloud (tests) is no subreaper: its
host process's other orphans would become its own to reap; it scans every process
of its user instead.

Everything here is blocking (``/proc`` reads): call it off the event loop.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "MARKER",
    "Owner",
    "Proc",
    "ProcessTable",
    "adopted_zombies",
    "become_subreaper",
    "descendants",
    "find",
    "kill",
    "kill_descendants",
    "scan",
]

#: The environment variable naming the VM a process belongs to.
MARKER = "AIORES_SIM_VM"
_PR_SET_CHILD_SUBREAPER = 36
_DELETED = " (deleted)"


@dataclass(frozen=True, slots=True)
class Proc:
    """One process, as ``/proc/<pid>/stat`` has it."""

    pid: int
    ppid: int
    sid: int
    zombie: bool
    #: Clock ticks after boot at which it started: with the pid, names one process.
    start: int


@dataclass(frozen=True, slots=True)
class Owner:
    """A VM whose processes are wanted: its id, disk and the sessions it started."""

    id: str
    disk: Path
    sessions: frozenset[int] = frozenset()


@dataclass(slots=True)
class ProcessTable:
    """The cloud's own children that asyncio waits for (never reaped by the cloud).

    ``spawning`` counts commands being started whose pid is not known yet: until it is
    zero, a zombie session leader among the cloud's children may be one of them.
    """

    managed: set[int] = field(default_factory=set)
    spawning: int = 0


def become_subreaper() -> bool:
    """Make this process adopt the orphans of its descendants; False where it cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def scan() -> dict[int, Proc]:
    """Every process visible in ``/proc``, by pid."""
    table: dict[int, Proc] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                data = handle.read()
            # The command name may hold spaces and parentheses: fields follow the last ")".
            fields = data[data.rindex(b")") + 2 :].split()
            table[int(name)] = Proc(
                pid=int(name),
                ppid=int(fields[1]),
                sid=int(fields[3]),
                zombie=fields[0] in (b"Z", b"X"),
                start=int(fields[19]),
            )
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return table


def descendants(table: Mapping[int, Proc], root: int) -> set[int]:
    """The pids of every descendant of ``root`` in ``table``."""
    children: defaultdict[int, list[int]] = defaultdict(list)
    for proc in table.values():
        children[proc.ppid].append(proc.pid)
    found: set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _marked(pid: int, markers: Mapping[bytes, str]) -> str | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            entries = handle.read().split(b"\0")
    except OSError:  # gone, or another user's
        return None
    for entry in entries:
        if entry.startswith(MARKER.encode()):
            found = markers.get(entry)
            if found is not None:
                return found
    return None


def _working_in(pid: int, disks: Iterable[tuple[str, str]]) -> str | None:
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd").removesuffix(_DELETED)
    except OSError:
        return None
    for disk, vm_id in disks:
        if cwd == disk or cwd.startswith(disk + "/"):
            return vm_id
    return None


def find(
    table: Mapping[int, Proc], owners: Iterable[Owner], *, root: int | None = None
) -> dict[int, str]:
    """Which of the ``owners`` each of their processes belongs to (pid -> VM id).

    With ``root``, only descendants of ``root`` are looked at; else every process but
    this one.
    """
    owners = list(owners)
    if not owners:
        return {}
    by_session = {sid: owner.id for owner in owners for sid in owner.sessions}
    markers = {f"{MARKER}={owner.id}".encode(): owner.id for owner in owners}
    disks = [(os.path.realpath(owner.disk), owner.id) for owner in owners]
    me = os.getpid()
    candidates = descendants(table, root) if root is not None else set(table) - {me}
    found: dict[int, str] = {}
    for pid in candidates:
        vm_id = by_session.get(table[pid].sid) or _marked(pid, markers) or _working_in(pid, disks)
        if vm_id is not None:
            found[pid] = vm_id
    # Whatever descends from a VM's process is that VM's too.
    children: defaultdict[int, list[int]] = defaultdict(list)
    for pid in candidates:
        children[table[pid].ppid].append(pid)
    stack = list(found)
    while stack:
        parent = stack.pop()
        for child in children.get(parent, ()):
            if child not in found:
                found[child] = found[parent]
                stack.append(child)
    return found


def _kill_all(pids: Iterable[int], table: Mapping[int, Proc]) -> int:
    killed = 0
    for pid in pids:
        if table[pid].zombie:
            continue  # dead already; its parent reaps it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            killed += 1
    return killed


def kill(owners: Iterable[Owner], *, root: int | None = None, rounds: int = 5) -> int:
    """SIGKILL every process of the ``owners`` (see :func:`find`); returns how many.

    Scans again (up to ``rounds`` times) while it finds any, so a process forking
    during a scan is caught by the next.
    """
    owners = list(owners)
    killed = 0
    for _ in range(rounds):
        table = scan()
        found = _kill_all(find(table, owners, root=root), table)
        killed += found
        if not found:
            break
    return killed


def kill_descendants(root: int, rounds: int = 5) -> int:
    """SIGKILL every descendant of ``root``; returns how many."""
    killed = 0
    for _ in range(rounds):
        table = scan()
        found = _kill_all(descendants(table, root), table)
        killed += found
        if not found:
            break
    return killed


def adopted_zombies(parent: int) -> list[tuple[int, int]]:
    """(pid, session id) of each child of ``parent`` that has exited and awaits reaping."""
    return [(p.pid, p.sid) for p in scan().values() if p.ppid == parent and p.zombie]
