"""A simulated cloud for test suites: the ``aiores_sim_cloud`` pytest fixture.

In the suite's ``conftest.py``::

    pytest_plugins = ["aiores_sim.testing"]

then use the ``aiores_sim_cloud`` fixture (session-scoped: one cloud process; every
``sim://`` manager reaches it; it is stopped at the end and must leave nothing)::

    @pytest.mark.asyncio
    async def test_boot(aiores_sim_cloud):
        async with aiores.Session() as session:
            vm = await session.manager("sim://?boot_delay=0.1").acquire(desc)
            ...

:func:`start_sim_cloud` and :class:`SimCloudProcess` do the same by hand. For unit
tests that need no cloud at all, :mod:`aiores.testing` has an in-memory backend.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

try:
    import pytest
except ImportError:  # the fixtures need pytest; the rest does not
    pytest = None  # type: ignore[assignment]

from ._cloud import REGIONS
from ._isolation import SHARED_ENV
from ._procs import Proc, descendants, scan
from ._protocol import socket_path
from ._vm import CLOUD_MARKER

__all__ = ["SimCloudProcess", "start_sim_cloud"]
if pytest is not None:
    __all__ += ["aiores_sim_cloud"]


class SimCloudProcess:
    """A sim cloud process serving ``directory`` (see :func:`start_sim_cloud`).

    Code under test reaches it while ``$AIORES_SIM_DIR`` names ``directory`` (the
    :func:`aiores_sim_cloud` fixture sets it for the whole test session).
    """

    def __init__(self, directory: Path, pid: int) -> None:
        self.directory = directory
        self.pid = pid
        #: (pid, start time) of every process that descended from the cloud when
        #: :meth:`stop` began: VM processes, however they hid, orphaned once it exits.
        self._descendants: set[tuple[int, int]] = set()

    def __repr__(self) -> str:
        return f"<aiores_sim.testing.SimCloudProcess {self.directory} pid {self.pid}>"

    def alive(self) -> bool:
        """True while the cloud process runs."""
        return _alive(self.pid)

    def leftovers(self) -> list[str]:
        """What is left of the cloud: its process, VM processes, its socket (ideally none).

        VM processes are the cloud's descendants (the cloud adopts orphans of VM
        processes, so even a job that left its session and environment stays one),
        those that descended from it when :meth:`stop` began, and any process marked
        with its directory or working in a VM disk of it.
        """
        found = []
        table = scan()
        if self.alive():
            found.append(f"the cloud process {self.pid}")
        vm_pids = descendants(table, self.pid) if self.alive() else set()
        vm_pids |= {
            pid for pid, start in self._descendants if pid in table and table[pid].start == start
        }
        vm_pids |= _marked_processes(table, self.directory)
        found.extend(
            f"VM process {pid}" for pid in sorted(vm_pids) if pid in table and not table[pid].zombie
        )
        regions = self.directory / REGIONS
        sockets = [socket_path(self.directory)]
        if regions.is_dir():
            sockets += [socket_path(region) for region in sorted(regions.iterdir())]
        found.extend(f"the control socket {path}" for path in sockets if path.exists())
        return found

    def stop(self, timeout: float = 60.0) -> None:
        """Stop it (every VM ends, its processes are killed, its disks removed).

        Blocking: call it outside the event loop (fixtures' teardown is).

        Raises:
            TimeoutError: it did not exit within ``timeout`` seconds.
        """
        if self.alive():
            table = scan()
            self._descendants |= {(pid, table[pid].start) for pid in descendants(table, self.pid)}
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(str(socket_path(self.directory)))
                sock.sendall(b'{"id":1,"op":"shutdown","args":{}}\n')
                with contextlib.suppress(OSError):
                    while sock.recv(65536):
                        pass  # until the cloud closes the connection
        except OSError:
            if self.alive():
                os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the sim cloud {self.pid} did not stop in {timeout} s")
            time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return b") Z " not in handle.read()
    except OSError:
        return False


def _marked_processes(table: Mapping[int, Proc], directory: Path) -> set[int]:
    """Processes marked with the cloud ``directory`` (or one of its regions), or working
    in one of their VM disks."""
    marker = f"{CLOUD_MARKER}={directory}".encode()
    in_region = marker + f"/{REGIONS}/".encode()
    disks = (
        os.path.realpath(directory / "vms") + "/",
        os.path.realpath(directory / REGIONS) + "/",
    )
    pids = set()
    for pid in table:
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd").removesuffix(" (deleted)")
            if cwd.startswith(disks):
                pids.add(pid)
                continue
            with open(f"/proc/{pid}/environ", "rb") as handle:
                entries = handle.read().split(b"\0")
        except OSError:
            continue
        if any(entry == marker or entry.startswith(in_region) for entry in entries):
            pids.add(pid)
    return pids


def start_sim_cloud(
    directory: str | os.PathLike[str],
    *,
    watch_pid: int | None = None,
    idle_exit: float | None = None,
    region_capacity: int | None = None,
) -> SimCloudProcess:
    """Start a sim cloud process serving ``directory`` (blocking; outside the loop).

    Args:
        directory: The cloud's directory (made 0700 if missing).
        watch_pid: The cloud stops once this process has ended (e.g. ``os.getpid()``:
            a test session that is killed does not leave its cloud behind).
        idle_exit: The cloud stops after this many seconds with no VM and no client.
        region_capacity: Live VMs one process of the cloud serves before it starts
            another (a region; default: what its limit of open files allows).

    Raises:
        RuntimeError: it did not start (with what it said).
    """
    path = Path(directory).absolute()
    argv = [sys.executable, "-m", "aiores_sim.server", "--daemon", "--dir", str(path)]
    if watch_pid is not None:
        argv += ["--watch-pid", str(watch_pid)]
    if idle_exit is not None:
        argv += ["--idle-exit", str(idle_exit)]
    if region_capacity is not None:
        argv += ["--region-capacity", str(region_capacity)]
    done = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    if done.returncode != 0:
        said = (done.stderr or done.stdout).decode(errors="replace").strip()
        raise RuntimeError(f"the sim cloud in {path} did not start: {said}")
    pid = int((path / "cloud.pid").read_text().strip())
    return SimCloudProcess(path, pid)


if pytest is not None:

    @pytest.fixture(scope="session")
    def aiores_sim_cloud(
        tmp_path_factory: pytest.TempPathFactory,
    ) -> Iterator[SimCloudProcess]:
        """A sim cloud for the whole test session; ``sim://`` reaches it.

        Use it from a conftest.py with ``pytest_plugins = ["aiores_sim.testing"]``. For the
        session it sets ``$AIORES_SIM_DIR`` to the cloud's directory and
        ``$AIORES_STATE_DIR`` to a temporary one (so the aiores-managed key and the
        journal stay out of the user's own state directory). At the end it stops the
        cloud and fails if anything of it is left (a process, a socket). The cloud
        also stops by itself once the test session's process has ended, even if it
        was killed.

        The test session's temporary directory (pytest's base temp, where every
        ``tmp_path`` is) is shared with every VM, isolated or not: it is added to
        ``$AIORES_SIM_SHARED`` for the session, so files a test writes under its
        ``tmp_path`` are seen by its VMs' commands at the same path, and the other
        way round (as a cluster's shared file system would be).
        """
        state = tmp_path_factory.mktemp("aiores-state")
        directory = tmp_path_factory.mktemp("aiores-sim")
        shared = [str(tmp_path_factory.getbasetemp().resolve())]
        shared += [p for p in os.environ.get(SHARED_ENV, "").split(os.pathsep) if p]
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(SHARED_ENV, os.pathsep.join(shared))
            cloud = start_sim_cloud(directory, watch_pid=os.getpid())
            patch.setenv("AIORES_STATE_DIR", str(state))
            patch.setenv("AIORES_SIM_DIR", str(cloud.directory))
            try:
                yield cloud
            finally:
                cloud.stop()
        left = cloud.leftovers()
        assert not left, f"the sim cloud left: {left}"
