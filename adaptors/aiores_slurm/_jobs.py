"""Slurm jobs over a command runner: sbatch, one squeue per tick, scancel, scontrol.

The adaptor runs Slurm's own commands through the session's command runner for the
login host: ``local://`` for ``slurm://``, ``ssh://[user@]host[:port]`` for
``slurm+ssh://`` (one pooled connection for every command). Nothing runs on the
login host but those commands and ``sh``.

State is polled: the session's watcher calls :meth:`SlurmJobAdaptor.describe` with
every watched job of the endpoint, answered by ONE ``squeue --jobs=<ids>
--states=all`` (finished jobs included while the controller keeps them, MinJobAge),
then, only when some jobs have left the queue, ONE ``sacct`` for all of them (where
the cluster keeps accounting: found out by the first call, then remembered), and when
some job is newly finished or has left the queue, ONE ``sh`` command that reads the
exit-status and output files those jobs left (see :mod:`aiores_slurm._scripts`):
without accounting a job that left the queue is read from the exit status its batch
script recorded. The
interval starts at a floor of a few seconds (``?interval=SECONDS`` changes it), as
cluster admins ask of tools.

The submit's idempotency token travels in the job's ``--comment``: :meth:`find`
reads it back with squeue, and a submit still under way in this program is awaited
first (its sbatch is never cut off mid-call).
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
from collections import OrderedDict
from collections.abc import Mapping, Sequence

from aiores import (
    BadParameter,
    DoesNotExist,
    IncorrectState,
    IncorrectURL,
    JobDescription,
    JobState,
    NoSuccess,
    PermissionDenied,
    RunResult,
)
from aiores.adaptor import (
    URL,
    AdaptorEnv,
    CommandRunner,
    Control,
    JobAdaptor,
    JobInfo,
    MachineInfo,
    PollPolicy,
    QueueInfo,
    concurrency,
    missing,
    shell,
    validate,
)

from ._scripts import (
    Files,
    array_spec,
    batch_script,
    files_script,
    id_words,
    is_job_id,
    job_dir_assignment,
    parse_files,
    parse_nodes,
    parse_partitions,
    parse_sacct,
    parse_squeue,
    sacct_command,
    sbatch_command,
    sinfo_nodes_command,
    sinfo_partitions_command,
    squeue_command,
)

__all__ = ["SlurmJobAdaptor", "runner_url"]

#: The watcher's default floor: admins ask tools not to poll more often than this.
DEFAULT_INTERVAL = 3.0
#: Slurm commands one endpoint runs at once by default (more wait their turn): hundreds
#: of sbatch at once make slurmctld time out on its socket.
DEFAULT_COMMANDS = 8


def runner_url(url: URL) -> str:
    """The command runner's URL for a slurm URL (``local://`` or ``ssh://...``)."""
    if url.transport is None:
        if url.host:
            raise IncorrectURL(
                f"{url}: slurm:// runs Slurm's commands on this host; "
                f"use slurm+ssh://{url.host} to reach a login host"
            )
        return "local://"
    if url.transport != "ssh":
        raise IncorrectURL(f"{url}: slurm runs over ssh only (slurm+ssh://host)")
    if not url.host:
        raise IncorrectURL(f"{url}: slurm+ssh:// needs a login host (slurm+ssh://user@host)")
    return str(URL(scheme="ssh", host=url.host, user=url.user, port=url.port))


class SlurmJobAdaptor(JobAdaptor):
    """Jobs on one Slurm cluster (``slurm://`` or ``slurm+ssh://[user@]host[:port]``).

    URL options: ``interval=SECONDS`` (the watcher's floor, default 3),
    ``dir=PATH`` (the job files directory on the login host, shared with the nodes;
    default ``$HOME/.aiores/slurm``), ``conf=PATH`` (``SLURM_CONF`` for the commands),
    ``commands=N`` (at most N Slurm commands of this endpoint at once, default 8:
    many submits together wait their turn rather than swamp slurmctld).

    The description maps to sbatch: executable and arguments (quoted), environment
    (exported by the batch script), working_directory (``--chdir``, checked before
    submitting), stdin, stdout/stderr (files; None captures them in the job files
    directory, read once the job finished), queue (``--partition``), walltime
    (``--time``, whole minutes, rounded up), processes (``--ntasks``), cores
    (``--cpus-per-task``), memory (``--mem``, MiB), project (``--account``) and name
    (``--job-name``, default ``aiores``), native (extra sbatch options, each one
    word: ``--nice=10``, ``--constraint=gpu``). ``category`` is ignored.

    Arrays are Slurm's own: one ``sbatch --array=<indices>%<max_parallel>``; member
    ``i`` of array job ``A`` is ``A_i``. Queues and machines are read with one
    ``sinfo`` each.
    """

    supports_hold = True
    supports_arrays = True
    accepts_native = True
    #: Seconds one Slurm command (sbatch, squeue, scontrol) may take.
    command_timeout: float = 60.0
    #: Seconds :meth:`cancel` waits for Slurm to show the job ended.
    cancel_timeout: float = 60.0
    #: Finished jobs whose output was delivered (output is read once per job).
    delivered_kept: int = 100_000

    def __init__(self, url: URL, env: AdaptorEnv) -> None:
        super().__init__(url, env)
        self._runner_url = runner_url(url)
        params = url.params
        interval = DEFAULT_INTERVAL
        if "interval" in params:
            interval = validate.parse_number(params["interval"], "the interval= option")
            if not 0 < interval <= 3600:
                raise BadParameter(f"{url}: interval= must be in (0, 3600] seconds")
        # The ceiling stays well under Slurm's default MinJobAge (300 s), so a job's
        # final state is seen in squeue before the controller forgets it.
        self.poll = PollPolicy(
            floor=interval,
            ceiling=max(interval, min(30.0, 10 * interval)),
            backoff=1.5,
            jitter=0.1,
            batch=5000,
        )
        self._dir = params.get("dir") or None
        if self._dir is not None:
            shell.check_text(self._dir, "the dir= option")
        commands = DEFAULT_COMMANDS
        if "commands" in params:
            where = "the commands= option"
            commands = validate.count(
                validate.parse_number(params["commands"], where, int), where, max=1000
            )
        #: At most this many Slurm commands of this endpoint run at once.
        self.max_commands = commands
        self._slots = asyncio.Semaphore(commands)
        conf = params.get("conf")
        self._env = {"SLURM_CONF": shell.check_text(conf, "the conf= option")} if conf else None
        self._runner: CommandRunner | None = None
        self._inflight: concurrency.InFlight[builtins.list[JobInfo]] = concurrency.InFlight(
            "sbatch"
        )
        self._delivered: OrderedDict[str, None] = OrderedDict()
        #: Whether sacct answers (None: not asked yet).
        self._accounting: bool | None = None
        #: Slurm commands run, by program (squeue, sbatch, ...): for tests and benchmarks.
        self.calls: dict[str, int] = {}

    async def open(self) -> None:
        self._runner = await self.env.command_runner(self._runner_url)

    async def aclose(self) -> None:
        await self._inflight.aclose()

    # -- commands ---------------------------------------------------------------------
    async def _run(
        self, command: str | Sequence[str], what: str, stdin: bytes | None = None
    ) -> RunResult:
        if self._runner is None:
            await self.open()
        assert self._runner is not None
        # Counted by what runs: sbatch and the job files' reads run through sh.
        program = what if isinstance(command, str) or command[0] == "/bin/sh" else command[0]
        self.calls[program] = self.calls.get(program, 0) + 1
        async with self._slots:
            return await self._runner.run(
                command, stdin=stdin, env=self._env, timeout=self.command_timeout
            )

    def _failed(self, what: str, result: RunResult, job_id: str | None = None) -> Exception:
        detail = (result.stderr or result.stdout).strip()
        text = f"{what} at {self.url} failed (exit {result.exit_status}): {detail}"
        lowered = detail.lower()
        if "invalid job id" in lowered:
            return missing("job", job_id or "?", self.url)
        if any(
            word in lowered
            for word in ("already finished", "no longer pending", "is pending", "not suspended")
        ) or ("completing or completed" in lowered):
            return IncorrectState(text)
        if ("access" in lowered and "denied" in lowered) or "not authorized" in lowered:
            return PermissionDenied(text)
        if any(
            word in lowered
            for word in (
                "invalid partition",
                "invalid account",
                "invalid qos",
                "time limit",
                "invalid job array",
                "unrecognized option",
                "invalid option",
                "invalid argument",
                "invalid nice",
            )
        ) or ("requested node configuration is not available" in lowered):
            return BadParameter(text)
        if "command not found" in lowered or ("not found" in lowered and result.exit_status == 127):
            return NoSuccess(f"{text} (is Slurm installed on the login host?)")
        return NoSuccess(text)

    # -- submit -----------------------------------------------------------------------
    async def submit(self, description: JobDescription, token: str, *, hold: bool) -> JobInfo:
        """Submit the job with sbatch; returns it QUEUED (HELD if ``hold``).

        Raises:
            DoesNotExist: the working directory does not exist on the login host.
            BadParameter: Slurm refused a partition, account, time limit or size.
            PermissionDenied: Slurm refused the user.
            NoSuccess: sbatch failed otherwise.
            ConnectionLost, Timeout: the login host could not be reached in time.

        Cancelling it leaves its sbatch running to its end (never cut off mid-call):
        :meth:`find` with ``token`` waits for it and names the job it made.
        """
        (info,) = await self._inflight.run(token, self._sbatch(description, token, hold))
        return info

    async def submit_array(
        self,
        description: JobDescription,
        token: str,
        indices: Sequence[int],
        max_parallel: int | None,
        *,
        hold: bool,
    ) -> Sequence[JobInfo]:
        """Submit the array with one ``sbatch --array=<indices>%<max_parallel>``.

        Returns:
            Its members ``A_i`` (``A`` the array's job id), QUEUED (HELD if ``hold``),
            in the order of ``indices``.

        Raises:
            BadParameter: Slurm refused the array (an index past its MaxArraySize),
                a partition, account, time limit or size.
            DoesNotExist, PermissionDenied, NoSuccess, ConnectionLost, Timeout: as
                :meth:`submit`.

        Cancelling it leaves its sbatch running to its end: :meth:`find` with
        ``token`` waits for it and names every member.
        """
        spec = array_spec(indices, max_parallel)
        return await self._inflight.run(
            token, self._sbatch(description, token, hold, spec, indices)
        )

    async def _sbatch(
        self,
        description: JobDescription,
        token: str,
        hold: bool,
        array: str | None = None,
        indices: Sequence[int] = (),
    ) -> builtins.list[JobInfo]:
        command = sbatch_command(description, token, self._dir, hold=hold, array=array)
        script = batch_script(description, self._dir).encode()
        result = await self._run(["/bin/sh", "-c", command], "sbatch", stdin=script)
        if result.exit_status == 66:
            raise DoesNotExist(
                f"working directory {description.working_directory!r} does not exist "
                f"on the login host of {self.url}"
            )
        job_id = result.stdout.strip().split(";", 1)[0]
        if result.exit_status != 0 or not is_job_id(job_id):
            raise self._failed("sbatch", result)
        state = JobState.HELD if hold else JobState.QUEUED
        detail = "PENDING (JobHeldUser)" if hold else "PENDING"
        ids = [f"{job_id}_{i}" for i in indices] if array is not None else [job_id]
        return [JobInfo(id=one, state=state, state_detail=detail, token=token) for one in ids]

    # -- describe ---------------------------------------------------------------------
    async def _squeue(self, ids: Sequence[str] | None) -> dict[str, JobInfo]:
        result = await self._run(squeue_command(ids), "squeue")
        if result.exit_status != 0:
            if "invalid job id" in result.stderr.lower():
                return {}  # none of them is known to the controller any more
            raise self._failed("squeue", result)
        return {row.id: row.info() for row in parse_squeue(result.stdout)}

    async def _whole_arrays(self, ids: Sequence[str]) -> dict[str, JobInfo]:
        """Array tasks squeue did not list, read from their array's own record: an
        array cancelled before any task split off is one record under the array's id
        (one squeue for all the arrays)."""
        arrays = sorted({job_id.split("_", 1)[0] for job_id in ids if "_" in job_id})
        if not arrays:
            return {}
        infos = await self._squeue(arrays)
        found = {}
        for job_id in ids:
            whole = infos.get(job_id.split("_", 1)[0])
            if "_" in job_id and whole is not None and whole.state.final:
                found[job_id] = dataclasses.replace(whole, id=job_id)
        return found

    async def describe(self, ids: Sequence[str]) -> Mapping[str, JobInfo]:
        """The state of each job: one squeue, then (only if some jobs left the queue)
        one sacct for them all, then (only if some job is newly finished or left the
        queue) one read of the files finished jobs left.

        A finished job carries its captured output the first time this adaptor
        reports it final. A job Slurm forgot (MinJobAge) is read from sacct where the
        cluster keeps accounting, else from the exit status its batch script
        recorded; without accounting, one that never started and was forgotten is
        left out (nothing records it).

        Raises:
            NoSuccess, ConnectionLost, Timeout: the cluster could not be asked.
        """
        ask = [job_id for job_id in dict.fromkeys(ids) if is_job_id(job_id)]
        if not ask:
            return {}
        infos = await self._squeue(ask)
        infos = {job_id: infos[job_id] for job_id in ask if job_id in infos}
        gone = [job_id for job_id in ask if job_id not in infos]
        newly_final = [
            job_id
            for job_id, info in infos.items()
            if info.state.final and job_id not in self._delivered
        ]
        if not gone and not newly_final:
            return infos
        accounted = await self._sacct(gone) if gone else {}
        files = await self._files([*gone, *newly_final], [*gone, *newly_final])
        for job_id in newly_final:
            found = files.get(job_id)
            if found is not None:
                infos[job_id] = dataclasses.replace(
                    infos[job_id], stdout=found.stdout, stderr=found.stderr
                )
            self._deliver(job_id)
        unknown = []
        for job_id in gone:
            found = files.get(job_id) or Files()
            if job_id in accounted:
                info = accounted[job_id]
            elif found.exit is not None:
                code = found.exit
                info = JobInfo(
                    id=job_id,
                    state=JobState.DONE if code == 0 else JobState.FAILED,
                    state_detail=f"left the queue; its program exited {code}",
                    exit_code=code,
                )
            else:
                unknown.append(job_id)
                continue
            infos[job_id] = dataclasses.replace(info, stdout=found.stdout, stderr=found.stderr)
            self._deliver(job_id)
        if unknown:
            # Tasks of an array cancelled before it split are one record: read it.
            for job_id, info in (await self._whole_arrays(unknown)).items():
                infos[job_id] = info
                self._deliver(job_id)
        return infos

    async def _sacct(self, ids: Sequence[str]) -> dict[str, JobInfo]:
        """Final jobs among ``ids`` from one ``sacct``; nothing where the cluster
        keeps no accounting (found out by the first call, then remembered)."""
        if self._accounting is False:
            return {}
        result = await self._run(sacct_command(ids), "sacct")
        if result.exit_status != 0:
            detail = (result.stderr + result.stdout).lower()
            if "accounting storage is disabled" in detail or result.exit_status == 127:
                self._accounting = False
            return {}  # slurmdbd not answering now: the job files tell
        self._accounting = True
        return parse_sacct(result.stdout)

    def _deliver(self, job_id: str) -> None:
        self._delivered[job_id] = None
        if len(self._delivered) > self.delivered_kept:
            self._delivered.popitem(last=False)

    async def _files(self, ids: Sequence[str], outputs: Sequence[str]) -> dict[str, Files]:
        result = await self._run(["/bin/sh", "-c", files_script(ids, self._dir, outputs)], "sh")
        if result.exit_status != 0:
            raise self._failed("reading job files", result)
        return parse_files(result.stdout)

    async def find(self, token: str) -> Sequence[JobInfo]:
        """Every job submitted under ``token``: a submit of this program still under
        way is awaited first, then this user's jobs are read by their comment.

        Raises:
            NoSuccess, ConnectionLost, Timeout: the cluster could not be asked.
        """
        task = await self._inflight.take(token)
        made = concurrency.result_of(task) or []
        infos = await self._squeue(None)
        found = {info.id: info for info in infos.values() if info.token == token}
        if unseen := [info.id for info in made if info.id not in found]:
            found.update(await self.describe(unseen))
        return list(found.values())

    async def list(self) -> Sequence[JobInfo]:
        """This user's jobs that aiores submitted, as long as Slurm keeps them."""
        infos = await self._squeue(None)
        return [info for info in infos.values() if info.token is not None]

    # -- queues and machines ----------------------------------------------------------
    async def queues(self) -> Sequence[QueueInfo]:
        """The cluster's partitions, from one ``sinfo``.

        Raises:
            NoSuccess, ConnectionLost, Timeout: the cluster could not be asked.
        """
        result = await self._run(sinfo_partitions_command(), "sinfo")
        if result.exit_status != 0:
            raise self._failed("sinfo", result)
        return parse_partitions(result.stdout)

    async def machines(self) -> Sequence[MachineInfo]:
        """The cluster's nodes, from one ``sinfo --Node``.

        Raises:
            NoSuccess, ConnectionLost, Timeout: the cluster could not be asked.
        """
        result = await self._run(sinfo_nodes_command(), "sinfo")
        if result.exit_status != 0:
            raise self._failed("sinfo", result)
        return parse_nodes(result.stdout)

    # -- control ----------------------------------------------------------------------
    async def _control(self, argv: builtins.list[str], job_id: str, what: str) -> None:
        if not is_job_id(job_id):
            raise missing("job", job_id, self.url)
        result = await self._run(argv, argv[0])
        if result.exit_status != 0:
            raise self._failed(what, result, job_id)

    async def _one(self, job_id: str) -> JobInfo:
        info = (await self._squeue([job_id])).get(job_id)
        if info is None:
            raise missing("job", job_id, self.url)
        return info

    async def cancel(self, id: str) -> None:
        """scancel the job; returns once Slurm shows it ended (or forgot it).

        A job that already finished is left as it is (its own state stands).

        Raises:
            DoesNotExist: Slurm does not know the id.
            NoSuccess: the job did not end within :attr:`cancel_timeout`.

        Cancelling the call after scancel ran leaves the job being cancelled.
        """
        await self._control(["scancel", id], id, "scancel")
        await self._until_ended([id])

    async def _until_ended(self, ids: Sequence[str]) -> None:
        """Ask (one squeue for all) until every job of ``ids`` ended or left the queue;
        publish what squeue said last."""
        delay = 0.1
        async with concurrency.fail_after(
            self.cancel_timeout,
            lambda: f"jobs {', '.join(ids[:5])} at {self.url} still run after scancel",
        ):
            while True:
                infos = await self._squeue(ids)
                if all(info.state.final for info in infos.values()):
                    break
                # Slurm ends a job after its KillWait: ask again, less and less often.
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        if missing_ids := [job_id for job_id in ids if job_id not in infos]:
            infos.update(await self._whole_arrays(missing_ids))
        for info in infos.values():
            self.publish(info)

    async def control_many(self, what: Control, ids: Sequence[str]) -> Sequence[Exception | None]:
        """One ``scancel`` or ``scontrol <what>`` for all of ``ids`` (an array's tasks
        as ``12_[0-9]``), then one squeue to read their states.

        Returns:
            Per id: None, or its error (as :meth:`cancel`, :meth:`hold`, ... raise).
            When Slurm refuses the command (one job in a wrong state), each remaining
            id is tried on its own to tell which.
        """
        outcomes: dict[str, Exception | None] = {
            job_id: None if is_job_id(job_id) else missing("job", job_id, self.url)
            for job_id in ids
        }
        act = [job_id for job_id, error in outcomes.items() if error is None]
        if what == "hold" and act:
            # Slurm lets an admin "hold" a running job, to no effect: refuse it here.
            infos = await self._squeue(act)
            for job_id in act:
                info = infos.get(job_id)
                if info is None:
                    outcomes[job_id] = missing("job", job_id, self.url)
                elif info.state not in (JobState.QUEUED, JobState.HELD):
                    outcomes[job_id] = IncorrectState(
                        f"cannot hold job {job_id} at {self.url}: it is {info.state_detail}"
                    )
            act = [job_id for job_id in act if outcomes[job_id] is None]
        if act:
            argv = ["scancel"] if what == "cancel" else ["scontrol", what]
            result = await self._run([*argv, *id_words(act)], argv[0])
            if result.exit_status != 0:
                one: dict[str, Exception | None] = dict(
                    zip(act, await super().control_many(what, act), strict=True)
                )
                outcomes.update(one)
                act = [job_id for job_id in act if one[job_id] is None]
            elif what == "cancel":
                await self._until_ended(act)
            else:
                for info in (await self._squeue(act)).values():
                    self.publish(info)
        return [outcomes[job_id] for job_id in ids]

    async def hold(self, id: str) -> None:
        """``scontrol hold``: keep a pending job from starting.

        Raises:
            DoesNotExist: unknown id.
            IncorrectState: the job is not pending (running or finished).
        """
        info = await self._one(id)
        if info.state not in (JobState.QUEUED, JobState.HELD):
            # Slurm lets an admin "hold" a running job, to no effect: refuse it here.
            raise IncorrectState(f"cannot hold job {id} at {self.url}: it is {info.state_detail}")
        await self._control(["scontrol", "hold", id], id, "scontrol hold")
        self.publish(await self._one(id))

    async def release(self, id: str) -> None:
        """``scontrol release``: let a held job start.

        Raises:
            DoesNotExist: unknown id.
            IncorrectState: the job has finished.
        """
        await self._control(["scontrol", "release", id], id, "scontrol release")
        self.publish(await self._one(id))

    async def suspend(self, id: str) -> None:
        """``scontrol suspend`` (Slurm lets only operators and admins suspend).

        Raises:
            DoesNotExist: unknown id.
            IncorrectState: the job is not running.
            PermissionDenied: the user may not suspend jobs.
        """
        await self._control(["scontrol", "suspend", id], id, "scontrol suspend")
        self.publish(await self._one(id))

    async def resume(self, id: str) -> None:
        """``scontrol resume``.

        Raises:
            DoesNotExist: unknown id.
            IncorrectState: the job is not suspended.
            PermissionDenied: the user may not resume jobs.
        """
        await self._control(["scontrol", "resume", id], id, "scontrol resume")
        self.publish(await self._one(id))

    async def reap(self, id: str) -> None:
        """Forget a finished job: remove the files it left in the job files directory
        (Slurm forgets it by itself after MinJobAge)."""
        if not is_job_id(id):
            raise missing("job", id, self.url)
        script = job_dir_assignment(self._dir) + "".join(
            f'rm -f "$D/{id}.{suffix}"\n' for suffix in ("exit", "out", "err", "limit", "slurm")
        )
        result = await self._run(["/bin/sh", "-c", script], "sh")
        if result.exit_status != 0:
            raise self._failed("reaping a job", result, id)
        self._delivered.pop(id, None)
