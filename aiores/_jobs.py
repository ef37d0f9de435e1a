"""Job services and jobs: submit, arrays with max_parallel, control, wait_any, as_completed."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import TYPE_CHECKING, Any, TypeVar, overload

from . import _validate as check
from ._concurrency import TaskSet, errors, fail_after, settle
from ._descriptions import JobDescription
from ._exceptions import (
    BadParameter,
    DoesNotExist,
    FanOutError,
    IncorrectState,
    NoSuccess,
    NotSupported,
    Timeout,
)
from ._states import JobState, ResourceState
from ._url import URL, join_id, native_id, same_endpoint
from ._watch import Tracked, Watcher
from .adaptor import AdaptorPlugin, Control, JobAdaptor, JobInfo, MachineInfo, QueueInfo

if TYPE_CHECKING:
    from ._journal import Journal
    from ._session import Session

__all__ = ["Job", "JobArray", "JobService", "as_completed", "wait_any"]

#: The environment variable that carries a job's index in its array.
ARRAY_INDEX_VARIABLE = "AIORES_ARRAY_INDEX"

#: What a control acts on: a job's adaptor and its backend id.
_Target = tuple[JobAdaptor, str]


class JobService:
    """Submits and finds jobs at one endpoint (``session.job_service(url)``)."""

    def __init__(self, session: Session, url: URL, plugin: AdaptorPlugin) -> None:
        self.session = session
        self.url = url
        self._plugin = plugin

    def __repr__(self) -> str:
        return f"<aiores.JobService {self.url}>"

    async def __aenter__(self) -> JobService:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def _open(self) -> tuple[JobAdaptor, Watcher]:
        endpoint = await self.session._open_endpoint(self._plugin, self.url, "jobs")
        assert isinstance(endpoint.adaptor, JobAdaptor)
        return endpoint.adaptor, endpoint.watcher

    def _job(self, info: JobInfo, watcher: Watcher, description: JobDescription | None) -> Job:
        known = watcher.lookup(info.id)
        if isinstance(known, Job):
            known._apply(info)
            return known
        job = Job(self, watcher, description, info)
        # A job found again: the journal learns of it too (keeping what it holds).
        job._remember(url=str(self.url), token=info.token, data={"description": description})
        return job

    async def _reaped(self, native: str) -> bool:
        """Whether the journal records the job ``native`` of this endpoint as reaped."""
        journal = self.session.journal
        if journal is None:
            return False
        return any(
            row["data"].get("reaped") is True and same_endpoint(row["url"], self.url)
            for row in await journal.records("job", [native])
        )

    async def submit(self, description: JobDescription, *, hold: bool = False) -> Job:
        """Submit one job; returns once the backend accepted it.

        Submits gathered by the thousand take their steps at most 16 per loop
        iteration (the session's admission), so the loop keeps turning meanwhile.

        Args:
            description: What to run.
            hold: Submit it HELD: it starts only after ``job.release()``.

        Raises:
            BadParameter: not a JobDescription.
            DoesNotExist, PermissionDenied: the executable or working directory is
                missing or not usable.
            NotSupported: ``hold`` where the backend cannot hold, or
                ``description.native`` options where the backend takes none.

        Cancelling it after the backend may have accepted the job cancels that job
        (shielded, bounded), then re-raises the cancellation.
        """
        if not isinstance(description, JobDescription):
            raise BadParameter(
                f"submit needs an aiores.JobDescription, not {type(description).__name__}"
            )
        check.flag(hold, "hold")
        await self.session._submits.turn()
        adaptor, watcher = await self._open()
        if hold and not adaptor.supports_hold:
            raise NotSupported(f"{self.url.scheme}:// cannot submit jobs on hold")
        self._check_native(adaptor, description)
        job = Job(self, watcher, description, None)
        await job._submit(adaptor, hold)
        return job

    async def submit_array(
        self,
        description: JobDescription,
        count: int | None = None,
        indices: Iterable[int] | None = None,
        max_parallel: int | None = None,
    ) -> JobArray:
        """Submit one job per index, each seeing its index in ``$AIORES_ARRAY_INDEX``.

        Where the backend has arrays of its own (Slurm's ``sbatch --array``), the
        whole array is one backend call and the backend keeps ``max_parallel``:
        every member is accepted (QUEUED) when this returns. Elsewhere aiores
        submits the members itself, as described below.

        Args:
            description: What each job runs.
            count: Indices ``0 .. count-1`` (give this or ``indices``).
            indices: Explicit indices.
            max_parallel: At most this many of them unfinished at once; the rest are
                submitted (or started, by a backend's own arrays) as earlier ones
                finish, in index order.

        Returns:
            The array's jobs, in index order.

        An array holds at most 1,000,000 jobs (``aiores.adaptor.validate.MAX_COUNT``),
        checked before any is made; indices are ints >= 0.

        Without native arrays, it returns once the first ``max_parallel`` (or all)
        jobs are accepted; the rest are submitted in the session's background. A
        later submission that fails leaves that job FAILED with the error in
        ``state_detail``.

        Raises:
            BadParameter: a bad description, count, indices or max_parallel (nothing
                was submitted).
            NotSupported: ``description.native`` options where the backend takes none.
            AioresError: the array (or a job of the first batch) was refused; the
                ones accepted were cancelled (shielded, bounded).

        Cancelling it while the array (or its first batch) is being submitted
        cancels the jobs already accepted (found by the submission's idempotency
        token; shielded, bounded by ``Session.cleanup_timeout``; the session waits
        for that on close) and those being submitted, then re-raises.
        """
        if not isinstance(description, JobDescription):
            raise BadParameter(
                f"submit_array needs an aiores.JobDescription, not {type(description).__name__}"
            )
        if (count is None) == (indices is None):
            raise BadParameter("submit_array needs exactly one of count= or indices=")
        if count is not None:
            index_list = builtins.list(range(check.count(count, "count", max=check.MAX_COUNT)))
        else:
            assert indices is not None
            index_list = check.sized(indices, "indices")
            if not index_list:
                raise BadParameter("indices must not be empty")
            for i in index_list:
                check.count(i, "indices", min=0)
            if len(set(index_list)) != len(index_list):
                raise BadParameter("indices must not repeat")
        if max_parallel is not None:
            check.count(max_parallel, "max_parallel")
        adaptor, watcher = await self._open()
        self._check_native(adaptor, description)
        jobs = [
            Job(
                self,
                watcher,
                description.replace(
                    environment={**description.environment, ARRAY_INDEX_VARIABLE: str(index)}
                ),
                None,
                index=index,
            )
            for index in index_list
        ]
        array = JobArray(jobs)
        if adaptor.supports_arrays:
            await self._submit_native_array(adaptor, description, array, max_parallel)
            return array
        limit = max_parallel or len(jobs)
        slots = asyncio.Semaphore(limit)

        async def start(job: Job) -> None:
            await slots.acquire()
            if job.state.final:  # cancelled before it was submitted
                slots.release()
                return
            job._on_final(slots.release)
            await job._submit(adaptor, job._hold_on_submit)

        async def cancel_accepted() -> None:
            await JobArray([j for j in first if j.native_id and not j.state.final]).cancel()

        first, rest = jobs[:limit], jobs[limit:]
        try:
            failures = errors(await settle(start(job) for job in first))
        except asyncio.CancelledError:
            # The caller never gets the array: nothing it made may run on. Those
            # being submitted are released by their own submission's cleanup.
            await self.session.shielded(
                cancel_accepted, what=f"cancelling a cancelled array at {self.url}"
            )
            raise
        if failures:
            # Nothing half-done: cancel the members that were accepted, then raise.
            await self.session.shielded(
                cancel_accepted, what=f"cancelling a failed array at {self.url}"
            )
            raise failures[0]
        if rest:

            async def feed() -> None:
                for job in rest:
                    try:
                        await start(job)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        job._submission_failed(exc)
                    if job.state.final:
                        continue
                    job._watch_until_final()

            for job in first:
                job._watch_until_final()
            self.session.spawn(feed, name=f"aiores-array {self.url}")
        return array

    async def _submit_native_array(
        self,
        adaptor: JobAdaptor,
        description: JobDescription,
        array: JobArray,
        max_parallel: int | None,
    ) -> None:
        """One backend call for the whole array, under one journalled token."""
        indices = [job.index for job in array if job.index is not None]

        async def call(token: str) -> Sequence[JobInfo]:
            infos = await adaptor.submit_array(
                description, token, indices, max_parallel, hold=False
            )
            if len(infos) != len(indices):
                # What it made is found by token and cancelled (guarded_call's release).
                raise NoSuccess(
                    f"{self.url} answered an array of {len(indices)} with {len(infos)} jobs"
                )
            return infos

        infos = await self.session.guarded_call(
            op="submit_array",
            url=str(self.url),
            payload=description,
            count=len(indices),
            call=call,
            release=_releaser(adaptor),
        )
        for job, info in zip(array, infos, strict=True):
            job._accepted(info)

    def _check_native(self, adaptor: JobAdaptor, description: JobDescription) -> None:
        if description.native and not adaptor.accepts_native:
            raise NotSupported(
                f"{self.url.scheme}:// takes no backend options: "
                f"JobDescription.native must be empty, not {list(description.native)!r}"
            )

    async def queues(self) -> builtins.list[QueueInfo]:
        """The queues (Slurm's partitions) of the endpoint, as its backend describes them.

        Returns:
            One :class:`aiores.QueueInfo` per queue (one backend call, e.g. ``sinfo``).

        Raises:
            NotSupported: the backend has no queues (``local://``, ``ssh://``).
            NoSuccess, ConnectionLost, Timeout: the backend could not be asked.
        """
        adaptor, _ = await self._open()
        return builtins.list(await adaptor.queues())

    async def machines(self) -> builtins.list[MachineInfo]:
        """The machines (Slurm's nodes) that run the endpoint's jobs.

        Returns:
            One :class:`aiores.MachineInfo` per machine (one backend call, e.g. ``sinfo``).

        Raises:
            NotSupported: the backend does not describe its machines.
            NoSuccess, ConnectionLost, Timeout: the backend could not be asked.
        """
        adaptor, _ = await self._open()
        return builtins.list(await adaptor.machines())

    async def get(self, job_id: str) -> Job:
        """Reconnect to a job by ``job.id`` (or native id).

        Raises:
            DoesNotExist: the backend does not know it, or it was reaped (here or,
                as the journal says, by another program): a reaped job is forgotten.
            BadParameter: the id belongs to another service's URL.
        """
        native = self._native(job_id)
        adaptor, watcher = await self._open()
        known = watcher.lookup(native)
        if isinstance(known, Job) and not known._is_reaped:
            return known
        if isinstance(known, Job) or await self._reaped(native):
            raise DoesNotExist(f"job {job_id!r} at {self.url} was reaped")
        infos = await adaptor.describe([native])
        if native not in infos:
            raise DoesNotExist(f"{self.url} has no job {job_id!r}")
        return self._job(infos[native], watcher, None)

    def _native(self, job_id: str) -> str:
        return native_id(job_id, self.url, "job")

    async def list(self, state: JobState | None = None) -> builtins.list[Job]:
        """Jobs the endpoint knows (in ``state`` if given)."""
        adaptor, watcher = await self._open()
        return [
            self._job(info, watcher, None)
            for info in await adaptor.list()
            if state is None or info.state is state
        ]


class Job(Tracked[JobState]):
    """A job at a job service; it runs on if the client goes away.

    ``state`` never goes backwards; ``exit_code``, ``stdout`` and ``stderr`` are
    filled once the backend reports them (output only where it was captured).
    """

    _kind = "job"

    def __init__(
        self,
        service: JobService,
        watcher: Watcher,
        description: JobDescription | None,
        info: JobInfo | None,
        *,
        index: int | None = None,
    ) -> None:
        self._service = service
        self._description = description
        self._info = info or JobInfo(id="", state=JobState.NEW)
        self.index = index
        # Set while a submission is under way, done when it ended (either way).
        self._submitting: asyncio.Future[None] | None = None
        # An array member held before it was submitted: submitted HELD.
        self._hold_on_submit = False
        self._is_reaped = False
        super().__init__(self._info.state, watcher, info.id if info else None)

    def __repr__(self) -> str:
        name = self.id if self._native_id else f"unsubmitted job at {self._service.url}"
        return f"<aiores.Job {name} {self._state.name}>"

    __str__ = __repr__

    # -- fields -----------------------------------------------------------------------
    @property
    def id(self) -> str:
        """``[url]-[native id]``; usable with ``JobService.get`` from any process."""
        return join_id(str(self._service.url), self._native_id or "")

    @property
    def native_id(self) -> str | None:
        """The backend's own id (None until submitted)."""
        return self._native_id

    @property
    def service(self) -> JobService:
        return self._service

    @property
    def description(self) -> JobDescription | None:
        """What was submitted (None when reconnected from another process)."""
        return self._description

    @property
    def state_detail(self) -> str:
        return self._info.state_detail

    @property
    def exit_code(self) -> int | None:
        """The exit code once finished (negative: killed by that signal number)."""
        return self._info.exit_code

    @property
    def stdout_bytes(self) -> bytes | None:
        """Captured standard output, if the backend captured it."""
        return self._info.stdout

    @property
    def stderr_bytes(self) -> bytes | None:
        """Captured standard error, if the backend captured it."""
        return self._info.stderr

    @property
    def stdout(self) -> str | None:
        """Captured standard output as text (undecodable bytes replaced)."""
        data = self._info.stdout
        return None if data is None else data.decode("utf-8", "replace")

    @property
    def stderr(self) -> str | None:
        """Captured standard error as text (undecodable bytes replaced)."""
        data = self._info.stderr
        return None if data is None else data.decode("utf-8", "replace")

    @property
    def extra(self) -> Mapping[str, Any]:
        """Backend-specific facts (a local job's ``pid``, a batch job's queue...)."""
        return self._info.extra

    def _on_info(self, info: JobInfo) -> None:
        # Output is reported once by some backends: a later report without it does
        # not erase what was captured.
        if info.stdout is None and self._info.stdout is not None:
            info = dataclasses.replace(info, stdout=self._info.stdout)
        if info.stderr is None and self._info.stderr is not None:
            info = dataclasses.replace(info, stderr=self._info.stderr)
        self._info = info

    def _detail(self) -> str:
        return self._info.state_detail

    def _journal(self) -> Journal | None:
        return self._service.session.journal

    @property
    def _journal_id(self) -> str:
        return self.id

    def _record(self, old: JobState, new: JobState, detail: str) -> None:
        super()._record(old, new, detail)
        if new.final and self._info.exit_code is not None:
            # Listings show it for finished jobs, in any later program.
            self._remember(
                url=str(self._service.url),
                token=self._info.token,
                data={"exit_code": self._info.exit_code},
            )

    # -- submission -------------------------------------------------------------------
    async def _submit(self, adaptor: JobAdaptor, hold: bool) -> None:
        self._submitting = asyncio.get_running_loop().create_future()
        try:
            await self._submit_once(adaptor, hold)
        finally:
            self._submitting.set_result(None)

    async def _submit_once(self, adaptor: JobAdaptor, hold: bool) -> None:
        description = self._description
        assert description is not None
        session = self._service.session

        async def call(token: str) -> Sequence[JobInfo]:
            # Again here: submits that waited together (for the journal) would
            # otherwise all reach the backend in one loop iteration.
            await session._submits.turn()
            return [await adaptor.submit(description, token, hold=hold)]

        (info,) = await session.guarded_call(
            op="submit",
            url=str(self._service.url),
            payload=description,
            count=1,
            call=call,
            release=_releaser(adaptor),
        )
        self._accepted(info)

    def _accepted(self, info: JobInfo) -> None:
        """The backend accepted it as ``info``: named, journalled, watched."""
        description = self._description
        # Named (so the journal records it, NEW, and then its first transition), then
        # the submit's answer, then registered: registering applies anything the
        # backend pushed meanwhile (the job may have ended already).
        self._native_id = info.id
        self._remember(
            url=str(self._service.url),
            token=info.token,
            data={"description": description, "index": self.index},
        )
        self._apply(info)
        self._set_native_id(info.id)

    def _submission_failed(self, error: Exception) -> None:
        self._apply(
            JobInfo(id="", state=JobState.FAILED, state_detail=f"submission failed: {error!r}")
        )

    def _watch_until_final(self) -> None:
        """Keep the watcher feeding this job (for array slots) until it is final."""

        async def watch() -> None:
            with contextlib.suppress(DoesNotExist, IncorrectState, Timeout):
                await self.wait()

        self._service.session.spawn(watch, name=f"aiores-job-watch {self}")

    # -- control ----------------------------------------------------------------------
    async def _submitted(self) -> None:
        """If it is being submitted right now (an array member), wait until it is.

        The future is shared (the submission sets it when it ends, however it ends):
        shielded, so that cancelling this wait never cancels it.
        """
        if self._native_id is None and self._submitting is not None:
            # A shared future (the submission): a cancelled caller stops only its wait.
            await asyncio.shield(self._submitting)

    async def _target(self, what: str) -> tuple[JobAdaptor, str]:
        """The adaptor and backend id ``what`` acts on (IncorrectState if it cannot)."""
        if self._state.final:
            raise IncorrectState(f"cannot {what} {self}: it is {self._state.name}")
        if self._native_id is None:
            raise IncorrectState(f"cannot {what} {self}: it is not submitted yet")
        adaptor, _ = await self._service._open()
        return adaptor, self._native_id

    async def _control(self, what: str) -> None:
        adaptor, native_id = await self._target(what)
        await getattr(adaptor, what)(native_id)

    async def cancel(self) -> None:
        """Stop the job (TERM, then KILL after the backend's grace period).

        An array member not yet submitted becomes CANCELED without being submitted;
        one being submitted right now is cancelled at the backend once accepted.

        Raises:
            IncorrectState: it is already final.
        """
        # Being submitted right now (an array member): wait for its id, then cancel
        # it at the backend; marking it here would leave it running there.
        await self._submitted()
        if self._native_id is None:
            if not self._state.final:
                self._apply(JobInfo(id="", state=JobState.CANCELED, state_detail="never submitted"))
            return
        await self._control("cancel")

    async def hold(self) -> None:
        """Keep a queued job from starting (IncorrectState if final, NotSupported if the
        backend cannot)."""
        await self._control("hold")

    async def release(self) -> None:
        """Let a held job start."""
        await self._control("release")

    async def suspend(self) -> None:
        """Pause a running job."""
        await self._control("suspend")

    async def resume(self) -> None:
        """Continue a suspended job."""
        await self._control("resume")

    async def reap(self) -> None:
        """Let the backend forget a finished job (DRMAA2's ``reap``).

        From then on it is forgotten: ``JobService.get`` and ``Session.job`` raise
        DoesNotExist for its id, in this program and (through the journal) in others.

        Raises:
            IncorrectState: it is not final.
            NotSupported: the backend cannot forget jobs.
        """
        if not self._state.final:
            raise IncorrectState(f"cannot reap {self}: it is {self._state.name}, not final")
        if self._native_id is not None:
            adaptor, _ = await self._service._open()
            await adaptor.reap(self._native_id)
            self._is_reaped = True
            self._remember(
                url=str(self._service.url),
                token=self._info.token,
                data={"reaped": True},
            )


class JobArray(Sequence[Job]):
    """The jobs of one ``submit_array`` call, in index order."""

    def __init__(self, jobs: Sequence[Job]) -> None:
        self.jobs: tuple[Job, ...] = tuple(jobs)

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for job in self.jobs:
            counts[job.state.name] = counts.get(job.state.name, 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        return f"<aiores.JobArray of {len(self.jobs)}: {summary}>"

    @overload
    def __getitem__(self, i: int) -> Job: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Job]: ...
    def __getitem__(self, i: int | slice) -> Job | Sequence[Job]:
        return self.jobs[i]

    def __len__(self) -> int:
        return len(self.jobs)

    def __iter__(self) -> Iterator[Job]:
        return iter(self.jobs)

    async def wait(self, timeout: float | None = None) -> list[JobState]:
        """Wait until every job is final; returns their states in index order.

        Raises:
            Timeout: ``timeout`` passed first (the jobs go on).
            BadParameter: ``timeout`` is not None or finite seconds >= 0.
        """
        timeout = check.timeout(timeout)
        async with fail_after(timeout, lambda: f"{self!r} did not finish within {timeout} s"):
            return list(await asyncio.gather(*(job.wait() for job in self.jobs)))

    async def cancel(self) -> None:
        """Cancel every job that is not final yet (unsubmitted ones never start).

        Members already final are left as they are (an array whose jobs partly
        finished is cancelled without error).

        Raises:
            IncorrectState, NotSupported, FanOutError: as :meth:`hold`.
        """
        pending = [job for job in self.jobs if not job.state.final]
        # Unsubmitted ones first, so the feeder never starts them.
        for job in pending:
            if job.native_id is None and job._submitting is None:
                await job.cancel()

        async def cancel(job: Job) -> _Target | None:
            await job._submitted()
            if job.native_id is None:  # its submission failed meanwhile
                await job.cancel()
                return None
            return await job._target("cancel")

        await self._each("cancel", [j for j in pending if not j.state.final], cancel)

    async def hold(self) -> None:
        """Hold every member (DRMAA2's ``ArrayJob.hold``): queued ones stay queued,
        ones not submitted yet are submitted HELD.

        Every member is acted on; those in a wrong state (running, final) are
        reported together after.

        Raises:
            IncorrectState: some members could not be held (running, final): the
                message names them; the others are held.
            NotSupported: the backend cannot hold jobs.
            FanOutError: members failed in different ways (every error in it).

        Cancelling it stops the acting; members already acted on stay so.
        """

        async def hold(job: Job) -> _Target | None:
            if job.native_id is None and job._submitting is None and not job.state.final:
                adaptor, _ = await job.service._open()
                if not adaptor.supports_hold:
                    raise NotSupported(f"{job.service.url.scheme}:// cannot hold jobs")
                job._hold_on_submit = True
                return None
            await job._submitted()
            return await job._target("hold")

        await self._each("hold", self.jobs, hold)

    async def release(self) -> None:
        """Release every held member (ones not submitted yet are submitted as usual).

        Raises:
            IncorrectState, NotSupported, FanOutError: as :meth:`hold`.
        """

        async def release(job: Job) -> _Target | None:
            if job.native_id is None and job._hold_on_submit and job._submitting is None:
                job._hold_on_submit = False
                return None
            await job._submitted()
            return await job._target("release")

        await self._each("release", self.jobs, release)

    async def suspend(self) -> None:
        """Suspend every running member.

        Raises:
            IncorrectState: As :meth:`hold` (a member not submitted yet is in a wrong
                state).
            NotSupported: As :meth:`hold`.
            FanOutError: As :meth:`hold`.
        """
        await self._each("suspend", self.jobs, _after_submission("suspend"))

    async def resume(self) -> None:
        """Resume every suspended member.

        Raises:
            IncorrectState, NotSupported, FanOutError: as :meth:`hold`.
        """
        await self._each("resume", self.jobs, _after_submission("resume"))

    async def _each(
        self,
        what: Control,
        members: Sequence[Job],
        prepare: Callable[[Job], Awaitable[_Target | None]],
    ) -> None:
        """``prepare`` every member together (None: nothing left to do at the backend),
        then ``what`` on those ready with one :meth:`JobAdaptor.control_many` per
        adaptor; then one error for those that failed."""
        prepared = await settle(prepare(job) for job in members)
        outcomes: builtins.list[Exception | None] = [
            outcome if isinstance(outcome, Exception) else None for outcome in prepared
        ]
        # One backend call per adaptor (an array's members share one).
        groups: dict[int, tuple[JobAdaptor, builtins.list[int]]] = {}
        ids: dict[int, str] = {}
        for i, outcome in enumerate(prepared):
            if isinstance(outcome, tuple):
                groups.setdefault(id(outcome[0]), (outcome[0], []))[1].append(i)
                ids[i] = outcome[1]

        async def control(adaptor: JobAdaptor, places: builtins.list[int]) -> None:
            done = await adaptor.control_many(what, [ids[i] for i in places])
            for i, outcome in zip(places, done, strict=True):
                outcomes[i] = outcome

        for place, error in zip(
            groups, await settle(control(*group) for group in groups.values()), strict=True
        ):
            if isinstance(error, Exception):
                for i in groups[place][1]:
                    outcomes[i] = error
        failed = [
            (job, outcome)
            for job, outcome in zip(members, outcomes, strict=True)
            if isinstance(outcome, Exception)
        ]
        if not failed:
            return
        names = ", ".join(f"{job.id or job.index} ({job.state.name})" for job, _ in failed)
        message = f"could not {what} {len(failed)} of {len(self.jobs)} jobs of the array: {names}"
        kinds = {type(error) for _, error in failed}
        if len(kinds) == 1:
            (kind,) = kinds
            if kind in (IncorrectState, NotSupported):
                raise kind(message) from failed[0][1]
        raise FanOutError(message, [error for _, error in failed])


def _releaser(adaptor: JobAdaptor) -> Callable[[str], Awaitable[Sequence[str]]]:
    """What releases the jobs a cancelled or failed submission made under a token."""

    async def release(token: str) -> Sequence[str]:
        # Released only once the backend shows each job ended (or gone): a cancel
        # that returned is not enough. Otherwise the intent stays pending.
        found = await adaptor.find(token)
        live = [info.id for info in found if not info.state.final]
        outcomes = await settle(adaptor.cancel(job_id) for job_id in live)
        if failed := [
            outcome
            for outcome in outcomes
            if isinstance(outcome, Exception) and not isinstance(outcome, DoesNotExist)
        ]:
            raise failed[0]
        if live:
            now = await adaptor.describe(live)
            if running := [i for i in live if i in now and not now[i].state.final]:
                raise NoSuccess(f"jobs {running} still run after their cancel")
        return [info.id for info in found]

    return release


def _after_submission(what: Control) -> Callable[[Job], Awaitable[_Target | None]]:
    async def after(job: Job) -> _Target | None:
        await job._submitted()
        return await job._target(what)

    return after


T = TypeVar("T", bound=Tracked[Any])


def _trackables(objects: Iterable[T], field: str) -> builtins.list[T]:
    if isinstance(objects, str | bytes) or not isinstance(objects, Iterable):
        raise check.fail(field, "an iterable of jobs or resources", objects)
    items = builtins.list(objects)
    for i, item in enumerate(items):
        check.instance(item, Tracked, f"{field}[{i}]", "an aiores Job or Resource")
    return items


async def wait_any(
    objects: Iterable[T],
    state: JobState | ResourceState | None = None,
    timeout: float | None = None,
) -> T:
    """The first of ``objects`` to reach ``state`` (None: any final state).

    Raises:
        BadParameter: ``objects`` is empty.
        IncorrectState: every object ended without reaching ``state``.
        Timeout: none reached it within ``timeout`` seconds.

    Cancelling it changes nothing but the waiting.
    """
    items = _trackables(objects, "objects")
    if not items:
        raise BadParameter("wait_any needs at least one job or resource")
    if state is not None and not isinstance(state, JobState | ResourceState):
        raise check.fail("state", "a JobState, a ResourceState or None", state)
    timeout = check.timeout(timeout)

    async def reach(obj: T) -> tuple[T, Exception | None]:
        try:
            await obj.wait(state)
        except Exception as exc:
            return obj, exc
        return obj, None

    failures: list[Exception] = []
    late = f"none of {len(items)} objects reached {state or 'a final state'} within {timeout} s"
    # Leaving the TaskSet cancels the waits still running and awaits them.
    async with fail_after(timeout, late), TaskSet("wait_any") as waits:
        for obj in items:
            waits.spawn(reach(obj), name=f"aiores-wait_any {obj}")
        async for obj, error in waits.as_completed():
            if error is None:
                return obj
            failures.append(error)
    raise failures[0]


async def as_completed(
    objects: Iterable[T], timeout: float | None = None
) -> AsyncGenerator[T, None]:
    """Yield each of ``objects`` as it reaches a final state, first finished first.

    Raises:
        Timeout: ``timeout`` seconds (for the whole iteration) passed first.
    """
    items = _trackables(objects, "objects")
    timeout = check.timeout(timeout)
    if not items:
        return
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout

    async def final(obj: T) -> T:
        await obj.wait()
        return obj

    # Leaving early (the consumer stops, a wait failed, the timeout) cancels the
    # waits still running and awaits them.
    async with TaskSet("as_completed") as waits:
        for obj in items:
            waits.spawn(final(obj), name=f"aiores-as_completed {obj}")
        finished = waits.as_completed()
        for count in range(len(items)):
            remaining = None if deadline is None else deadline - loop.time()
            left = len(items) - count
            async with fail_after(
                remaining, f"{left} of {len(items)} objects not final within {timeout} s"
            ):
                done: T = await anext(finished)
            yield done
