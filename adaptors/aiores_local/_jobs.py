"""Jobs as local processes: the ``local://`` job service.

Each job is one process in its own session (process group), started without a shell
unless the description is a shell command. Jobs are started by the adaptor's
*keeper* (:mod:`._keeper`): a small standard-library process, started at the
adaptor's first job, which is the parent of every job it starts. The keeper records
each job in one file, ``<state dir>/local/jobs/<id>`` (in a 0700 directory: its token,
its leader's pid, start time and boot, its exit status; its captured output beside
it when there is some) and tells the adaptor the moment a job ends, with its output
(nothing polls; no thread or task per job).

Why a keeper: a job must outlive the program that submitted it, and the exit status
of a process reaches only its parent. The keeper outlives the program (it ends once
its last job ended), so a job's end is recorded even if the program was killed; and
forking, and every file the records take, move off the program's event loop into
the keeper, so the fast path stays fast (the keeper creates one file per job, and
handles the starts of many jobs submitted at once together).

Found again: :meth:`LocalJobAdaptor.describe` of an id this adaptor does not know,
:meth:`~LocalJobAdaptor.find` by token and :meth:`~LocalJobAdaptor.list` read the
records (in a thread), from any program of the same user and state directory. A
running job found again is followed through a pidfd on its leader (opened only
after the leader's start time is checked: a reused pid is never taken for the job);
when it ends, its recorded exit status and output are published. Every job carries
``AIORES_JOB=<id>`` in its environment: a job whose keeper died after starting it but
before recording its leader is found by that marker (in ``/proc/*/environ``, looked at
only for such a record) and can be cancelled and reaped. A record that cannot be read
(not a regular file, not UTF-8) is described FAILED ("its record is unreadable") and
left out of listings with a warning. Cancel (SIGTERM
to its group, SIGKILL after the grace period), suspend and resume work on it too.

Output: a stream the description names no file for goes through a pipe to the
keeper; the submitting program gets it (up to ``capture_limit``) with the job's end,
and later programs read it from the file beside the record (``<id>.stdout``,
``<id>.stderr``: all of it, written only if not empty) until the job is reaped.
Reaping a job removes its record and those files.

With ``local://?max_running=N`` at most N jobs run at once; the others wait QUEUED and
start, in submission order, as soon as a slot frees. ``submit(..., hold=True)`` makes a
HELD job that starts only when released. A job that runs past its description's
``walltime`` is stopped as a cancel would stop it and ends FAILED (the walltime is
kept by the submitting program only). Held and queued jobs exist only in this
process: closing the session ends them CANCELED.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import functools
import logging
import os
import signal
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from aiores import (
    AioresError,
    BadParameter,
    DoesNotExist,
    IncorrectState,
    JobDescription,
    JobState,
    NoSuccess,
    PermissionDenied,
)
from aiores.adaptor import URL, AdaptorEnv, JobAdaptor, JobInfo, missing

from . import _records as records
from ._client import KeeperClient, launch, stop
from ._keeper import CANCELED, RESUMED, SUSPENDED
from ._options import check_grace, check_max_running, parse_options
from ._process import check_startable, merged_environment, signal_name, spawn_error

__all__ = ["LocalJobAdaptor"]

log = logging.getLogger("aiores.local")
T = TypeVar("T")

_R = JobState.RUNNING
#: Seconds between looks at the record of a job found again while its exit status is
#: being recorded (or its start is under way): the first, and the longest.
FOLLOW_FIRST = 0.005
FOLLOW_LONGEST = 1.0
#: Seconds between looks at a followed leader where pidfds are missing.
POLL_WITHOUT_PIDFD = 0.25


class _Job:
    """One job's record (slots: thousands of these may exist at once)."""

    __slots__ = (
        "abandoned",
        "cancel_requested",
        "description",
        "finished",
        "go",
        "holds_slot",
        "id",
        "info",
        "kill_timer",
        "killed",
        "leader",
        "overtime",
        "own",
        "pid",
        "token",
        "walltime_timer",
    )

    def __init__(self, id: str, description: JobDescription | None, token: str) -> None:
        self.id = id
        self.description = description
        self.token = token
        self.pid: int | None = None
        self.own = True  # started by this adaptor's keeper (else: found again, followed)
        self.leader: records.Identity | None = None  # the recorded leader of a followed job
        self.info = JobInfo(id=id, state=JobState.NEW, token=token)
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.go: asyncio.Future[None] | None = None  # set for jobs that start later
        self.holds_slot = False
        self.abandoned = False  # its submit was cancelled while the keeper started it
        self.cancel_requested = False
        self.killed = False
        self.overtime = False
        self.kill_timer: asyncio.TimerHandle | None = None
        self.walltime_timer: asyncio.TimerHandle | None = None

    @property
    def state(self) -> JobState:
        return self.info.state

    def set(
        self,
        state: JobState,
        detail: str,
        exit_code: int | None = None,
        stdout: bytes | None = None,
        stderr: bytes | None = None,
    ) -> JobInfo:
        self.info = JobInfo(
            id=self.id,
            state=state,
            state_detail=detail,
            exit_code=exit_code,
            stdout=stdout,
            stderr=stderr,
            token=self.token,
            extra={} if self.pid is None else {"pid": self.pid},
        )
        return self.info


def _output_error(which: str, path: str, exc: OSError) -> AioresError:
    if isinstance(exc, FileNotFoundError):
        return DoesNotExist(f"{which} file {path!r}: its directory does not exist")
    if isinstance(exc, PermissionError):
        return PermissionDenied(f"{which} file {path!r} cannot be written: {exc.strerror}")
    if isinstance(exc, IsADirectoryError):
        return BadParameter(f"{which} file {path!r} is a directory")
    return NoSuccess(f"{which} file {path!r} cannot be opened: {exc.strerror}")


def _start_error(description: JobDescription, error: Mapping[str, Any]) -> AioresError:
    """The aiores error for a start the keeper reported failed."""
    number = error.get("errno") or 0
    if not number:
        return NoSuccess(f"cannot start {description.executable!r}: {error.get('strerror')}")
    exc = OSError(number, error.get("strerror"), error.get("filename"))
    if error.get("which"):
        return _output_error(error["which"], error["path"], exc)
    return spawn_error(exc, description.executable, description.working_directory)


def _record_error(job_id: str, exc: OSError) -> AioresError:
    """The aiores error for a job found again that could not be signalled."""
    if isinstance(exc, PermissionError):
        return PermissionDenied(f"cannot signal local job {job_id}: {exc}")
    return NoSuccess(f"cannot signal local job {job_id}: {exc}")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LocalJobAdaptor(JobAdaptor):
    """Runs jobs as processes of this host (``local://``).

    Args:
        url: ``local://``, with options ``?grace=SECONDS`` (SIGTERM to SIGKILL on cancel,
            default 5) and ``?max_running=N`` (default: no limit).
        env: The session's services.
        grace: Overrides the URL's ``grace``.
        max_running: Overrides the URL's ``max_running``.
    """

    supports_hold = True

    def __init__(
        self,
        url: URL,
        env: AdaptorEnv,
        *,
        grace: float | None = None,
        max_running: int | None = None,
    ) -> None:
        super().__init__(url, env)
        options = parse_options(url)
        self.grace = options.grace if grace is None else check_grace(grace)
        self.max_running = (
            options.max_running if max_running is None else check_max_running(max_running)
        )
        #: Where job records live (shared by every local:// endpoint of this state dir).
        self.jobs_dir = env.state_dir / "local" / "jobs"
        self._jobs: dict[str, _Job] = {}
        self._by_token: dict[str, list[str]] = {}
        self._queue: deque[_Job] = deque()
        self._active = 0  # jobs holding a slot (running, suspended or starting)
        self._closed = False
        self._keeper: KeeperClient | None = None
        self._keeper_lock = asyncio.Lock()

    # -- the keeper --------------------------------------------------------------------
    async def _keeper_up(self) -> KeeperClient:
        """This adaptor's keeper, started (and waited for) on first use."""
        keeper = self._keeper
        if keeper is not None and not keeper.gone:
            return keeper
        async with self._keeper_lock:
            keeper = self._keeper
            if keeper is not None and not keeper.gone:
                return keeper
            if self._closed:
                raise IncorrectState(f"{self.url} job service is closed")
            popen = await self.env.cleanups.to_thread(
                launch,
                self.jobs_dir,
                dispose=stop,
                what="ending a local job keeper whose start was cancelled",
            )
            keeper = KeeperClient(popen, self._exited)
            try:
                await keeper.connect()
            except BaseException:
                keeper.close()
                popen.kill()  # it has started no job
                raise
            keeper.on_gone = self._keeper_gone
            keeper.on_detached = self._keeper_detached
            self._keeper = keeper
            self.env.spawn(keeper.read, name=f"aiores-local-keeper-{keeper.pid}")
            return keeper

    def _keeper_gone(self) -> None:
        """The keeper died: follow its jobs through their records, as found again."""
        log.warning("%s: the job keeper ended unexpectedly; following its jobs", self.url)
        for job in list(self._jobs.values()):
            if job.own and job.pid is not None and not job.state.final:
                job.own = False
                self._follow_soon(job)

    def _start_request(self, job: _Job, keeper: KeeperClient) -> dict[str, Any]:
        desc = job.description
        assert desc is not None
        env = merged_environment(desc.environment)
        if env is None and keeper.environ_changed():
            env = dict(os.environ)  # changed since the keeper started: pass it on
        stdin = desc.stdin_bytes
        return {
            "op": "start",
            "id": job.id,
            "token": job.token,
            "argv": [desc.executable, *desc.arguments],
            "cwd": desc.working_directory,
            "env": env,
            "stdin": None if stdin is None else base64.b64encode(stdin).decode(),
            "stdout": desc.stdout,
            "stderr": desc.stderr,
            "limit": desc.capture_limit,
        }

    # -- submit ------------------------------------------------------------------------
    async def submit(self, description: JobDescription, token: str, *, hold: bool) -> JobInfo:
        """Start the job now, or queue it (HELD if ``hold``, QUEUED if no slot is free).

        Returns:
            Its first state: RUNNING, QUEUED or HELD (a job that ended at once may
            already be final).

        Raises:
            DoesNotExist: the executable, the working directory or an output file's
                directory does not exist.
            PermissionDenied: the executable is not executable, the working directory
                cannot be entered, or an output file cannot be written.
            BadParameter: an output file is a directory.
            NoSuccess: the process could not start for another reason (such as too
                many open files), or the keeper could not start.
            IncorrectState: the adaptor is closed.

        Cancelling it before the keeper was asked leaves nothing behind; after that,
        the job is stopped (SIGKILL, CANCELED) once the keeper started it, and
        :meth:`find` waits for that and returns it ended.
        """
        if self._closed:
            raise IncorrectState(f"{self.url} job service is closed")
        job = _Job(self._new_id(), description, token)
        free = self.max_running is None or (self._active < self.max_running and not self._queue)
        if hold or not free:
            await self._check_startable(description)
            if self._closed:
                raise IncorrectState(f"{self.url} job service closed during the submit")
            job.go = job.finished.get_loop().create_future()
            if hold:
                job.set(JobState.HELD, "held: waiting for release")
            else:
                job.set(JobState.QUEUED, self._queued_detail())
                self._queue.append(job)
            self._register(job)
            self.env.spawn(functools.partial(self._later, job), name=f"aiores-local-job-{job.id}")
            self._admit()  # a slot may have freed while the checks ran
            return job.info
        job.holds_slot = True  # taken before any await, so no other submit takes it
        self._active += 1
        try:
            await self._launch(job)
        except BaseException:
            if job.holds_slot and job.pid is None:
                job.holds_slot = False
                self._active -= 1
                self._admit()
            raise
        # Its first state, even if its end (announced since, and published) came first.
        return JobInfo(
            id=job.id, state=_R, state_detail="running", token=token, extra={"pid": job.pid}
        )

    def _register(self, job: _Job) -> None:
        self._jobs[job.id] = job
        self._by_token.setdefault(job.token, []).append(job.id)

    def _forget(self, job: _Job) -> None:
        self._jobs.pop(job.id, None)
        ids = self._by_token.get(job.token)
        if ids is not None and job.id in ids:
            ids.remove(job.id)
            if not ids:
                del self._by_token[job.token]

    async def _launch(self, job: _Job) -> None:
        """Have the keeper start ``job`` now; raises the mapped error if it cannot."""
        keeper = await self._keeper_up()
        if self._closed:
            raise IncorrectState(f"{self.url} job service closed during the submit")
        assert job.description is not None
        self._register(job)  # hidden (NEW) until the keeper answers
        answer = keeper.request(
            self._start_request(job, keeper), functools.partial(self._answered, job)
        )
        try:
            # Shielded: the answer is the keeper's, whoever stops waiting for it.
            reply = await asyncio.shield(answer)
        except asyncio.CancelledError:
            job.abandoned = True
            if job.pid is not None:
                self._abandon(job)  # started in the same turn: stop it now
            raise
        if "error" in reply:
            raise _start_error(job.description, reply["error"])

    def _answered(self, job: _Job, reply: Mapping[str, Any]) -> None:
        """The keeper's answer to a start (a loop callback, before any end it announces)."""
        if "error" in reply:
            if job.go is None:
                self._forget(job)  # a submit that fails leaves nothing
                if not job.finished.done():
                    job.finished.set_result(None)
            return
        job.pid = reply["pid"]
        if job.abandoned or job.state.final:  # cancelled while it was being started
            job.set(_R, "running")
            self._abandon(job)
            return
        job.set(_R, "running")
        if job.go is not None:
            self.publish(job.info)  # a deferred job: before the end the keeper may announce next
        desc = job.description
        if desc is not None and desc.walltime is not None:
            loop = job.finished.get_loop()
            job.walltime_timer = loop.call_later(desc.walltime, self._walltime_expired, job)

    def _abandon(self, job: _Job) -> None:
        """Stop a job whose submit was cancelled: SIGKILL at once, CANCELED."""
        job.cancel_requested = True
        job.killed = True
        self._signal_soon(job, [signal.SIGKILL], mark=CANCELED, ended=True)

    def _new_id(self) -> str:
        while True:
            id = "j-" + os.urandom(6).hex()
            if id not in self._jobs:
                return id

    def _queued_detail(self) -> str:
        return f"queued: waiting for one of {self.max_running} slots (max_running)"

    async def _check_startable(self, description: JobDescription) -> None:
        error = await asyncio.to_thread(
            check_startable,
            description.executable,
            description.working_directory,
            merged_environment(description.environment),
        )
        if error is not None:
            raise error

    async def _later(self, job: _Job) -> None:
        """Start a deferred (held or queued) job when its turn comes."""
        assert job.go is not None
        assert job.description is not None
        await job.go
        if job.state.final:
            return
        try:
            keeper = await self._keeper_up()
            if job.state.final:  # cancelled while the keeper started
                return
            answer = keeper.request(
                self._start_request(job, keeper), functools.partial(self._answered, job)
            )
            reply = await answer
        except AioresError as exc:
            self._finish(job, JobState.FAILED, f"could not start: {exc}")
            return
        if "error" in reply:
            error = _start_error(job.description, reply["error"])
            self._finish(job, JobState.FAILED, f"could not start: {error}")

    # -- ends --------------------------------------------------------------------------
    def _exited(self, id: str, rc: int, stdout: bytes | None, stderr: bytes | None) -> None:
        """The keeper says a job it started ended (a loop callback)."""
        job = self._jobs.get(id)
        if job is None or job.state.final or not job.own:
            return
        how = records.exit_detail(rc)
        if job.killed:
            how += f" after the {self.grace:g} s grace period" if self.grace else ""
        elif rc >= 0 and (job.cancel_requested or job.overtime):
            how += " after SIGTERM"
        if job.cancel_requested:
            state, detail = JobState.CANCELED, f"canceled: {how}"
        elif job.overtime:
            walltime = job.description.walltime if job.description else None
            state, detail = JobState.FAILED, f"walltime of {walltime:g} s exceeded: {how}"
        else:
            state = JobState.DONE if rc == 0 else JobState.FAILED
            detail = how
        if job.kill_timer is not None and job.pid is not None and not _group_alive(job.pid):
            job.kill_timer.cancel()
            job.kill_timer = None
        self._finish(job, state, detail, exit_code=rc, stdout=stdout, stderr=stderr)

    def _finish(
        self,
        job: _Job,
        state: JobState,
        detail: str,
        exit_code: int | None = None,
        stdout: bytes | None = None,
        stderr: bytes | None = None,
    ) -> None:
        if job.state.final:
            return
        info = job.set(state, detail, exit_code, stdout, stderr)
        if job.walltime_timer is not None:
            job.walltime_timer.cancel()
            job.walltime_timer = None
        if not job.finished.done():
            job.finished.set_result(None)
        if job.go is not None and not job.go.done():
            job.go.set_result(None)
        if job.holds_slot:
            job.holds_slot = False
            self._active -= 1
            self._admit()
        self.publish(info)

    def _admit(self) -> None:
        """Give free slots to queued jobs, in submission order."""
        while self._queue and (self.max_running is None or self._active < self.max_running):
            job = self._queue.popleft()
            if job.state is not JobState.QUEUED or job.go is None or job.go.done():
                continue  # held or cancelled since it was queued
            job.holds_slot = True
            self._active += 1
            job.go.set_result(None)

    # -- jobs found again ----------------------------------------------------------------
    def _adopt(self, record: records.Record) -> _Job:
        """Know a job from its record (submitted elsewhere); follow it until it ends."""
        job = _Job(record.id, None, record.token or "")
        job.own = False
        job.leader = record.leader
        job.pid = None if record.leader is None else record.leader.pid
        job.info = record.info()
        self._register(job)
        if not job.state.final:
            self._follow_soon(job)
        elif not job.finished.done():
            job.finished.set_result(None)
        return job

    def _follow_soon(self, job: _Job) -> None:
        self.env.spawn(functools.partial(self._follow, job), name=f"aiores-local-follow-{job.id}")

    async def _follow(self, job: _Job) -> None:
        """Wait for a followed job's leader to end, then publish what its record says."""
        delay = FOLLOW_FIRST
        try:
            while not job.finished.done():
                record = await asyncio.to_thread(records.read, self.jobs_dir, job.id)
                if record is None or job.finished.done():
                    return  # reaped meanwhile, or no longer followed
                job.leader = record.leader
                info = record.info()
                if info.state.final:
                    job.pid = None if record.leader is None else record.leader.pid
                    self._finish(
                        job, info.state, info.state_detail, info.exit_code, info.stdout, info.stderr
                    )
                    return
                if record.leader_alive and record.leader is not None:
                    await self._leader_ended(job, record.leader)
                    delay = FOLLOW_FIRST
                else:  # being started, or its end is being recorded: soon
                    await asyncio.wait([job.finished], timeout=delay)
                    delay = min(FOLLOW_LONGEST, delay * 2)
        except Exception as exc:  # a bug here must not break the session's task group
            log.exception("local job %s: following it failed", job.id)
            self._finish(job, JobState.FAILED, f"aiores-local internal error: {exc!r}")

    async def _leader_ended(self, job: _Job, leader: records.Identity) -> None:
        """Return once ``leader`` has ended (or the job is no longer followed)."""
        try:
            fd = await asyncio.to_thread(records.open_pidfd, leader)
        except (AttributeError, OSError):  # no pidfds here: look now and then
            while not job.finished.done() and await asyncio.to_thread(leader.alive):
                await asyncio.wait([job.finished], timeout=POLL_WITHOUT_PIDFD)
            return
        if fd is None:
            return
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not ended.done():
                ended.set_result(None)

        loop.add_reader(fd, readable)
        try:
            await asyncio.wait([ended, job.finished], return_when=asyncio.FIRST_COMPLETED)
        finally:
            loop.remove_reader(fd)
            os.close(fd)
            ended.cancel()

    # -- queries -----------------------------------------------------------------------
    async def describe(self, ids: Sequence[str]) -> Mapping[str, JobInfo]:
        """The current state of each id; unknown ids are left out.

        Ids this adaptor does not know are looked up in the job records (a job
        submitted by another program, or another endpoint): found, they are known
        from then on and followed until they end.
        """
        jobs = self._jobs
        unknown = [id for id in ids if id not in jobs and records.ID.fullmatch(id)]
        if unknown:
            for record in await self._records(records.read_many, self.jobs_dir, unknown):
                if record.id not in jobs:
                    self._adopt(record)
        return {
            id: job.info
            for id in ids
            if (job := jobs.get(id)) is not None and job.state is not JobState.NEW
        }

    async def find(self, token: str) -> Sequence[JobInfo]:
        """Every job submitted under ``token`` and not reaped, by any program.

        A job whose submit was cancelled while it started is waited for: it is
        returned once stopped (CANCELED).
        """
        for id in list(self._by_token.get(token, ())):
            job = self._jobs.get(id)
            if job is not None and job.abandoned:
                # A shared future (the job's end): a cancelled find stops only its wait.
                await asyncio.shield(job.finished)
        for record in await self._records(records.find, self.jobs_dir, token):
            if record.id not in self._jobs:
                self._adopt(record)
        return [
            job.info
            for id in self._by_token.get(token, ())
            if (job := self._jobs[id]).state is not JobState.NEW
        ]

    async def list(self) -> Sequence[JobInfo]:
        """Every job not reaped: this adaptor's, and every recorded one (without output)."""
        ids = await self._records(records.list_ids, self.jobs_dir)
        unknown = [id for id in ids if id not in self._jobs]
        found = await self._records(records.read_many, self.jobs_dir, unknown, output=False)
        ended: builtins.list[JobInfo] = []
        for record in found:
            if record.problem is not None:
                log.warning("local job %s: not listed: %s", record.id, record.problem)
                continue
            info = record.info()
            if info.state.final:
                ended.append(info)
            elif record.id not in self._jobs:
                self._adopt(record)
        known = [job.info for job in self._jobs.values() if job.state is not JobState.NEW]
        return known + ended

    async def _records(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn`` (a reader of the records) in a thread.

        Raises:
            PermissionDenied: the jobs directory may not be read or changed.
            NoSuccess: it cannot be for another reason (not a directory, read-only).
        """
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except OSError as exc:
            where = exc.filename or self.jobs_dir
            if isinstance(exc, PermissionError):
                raise PermissionDenied(f"local job records {where}: {exc.strerror}") from exc
            raise NoSuccess(f"local job records {where}: {exc.strerror}") from exc

    def _get(self, id: str) -> _Job:
        try:
            return self._jobs[id]
        except KeyError:
            raise missing("job", id, self.url) from None

    async def _known(self, id: str) -> _Job:
        """The job ``id``, looked up in the records if this adaptor does not know it."""
        if id not in self._jobs:
            await self.describe([id])
        return self._get(id)

    # -- signals -----------------------------------------------------------------------
    async def _signal(
        self,
        job: _Job,
        signals: Sequence[int],
        *,
        mark: str | None,
        ended: bool = False,
        on_sent: Callable[[], None] | None = None,
    ) -> bool:
        """Signal the job's group (marking its record first); False if it has ended.

        A job this adaptor's keeper started is signalled by the keeper, its parent:
        while the keeper has not reaped it, its pid cannot be another's. A followed
        job is signalled only while its leader is the recorded process.

        ``on_sent`` runs on the loop once the signal was sent. Cancelling this once the
        keeper was asked does not withdraw the request: the signal is sent whole and
        ``on_sent`` runs all the same (a signal is never half sent, nor sent unsaid).
        A record that cannot be marked (a read-only jobs directory) does not stop the
        signal: it is sent, unmarked, with a warning logged.

        Raises:
            NoSuccess: the keeper cannot be heard, or the signal could not be sent.
            PermissionDenied: the job's processes may not be signalled by this user.
        """
        if job.own:
            keeper = self._keeper
            if keeper is None:
                return False

            def answered(answer: Mapping[str, Any]) -> None:
                if answer.get("sent") and on_sent is not None:
                    on_sent()

            answer = await keeper.request(
                {
                    "op": "signal",
                    "id": job.id,
                    "signals": list(signals),
                    "mark": mark,
                    "ended": ended,
                },
                answered,
            )
            if "error" in answer:
                why = answer["error"].get("strerror")
                raise NoSuccess(f"cannot signal local job {job.id}: {why}")
            return bool(answer.get("sent"))
        try:
            if job.leader is None:  # its start was cut off: look for its processes
                sent = await asyncio.to_thread(
                    records.signal_unrecorded, self.jobs_dir, job.id, signals, mark
                )
            else:
                sent = await asyncio.to_thread(
                    records.signal_group, self.jobs_dir, job.id, job.leader, signals, mark
                )
        except OSError as exc:
            raise _record_error(job.id, exc) from exc
        if sent and on_sent is not None:
            on_sent()
        return sent

    def _signal_soon(
        self, job: _Job, signals: Sequence[int], *, mark: str | None, ended: bool = False
    ) -> None:
        """:meth:`_signal`, from a loop callback."""
        if job.own and self._keeper is not None:
            self._keeper.request(
                {
                    "op": "signal",
                    "id": job.id,
                    "signals": list(signals),
                    "mark": mark,
                    "ended": ended,
                }
            )
            return

        async def send() -> None:
            await self._signal(job, signals, mark=mark, ended=ended)

        self.env.spawn(send, name=f"aiores-local-signal-{job.id}")

    def _terminate(self, job: _Job) -> builtins.list[int]:
        """Arm the SIGKILL after the grace period; the signals to send now."""
        if self.grace == 0:
            job.killed = True
            return [signal.SIGKILL]
        job.kill_timer = job.finished.get_loop().call_later(self.grace, self._kill, job)
        if job.state is JobState.SUSPENDED:
            return [signal.SIGTERM, signal.SIGCONT]  # a stopped process acts on TERM once continued
        return [signal.SIGTERM]

    def _walltime_expired(self, job: _Job) -> None:
        job.walltime_timer = None
        if not job.state.final and job.kill_timer is None and not job.killed:
            job.overtime = True
            self._signal_soon(job, self._terminate(job), mark=None)

    def _kill(self, job: _Job) -> None:
        # The group may outlive its leader (children that ignore SIGTERM): kill it all.
        job.kill_timer = None
        job.killed = not job.state.final
        self._signal_soon(job, [signal.SIGKILL], mark=None, ended=True)

    # -- control -----------------------------------------------------------------------
    async def cancel(self, id: str) -> None:
        """Stop the job: SIGTERM to its process group, SIGKILL after the grace period.

        A held or queued job ends CANCELED at once; a running one ends CANCELED when
        its process exits (this returns once the signal is sent). A job submitted by
        another program is found by its record and stopped the same way (the SIGKILL
        comes from this program: it must run through the grace period). A record that
        cannot be marked (a read-only jobs directory) does not stop the cancel: the
        job is signalled, unmarked (a later program may read it FAILED, not CANCELED),
        and a warning is logged. A job whose keeper died before recording its leader
        is found by its ``AIORES_JOB`` marker and signalled the same way.

        Cancelling this call once the signal was asked for does not withdraw it.

        Raises:
            DoesNotExist: no such job.
            IncorrectState: the job has already ended.
        """
        job = await self._known(id)
        if job.state.final:
            raise IncorrectState(f"job {id} has already ended ({job.state}): nothing to cancel")
        job.cancel_requested = True
        if job.pid is None and job.own:
            self._finish(job, JobState.CANCELED, f"canceled before it started ({job.state})")
            return
        if job.kill_timer is not None or job.killed:
            return  # already terminating
        signals = self._terminate(job)
        await self._signal(job, signals, mark=CANCELED, ended=signals == [signal.SIGKILL])

    async def suspend(self, id: str) -> None:
        """Stop the running job's process group with SIGSTOP (state SUSPENDED).

        Cancelling this call once the signal was asked for does not withdraw it: the
        signal is sent and the job published SUSPENDED all the same.

        Raises:
            DoesNotExist: no such job.
            IncorrectState: the job is not RUNNING.
        """
        await self._signal_running(id, "suspend", signal.SIGSTOP, _R, JobState.SUSPENDED)

    async def resume(self, id: str) -> None:
        """Continue the suspended job's process group with SIGCONT (state RUNNING).

        Cancelling this call once the signal was asked for does not withdraw it: the
        signal is sent and the job published RUNNING all the same.

        Raises:
            DoesNotExist: no such job.
            IncorrectState: the job is not SUSPENDED.
        """
        await self._signal_running(id, "resume", signal.SIGCONT, JobState.SUSPENDED, _R)

    async def _signal_running(
        self, id: str, what: str, signum: int, before: JobState, after: JobState
    ) -> None:
        job = await self._known(id)
        if job.state is not before or job.pid is None:
            raise IncorrectState(f"cannot {what} job {id}: it is {job.state}, not {before}")
        mark = SUSPENDED if after is JobState.SUSPENDED else RESUMED

        def sent_now() -> None:  # also when this call was cancelled after asking the keeper
            if not job.state.final:
                self.publish(job.set(after, f"{after.name.lower()} ({signal_name(signum)})"))

        sent = await self._signal(job, [signum], mark=mark, on_sent=sent_now)
        if job.state.final or not sent:
            raise IncorrectState(f"cannot {what} job {id}: it has ended")

    async def hold(self, id: str) -> None:
        """Keep a QUEUED job from starting (state HELD); a HELD job stays held.

        Raises:
            DoesNotExist: no such job.
            IncorrectState: the job has started or ended (suspend a running job instead).
        """
        job = await self._known(id)
        if job.state is JobState.HELD:
            return
        if job.state is not JobState.QUEUED or job.go is None or job.go.done():
            raise IncorrectState(
                f"cannot hold job {id}: it is {job.state}; only QUEUED jobs can be held "
                "(suspend a running job instead)"
            )
        self.publish(job.set(JobState.HELD, "held: waiting for release"))

    async def release(self, id: str) -> None:
        """Let a HELD job start: it runs when a slot is free (QUEUED until then).

        Raises:
            DoesNotExist: no such job.
            IncorrectState: the job is not HELD (a QUEUED job is left as it is).
        """
        job = await self._known(id)
        if job.state is JobState.QUEUED:
            return
        if job.state is not JobState.HELD:
            raise IncorrectState(f"cannot release job {id}: it is {job.state}, not HELD")
        self.publish(job.set(JobState.QUEUED, self._queued_detail()))
        self._queue.append(job)
        self._admit()

    async def reap(self, id: str) -> None:
        """Forget an ended job: its record, its captured output.

        Raises:
            DoesNotExist: no such job.
            IncorrectState: the job has not ended.
        """
        job = await self._known(id)
        if not job.state.final:
            raise IncorrectState(f"cannot reap job {id}: it is still {job.state}")
        self._forget(job)
        # Also without a pid: a job whose start was cut off has a record all the same.
        await self._records(records.remove, self.jobs_dir, id)

    # -- lifetime ----------------------------------------------------------------------
    async def aclose(self) -> None:
        """Stop watching jobs; running jobs keep running, held and queued ones are canceled.

        Running jobs are not signalled (a cancel already under way is finished with
        SIGKILL). The keeper records how they end; a later program finds them. Every
        task of this adaptor returns, so the session's task group can end.
        """
        self._closed = True
        for job in list(self._jobs.values()):
            if job.state.final or job.state is JobState.NEW:
                continue
            if job.pid is None and job.own:
                job.cancel_requested = True
                self._finish(
                    job, JobState.CANCELED, "canceled: the session closed before it started"
                )
                continue
            if job.kill_timer is not None and not job.own:  # a cancel under way: finish it now
                job.kill_timer.cancel()
                job.kill_timer = None
                await self._signal(job, [signal.SIGKILL], mark=None)
            self._detach(job)
        self._queue.clear()
        if self._keeper is not None:
            self._keeper.close()

    def _detach(self, job: _Job) -> None:
        """Stop watching a running job (a cancel under way is finished with SIGKILL)."""
        if job.state.final or job.state is JobState.NEW or job.pid is None:
            return
        if job.kill_timer is not None:
            job.kill_timer.cancel()
            job.kill_timer = None
            if job.own:
                self._signal_soon(job, [signal.SIGKILL], mark=None, ended=True)
        if job.walltime_timer is not None:
            job.walltime_timer.cancel()
            job.walltime_timer = None
        job.set(job.state, f"{job.info.state_detail}; no longer watched (session closed)")
        if not job.finished.done():
            job.finished.set_result(None)  # followers return

    def _keeper_detached(self) -> None:
        """The session stopped this adaptor's listening: its jobs run on, unwatched."""
        for job in list(self._jobs.values()):
            if job.own:
                self._detach(job)
