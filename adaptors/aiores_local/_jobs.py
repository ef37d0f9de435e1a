"""Jobs as local processes: the ``local://`` job service.

Each job is one process in its own session (process group), started without a shell
unless the description is a shell command. Its exit is pushed to the core the moment
it happens (a pidfd on the event loop; nothing polls), along with its captured output.
Per job there is one watcher task in the session's task group and no thread.

With ``local://?max_running=N`` at most N jobs run at once; the others wait QUEUED and
start, in submission order, as soon as a slot frees. ``submit(..., hold=True)`` makes a
HELD job that starts only when released. A job that runs past its description's
``walltime`` is stopped as a cancel would stop it and ends FAILED.

Lifetimes: a running job outlives the session, as DESIGN.md asks. When the session
closes, :meth:`LocalJobAdaptor.aclose` stops watching running jobs without signalling
them (a daemon thread reaps each when it ends). Their captured output is dropped and the
pipes closed, so a job that writes to a captured stream afterwards gets EPIPE/SIGPIPE:
give jobs that must outlive the session ``stdout``/``stderr`` files. Held and queued
jobs exist only in this process, so closing the session ends them CANCELED.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
from collections import deque
from collections.abc import Mapping, Sequence

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

from ._options import check_grace, check_max_running, parse_options
from ._process import (
    Child,
    SpawnGate,
    check_startable,
    merged_environment,
    signal_name,
    spawn,
    spawn_error,
)

__all__ = ["LocalJobAdaptor"]

log = logging.getLogger("aiores.local")

_R = JobState.RUNNING
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


class _Job:
    """One job's record (slots: thousands of these may exist at once)."""

    __slots__ = (
        "cancel_requested",
        "child",
        "description",
        "finished",
        "go",
        "holds_slot",
        "id",
        "info",
        "kill_timer",
        "killed",
        "overtime",
        "token",
        "walltime_timer",
    )

    def __init__(self, id: str, description: JobDescription, token: str) -> None:
        self.id = id
        self.description = description
        self.token = token
        self.child: Child | None = None
        self.info: JobInfo
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.go: asyncio.Future[None] | None = None  # set for jobs that start later
        self.holds_slot = False
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
            extra={} if self.child is None else {"pid": self.child.pid},
        )
        return self.info


def _open_outputs(description: JobDescription) -> tuple[int | None, int | None]:
    """Blocking: open the job's output files (relative to its working directory)."""
    opened: dict[str, int] = {}
    fds: list[int | None] = []
    try:
        for which, path in (("stdout", description.stdout), ("stderr", description.stderr)):
            if path is None:
                fds.append(None)
                continue
            full = os.path.join(description.working_directory or "", path)
            if full not in opened:
                try:
                    opened[full] = os.open(full, _FILE_FLAGS, 0o666)
                except OSError as exc:
                    raise _output_error(which, path, exc) from exc
            fds.append(opened[full])
    except BaseException:
        for fd in opened.values():
            os.close(fd)
        raise
    return fds[0], fds[1]


def _output_error(which: str, path: str, exc: OSError) -> AioresError:
    if isinstance(exc, FileNotFoundError):
        return DoesNotExist(f"{which} file {path!r}: its directory does not exist")
    if isinstance(exc, PermissionError):
        return PermissionDenied(f"{which} file {path!r} cannot be written: {exc.strerror}")
    if isinstance(exc, IsADirectoryError):
        return BadParameter(f"{which} file {path!r} is a directory")
    return NoSuccess(f"{which} file {path!r} cannot be opened: {exc.strerror}")


def _close_outputs(fds: tuple[int | None, int | None]) -> None:
    for fd in {fd for fd in fds if fd is not None}:
        os.close(fd)


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
        self._jobs: dict[str, _Job] = {}
        self._by_token: dict[str, list[str]] = {}
        self._queue: deque[_Job] = deque()
        self._active = 0  # jobs holding a slot (running, suspended or starting)
        self._devnull = -1
        self._closed = False
        self._gate = SpawnGate()

    async def open(self) -> None:
        """Open ``/dev/null`` once for the standard input of every job."""
        if self._devnull < 0:
            self._devnull = await asyncio.to_thread(os.open, os.devnull, os.O_RDWR | os.O_CLOEXEC)

    # -- submit ------------------------------------------------------------------------
    async def submit(self, description: JobDescription, token: str, *, hold: bool) -> JobInfo:
        """Start the job now, or queue it (HELD if ``hold``, QUEUED if no slot is free).

        Returns:
            Its first state: RUNNING, QUEUED or HELD.

        Raises:
            DoesNotExist: the executable, the working directory or an output file's
                directory does not exist.
            PermissionDenied: the executable is not executable, the working directory
                cannot be entered, or an output file cannot be written.
            BadParameter: an output file is a directory.
            NoSuccess: the process could not start for another reason (such as too
                many open files).
            IncorrectState: the adaptor is closed.

        Cancelling it before the process starts leaves nothing behind; once the process
        has started (the last step), the job exists and :meth:`find` returns it.
        """
        if self._closed:
            raise IncorrectState(f"{self.url} job service is closed")
        if self._devnull < 0:
            await self.open()
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
        else:
            job.holds_slot = True  # taken before any await, so no other submit takes it
            self._active += 1
            try:
                await self._gate.turn()
                files: tuple[int | None, int | None] = (None, None)
                if description.stdout is not None or description.stderr is not None:
                    files = await self._open_files(description)
                if self._closed:
                    _close_outputs(files)
                    raise IncorrectState(f"{self.url} job service closed during the submit")
                self._start(job, files)  # raises a mapped error if the process cannot start
            except BaseException:
                job.holds_slot = False
                self._active -= 1
                self._admit()
                raise
        self._jobs[job.id] = job
        self._by_token.setdefault(token, []).append(job.id)
        self.env.spawn(functools.partial(self._watch, job), name=f"aiores-local-job-{job.id}")
        if job.go is not None:
            self._admit()  # a slot may have freed while the checks ran
        return job.info

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

    def _start(self, job: _Job, files: tuple[int | None, int | None]) -> None:
        """Start the job's process now (sync; it holds a slot); raises a mapped error."""
        desc = job.description
        try:
            child = spawn(
                (desc.executable, *desc.arguments),
                cwd=desc.working_directory,
                env=merged_environment(desc.environment),
                stdin=desc.stdin_bytes,
                stdout=files[0],
                stderr=files[1],
                limit=desc.capture_limit,
                devnull=self._devnull,
                on_done=functools.partial(self._exited, job),
            )
        except OSError as exc:
            raise spawn_error(exc, desc.executable, desc.working_directory) from exc
        finally:
            _close_outputs(files)
        job.child = child
        job.set(_R, "running")
        if desc.walltime is not None:
            job.walltime_timer = child.loop.call_later(desc.walltime, self._walltime_expired, job)

    async def _open_files(self, description: JobDescription) -> tuple[int | None, int | None]:
        """Open the job's output files in a thread.

        If the caller is cancelled meanwhile, the cancellation propagates at once and
        closing what the thread opens (once it ends) is one of the session's cleanups,
        which the session waits for when it closes.
        """
        return await self.env.cleanups.to_thread(
            _open_outputs,
            description,
            dispose=_close_outputs,
            what="closing the output files of a cancelled local job start",
        )

    # -- the watcher -----------------------------------------------------------------
    async def _watch(self, job: _Job) -> None:
        """Start a deferred job when its turn comes, then wait for its end."""
        try:
            if job.go is not None:
                await job.go
                if job.state.final:
                    return
                await self._start_later(job)
            await job.finished
        except asyncio.CancelledError:
            self._detach(job)
            raise
        except Exception as exc:  # a bug here must not break the session's task group
            log.exception("local job %s: watcher failed", job.id)
            self._finish(job, JobState.FAILED, f"aiores-local internal error: {exc!r}")

    async def _start_later(self, job: _Job) -> None:
        desc = job.description
        try:
            await self._gate.turn()
            files: tuple[int | None, int | None] = (None, None)
            if desc.stdout is not None or desc.stderr is not None:
                files = await self._open_files(desc)
            if job.state.final:  # cancelled while waiting for a turn or the files
                _close_outputs(files)
                return
            self._start(job, files)
        except AioresError as exc:
            self._finish(job, JobState.FAILED, f"could not start: {exc}")
            return
        self.publish(job.info)

    def _exited(self, job: _Job, child: Child) -> None:
        """The process ended and its pipes closed (a loop callback)."""
        rc = child.returncode
        assert rc is not None
        how = f"exited {rc}" if rc >= 0 else f"killed by {signal_name(-rc)}"
        if job.killed:
            how += f" after the {self.grace:g} s grace period"
        elif rc >= 0 and (job.cancel_requested or job.overtime):
            how += " after SIGTERM"
        if job.cancel_requested:
            state, detail = JobState.CANCELED, f"canceled: {how}"
        elif job.overtime:
            walltime = job.description.walltime
            state, detail = JobState.FAILED, f"walltime of {walltime:g} s exceeded: {how}"
        else:
            state = JobState.DONE if rc == 0 else JobState.FAILED
            detail = how
        if job.kill_timer is not None and not child.group_alive():
            job.kill_timer.cancel()
            job.kill_timer = None
        self._finish(
            job,
            state,
            detail,
            exit_code=rc,
            stdout=None if child.out is None else child.out.take(),
            stderr=None if child.err is None else child.err.take(),
        )

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

    def _detach(self, job: _Job) -> None:
        """Stop watching ``job`` without touching its process."""
        if job.child is not None and not job.child.done:
            if job.kill_timer is not None:  # a cancel is under way: finish it now
                job.kill_timer.cancel()
                job.kill_timer = None
                job.child.signal(signal.SIGKILL)
            if job.walltime_timer is not None:
                job.walltime_timer.cancel()
                job.walltime_timer = None
            job.child.detach()
            job.set(job.state, f"{job.info.state_detail}; no longer watched (session closed)")
        if not job.finished.done():
            job.finished.set_result(None)

    # -- queries -----------------------------------------------------------------------
    async def describe(self, ids: Sequence[str]) -> Mapping[str, JobInfo]:
        """The current state of each known id (unknown ids are left out)."""
        jobs = self._jobs
        return {id: jobs[id].info for id in ids if id in jobs}

    async def find(self, token: str) -> Sequence[JobInfo]:
        """Every job submitted under ``token`` and not reaped."""
        return [self._jobs[id].info for id in self._by_token.get(token, ())]

    async def list(self) -> Sequence[JobInfo]:
        """Every job this adaptor knows (until reaped)."""
        return [job.info for job in self._jobs.values()]

    def _get(self, id: str) -> _Job:
        try:
            return self._jobs[id]
        except KeyError:
            raise missing("job", id, self.url) from None

    # -- control -----------------------------------------------------------------------
    async def cancel(self, id: str) -> None:
        """Stop the job: SIGTERM to its process group, SIGKILL after the grace period.

        A held or queued job ends CANCELED at once; a running one ends CANCELED when
        its process exits (this returns once the signal is sent).

        Raises:
            DoesNotExist: no such job.
            IncorrectState: the job has already ended.
        """
        job = self._get(id)
        if job.state.final:
            raise IncorrectState(f"job {id} has already ended ({job.state}): nothing to cancel")
        job.cancel_requested = True
        if job.child is None:
            self._finish(job, JobState.CANCELED, f"canceled before it started ({job.state})")
            return
        self._terminate(job)

    def _terminate(self, job: _Job) -> None:
        """SIGTERM the job's group now and SIGKILL it after the grace period."""
        child = job.child
        assert child is not None
        if job.kill_timer is not None or job.killed:
            return  # already terminating
        if self.grace == 0:
            self._kill(job)
            return
        child.signal(signal.SIGTERM)
        if job.state is JobState.SUSPENDED:
            child.signal(signal.SIGCONT)  # a stopped process acts on SIGTERM only once continued
        job.kill_timer = child.loop.call_later(self.grace, self._kill, job)

    def _walltime_expired(self, job: _Job) -> None:
        job.walltime_timer = None
        if not job.state.final and job.child is not None and not job.child.done:
            job.overtime = True
            self._terminate(job)

    def _kill(self, job: _Job) -> None:
        # The group may outlive its leader (children that ignore SIGTERM): kill it all.
        job.kill_timer = None
        if job.child is not None and not job.child.detached:
            job.killed = not job.state.final
            job.child.signal(signal.SIGKILL)

    async def suspend(self, id: str) -> None:
        """Stop the running job's process group with SIGSTOP (state SUSPENDED).

        Raises:
            DoesNotExist: no such job.
            IncorrectState: the job is not RUNNING.
        """
        self._signal_running(id, "suspend", signal.SIGSTOP, _R, JobState.SUSPENDED)

    async def resume(self, id: str) -> None:
        """Continue the suspended job's process group with SIGCONT (state RUNNING).

        Raises:
            DoesNotExist: no such job.
            IncorrectState: the job is not SUSPENDED.
        """
        self._signal_running(id, "resume", signal.SIGCONT, JobState.SUSPENDED, _R)

    def _signal_running(
        self, id: str, what: str, signum: int, before: JobState, after: JobState
    ) -> None:
        job = self._get(id)
        if job.state is not before or job.child is None or job.child.done:
            raise IncorrectState(f"cannot {what} job {id}: it is {job.state}, not {before}")
        job.child.signal(signum)
        self.publish(job.set(after, f"{after.name.lower()} ({signal_name(signum)})"))

    async def hold(self, id: str) -> None:
        """Keep a QUEUED job from starting (state HELD); a HELD job stays held.

        Raises:
            DoesNotExist: no such job.
            IncorrectState: the job has started or ended (suspend a running job instead).
        """
        job = self._get(id)
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
        job = self._get(id)
        if job.state is JobState.QUEUED:
            return
        if job.state is not JobState.HELD:
            raise IncorrectState(f"cannot release job {id}: it is {job.state}, not HELD")
        self.publish(job.set(JobState.QUEUED, self._queued_detail()))
        self._queue.append(job)
        self._admit()

    async def reap(self, id: str) -> None:
        """Forget an ended job and its captured output.

        Raises:
            DoesNotExist: no such job.
            IncorrectState: the job has not ended.
        """
        job = self._get(id)
        if not job.state.final:
            raise IncorrectState(f"cannot reap job {id}: it is still {job.state}")
        del self._jobs[id]
        ids = self._by_token.get(job.token)
        if ids is not None:
            ids.remove(id)
            if not ids:
                del self._by_token[job.token]

    # -- lifetime ----------------------------------------------------------------------
    async def aclose(self) -> None:
        """Stop watching jobs; running jobs keep running, held and queued ones are canceled.

        Running jobs are not signalled (a cancel already under way is finished with
        SIGKILL). Their captured output is dropped, see the module docstring. Every
        watcher task returns, so the session's task group can end.
        """
        self._closed = True
        for job in list(self._jobs.values()):
            if job.state.final:
                continue
            if job.child is None:
                job.cancel_requested = True
                self._finish(
                    job, JobState.CANCELED, "canceled: the session closed before it started"
                )
            else:
                self._detach(job)
        self._queue.clear()
        if self._devnull >= 0:
            os.close(self._devnull)
            self._devnull = -1
