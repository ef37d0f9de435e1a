"""A private single-node Slurm cluster for tests and benchmarks, and a counting shim.

:class:`Cluster` starts munged, slurmctld and slurmd in the foreground with every file
(key, sockets, state, spool, logs, config) in a private directory and private ports,
so it touches nothing of the host's own Slurm or munge set-up. The node over-reports
its CPUs so that jobs run side by side. Without ``accounting=True`` ``sacct`` is not
available; with it a private MariaDB (own data directory, socket and port on 127.0.0.1)
and slurmdbd start first, and finished jobs leave squeue after 2 s (MinJobAge).
:meth:`Cluster.stop` cancels every job left and stops the daemons.

Clients find it through ``SLURM_CONF`` (:attr:`Cluster.conf`); slurm.conf names the
munge socket, so the client commands need nothing else.

:func:`make_shim` writes a directory of wrappers, one per Slurm client command, each
logging its call before running the real command: put it first on PATH and
:meth:`Shim.counts` says how many scheduler calls a program made.

It needs root and the Debian packages ``slurm-wlm munge`` (and ``slurmdbd
mariadb-server`` for accounting).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["COMMANDS", "CPUS", "Cluster", "Shim", "available", "make_shim"]

SLURMCTLD = "/usr/sbin/slurmctld"
SLURMD = "/usr/sbin/slurmd"
MUNGED = "/usr/sbin/munged"
MUNGEKEY = "/usr/sbin/mungekey"
SLURMDBD = "/usr/sbin/slurmdbd"
MARIADBD = "/usr/sbin/mariadbd"
MARIADB_INSTALL_DB = "/usr/bin/mariadb-install-db"

#: CPUs the node claims (jobs of one CPU each run this many at once).
CPUS = 64


def available(accounting: bool = False) -> str | None:
    """None if Slurm and munge (and for ``accounting`` slurmdbd and MariaDB) are
    installed and this runs as root, else why not."""
    programs = [SLURMCTLD, SLURMD, MUNGED, MUNGEKEY]
    if accounting:
        programs += [SLURMDBD, MARIADBD, MARIADB_INSTALL_DB]
    missing = [p for p in programs if not os.access(p, os.X_OK)]
    if missing:
        return f"missing {', '.join(missing)}: apt-get install -y slurm-wlm munge" + (
            " slurmdbd mariadb-server" if accounting else ""
        )
    if os.geteuid() != 0:
        return "the test Slurm cluster runs its daemons as root"
    return None


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class Cluster:
    """One slurmctld and one slurmd (node = this host's name), with their munged."""

    def __init__(self, directory: Path | None = None, *, accounting: bool = False) -> None:
        self.accounting = accounting
        self.dir = directory or Path(tempfile.mkdtemp(prefix="aiores-slurm-"))
        self.conf = self.dir / "slurm.conf"
        self.munge_socket = self.dir / "munge" / "munge.sock"
        self.node = socket.gethostname()
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def env(self) -> dict[str, str]:
        """What a client command's environment needs to reach this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def _write_config(self) -> None:
        d = self.dir
        for sub in ("munge", "state", "spool", "log", "run"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o755)  # the config and munge socket are read by job users too
        os.chmod(d / "munge", 0o755)
        ctld_port, d_port, self._dbd_port, self._db_port = _free_ports(4)
        lines = [
            "ClusterName=aiorestest",
            f"SlurmctldHost={self.node}",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={d_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={d / 'state'}",
            f"SlurmdSpoolDir={d / 'spool'}",
            f"SlurmctldPidFile={d / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={d / 'run' / 'slurmd.pid'}",
            f"SlurmctldLogFile={d / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={d / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0",
            # Finished jobs leave squeue soon: the files path (or sacct) is used.
            f"MinJobAge={2 if self.accounting else 10}",
            "ReturnToService=2",
            "MailProg=/bin/true",
            "JobAcctGatherType=jobacct_gather/none",
            *self._accounting_lines(),
            "SlurmdParameters=config_overrides",
            "KillWait=2",
            "MaxArraySize=100001",
            "MaxJobCount=100000",
            f"NodeName={self.node} CPUs={CPUS} RealMemory=20000 State=UNKNOWN",
            f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
            f"PartitionName=other Nodes={self.node} Default=NO MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        os.chmod(self.conf, 0o644)

    def _accounting_lines(self) -> list[str]:
        if not self.accounting:
            return ["AccountingStorageType=accounting_storage/none"]
        return [
            "AccountingStorageType=accounting_storage/slurmdbd",
            "AccountingStorageHost=localhost",
            f"AccountingStoragePort={self._dbd_port}",
            # The munge socket slurmctld signs its messages to slurmdbd with.
            f"AccountingStoragePass={self.munge_socket}",
        ]

    def _start_accounting(self, timeout: float) -> None:
        """MariaDB on a private socket and port, then slurmdbd; registers the cluster."""
        d = self.dir
        data = d / "mysql"
        subprocess.run(
            [
                MARIADB_INSTALL_DB,
                "--no-defaults",
                f"--datadir={data}",
                "--user=root",
                "--skip-test-db",
                "--auth-root-authentication-method=normal",
            ],
            check=True,
            capture_output=True,
        )
        db_socket = d / "run" / "mysql.sock"
        self._spawn(
            "mariadbd",
            [
                MARIADBD,
                "--no-defaults",
                f"--datadir={data}",
                "--user=root",
                f"--socket={db_socket}",
                f"--port={self._db_port}",
                "--bind-address=127.0.0.1",
                f"--pid-file={d / 'run' / 'mariadbd.pid'}",
                f"--log-error={d / 'log' / 'mariadbd.log'}",
                "--skip-log-bin",
            ],
        )
        self._until(db_socket.exists, timeout, "mariadbd")
        dbd_conf = d / "slurmdbd.conf"  # slurmdbd reads it beside slurm.conf
        lines = [
            "AuthType=auth/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "DbdHost=localhost",
            f"DbdPort={self._dbd_port}",
            "SlurmUser=root",
            "StorageType=accounting_storage/mysql",
            "StorageHost=127.0.0.1",
            f"StoragePort={self._db_port}",
            "StorageUser=root",
            "StorageLoc=slurm_acct_db",
            f"PidFile={d / 'run' / 'slurmdbd.pid'}",
            f"LogFile={d / 'log' / 'slurmdbd.log'}",
        ]
        dbd_conf.write_text("\n".join(lines) + "\n")
        os.chmod(dbd_conf, 0o600)
        self._spawn("slurmdbd", [SLURMDBD, "-D"])
        self._until(self._dbd_answers, timeout, "slurmdbd")

    def _dbd_answers(self) -> bool:
        listed = self.run("sacctmgr", "--noheader", "--parsable2", "list", "cluster")
        if listed.returncode != 0:
            return False
        if "aiorestest" not in listed.stdout:
            self.run("sacctmgr", "--immediate", "add", "cluster", "aiorestest")
        return True

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.dir / "log" / f"{name}.out", "wb")  # noqa: SIM115 - the child keeps it
        try:
            self.processes[name] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "SLURM_CONF": str(self.conf)},
                start_new_session=True,
            )
        finally:
            log.close()

    def start(self, timeout: float = 60.0) -> None:
        """Start the daemons; returns once the node is idle and takes jobs."""
        why = available(self.accounting)
        if why is not None:
            raise RuntimeError(why)
        self._write_config()
        key = self.dir / "munge" / "munge.key"
        subprocess.run([MUNGEKEY, "-c", "-k", str(key)], check=True, capture_output=True)
        self._spawn(
            "munged",
            [
                MUNGED,
                "-F",
                "--force",
                f"--key-file={key}",
                f"--socket={self.munge_socket}",
                f"--pid-file={self.dir / 'munge' / 'munged.pid'}",
                f"--log-file={self.dir / 'log' / 'munged.log'}",
                f"--seed-file={self.dir / 'munge' / 'munged.seed'}",
            ],
        )
        try:
            self._until(self.munge_socket.exists, timeout, "munged")
            if self.accounting:
                self._start_accounting(timeout)
            self._spawn("slurmctld", [SLURMCTLD, "-D", "-i", "-f", str(self.conf)])
            self._until(self._controller_answers, timeout, "slurmctld")
            self._spawn("slurmd", [SLURMD, "-D", "-f", str(self.conf)])
            self._until(self._node_idle, timeout, "slurmd")
        except BaseException:
            self.stop()
            raise

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """A client command against this cluster (blocking: for fixtures, not tests)."""
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env={**os.environ, **self.env},
            timeout=60,
            check=False,
        )

    def _controller_answers(self) -> bool:
        return self.run("scontrol", "ping").stdout.count("UP") > 0

    def _node_idle(self) -> bool:
        out = self.run("sinfo", "--noheader", "--format=%t", "--partition=debug").stdout
        return out.strip() in ("idle", "mix", "alloc")

    def _until(self, ready: object, timeout: float, what: str) -> None:
        assert callable(ready)
        deadline = time.monotonic() + timeout
        while not ready():
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited {proc.returncode}: {self.log_tail(name)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready within {timeout} s: {self.log_tail(what)}")
            time.sleep(0.1)

    def log_tail(self, name: str, lines: int = 20) -> str:
        text = ""
        for path in (self.dir / "log" / f"{name}.log", self.dir / "log" / f"{name}.out"):
            if path.exists():
                text += path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def live_jobs(self) -> list[str]:
        """Ids of the jobs pending, running or suspended now (every user's)."""
        out = self.run(
            "squeue", "--noheader", "--format=%i", "--states=PD,R,S,CG,CF,RS,RQ,SO,ST"
        ).stdout
        return out.split()

    def stop(self) -> None:
        """Cancel every job, stop the daemons (slurmd, slurmctld, munged), remove the dir."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            left = self.live_jobs()
            if left:
                self.run("scancel", *left)
            deadline = time.monotonic() + 20
            while self.live_jobs() and time.monotonic() < deadline:
                time.sleep(0.2)
        for name in ("slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged"):
            proc = self.processes.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


#: The Slurm client commands the shim counts.
COMMANDS = ("sbatch", "squeue", "scancel", "scontrol", "sacct", "sinfo")


@dataclass
class Shim:
    """A directory of counting wrappers to put first on PATH (see :meth:`counts`)."""

    bin: Path
    log: Path

    def counts(self) -> dict[str, int]:
        """Calls so far, by command (every one of :data:`COMMANDS` listed)."""
        counts = dict.fromkeys(COMMANDS, 0)
        for line in self._lines():
            name = line.split(" ", 1)[0]
            if name in counts:
                counts[name] += 1
        return counts

    def most_at_once(self, name: str) -> int:
        """The most calls of command ``name`` that ran at the same time so far."""
        running = most = 0
        for line in self._lines():
            if line.split(" ", 1)[0] == name:
                running += 1
                most = max(most, running)
            elif line == f"end {name}":
                running -= 1
        return most

    def _lines(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def reset(self) -> None:
        """Forget the calls so far."""
        self.log.unlink(missing_ok=True)


def make_shim(directory: Path) -> Shim:
    """Wrappers for each Slurm command in ``directory``: log ``<name> <args>``, run
    the real command, log ``end <name>`` and exit with its status."""
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "calls.log"
    for name in COMMANDS:
        real = shutil.which(name, path="/usr/bin:/usr/sbin:/bin")
        if real is None:
            continue
        wrapper = directory / name
        wrapper.write_text(
            f'#!/bin/sh\nprintf "%s\\n" "{name} $*" >> {log}\n'
            f'{real} "$@"\nrc=$?\necho "end {name}" >> {log}\nexit $rc\n'
        )
        wrapper.chmod(0o755)
    return Shim(directory, log)
