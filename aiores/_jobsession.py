"""DRMAA2 job sessions: named sets of jobs at one URL, reopened by name from any program.

A job session is a name, a job URL and the ids of the jobs submitted through it, all
kept in the journal (tables ``job_sessions`` and ``job_session_jobs``, beside the
jobs' own records). Any program with the same journal opens it again by name and
sees the same jobs, with the states their backend reports now. It composes on
:class:`~aiores.JobService`: a job of a session is an ordinary :class:`~aiores.Job`.
"""

from __future__ import annotations

import asyncio
import builtins
import enum
import secrets
import unicodedata
from collections.abc import Callable, Generator, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import _validate as check
from ._descriptions import JobDescription
from ._exceptions import BadParameter, DoesNotExist, IncorrectState
from ._jobs import Job, JobArray, JobService, wait_any
from ._states import JobState
from ._url import URL
from .adaptor import JobInfo

if TYPE_CHECKING:
    from ._journal import Journal
    from ._session import Session

__all__ = ["MAX_NAME", "JobSession", "check_name"]

#: The longest job session name, in characters.
MAX_NAME = 200


def check_name(value: object, field: str = "name") -> str:
    """A job session name: non-empty text of at most :data:`MAX_NAME` characters,
    without NUL, lone surrogates or other control characters (it is shown one a line)."""
    name = check.text(value, field)
    if len(name) > MAX_NAME:
        raise check.fail(field, f"at most {MAX_NAME} characters long", value)
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise check.fail(field, "a name without control characters", value)
    return name


class _Lifecycle(enum.Enum):
    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"
    DESTROYED = "destroyed"


class JobSession:
    """A DRMAA2 job session: the jobs submitted under one name at one URL.

    Made by :meth:`Session.job_session`; opened by awaiting it (``js = await
    session.job_session("nightly", "slurm://")``) or by ``async with`` (which closes it
    on exit), or on first use. The name, the URL and the jobs are kept in the session's
    journal: every program using that journal (the same ``$AIORES_STATE_DIR``) reopens
    it by name and sees the same jobs and their states.

    Jobs outlive their job session: :meth:`close` ends this handle's use and
    :meth:`destroy` forgets the session; neither touches a job. A reaped job
    (:meth:`Job.reap`) leaves the session's :meth:`jobs`.

    Cancelling a submit cancels what it submitted (shielded, bounded), as
    :class:`JobService` does; cancelling anything else changes nothing but the waiting.
    """

    def __init__(self, session: Session, name: str, url: str | URL | None) -> None:
        self._session = session
        self._name = check_name(name)
        self._service: JobService | None = None
        if url is not None:
            self._service = session.job_service(url)
        self._key = ""
        # Array members held back by max_parallel, until they join the session.
        self._pending: builtins.list[Job] = []
        self._lifecycle = _Lifecycle.UNOPENED
        self._opening = asyncio.Lock()

    def __repr__(self) -> str:
        where = f" {self._service.url}" if self._service is not None else ""
        return f"<aiores.JobSession {self._name!r}{where} {self._lifecycle.value}>"

    # -- fields -----------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The session's name (unique in its journal)."""
        return self._name

    @property
    def url(self) -> URL:
        """The URL its jobs are submitted to.

        Raises:
            IncorrectState: it was reopened without a URL and is not open yet.
        """
        if self._service is None:
            raise IncorrectState(f"{self!r} is not open yet: its URL is in the journal")
        return self._service.url

    @property
    def service(self) -> JobService:
        """The :class:`JobService` its jobs are submitted through.

        Raises:
            IncorrectState: as :attr:`url`.
        """
        if self._service is None:
            raise IncorrectState(f"{self!r} is not open yet: its URL is in the journal")
        return self._service

    # -- lifecycle --------------------------------------------------------------------
    def __await__(self) -> Generator[Any, None, JobSession]:
        return self.open().__await__()

    async def __aenter__(self) -> JobSession:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> JobSession:
        """Create the session, or find it by name (done by ``await`` and ``async with``,
        and by the first call that needs it).

        Returns:
            The session itself, open.

        Raises:
            BadParameter: the name exists with another URL (the message names both).
            DoesNotExist: no session has this name, and no URL was given to create it.
            IncorrectState: it was closed or destroyed, or the aiores session is not
                open.

        Cancelling it leaves the session created or not, as the journal decided.
        """
        if self._lifecycle is _Lifecycle.OPENED:
            return self
        self._check_usable()
        async with self._opening:
            self._check_usable()
            if self._is_open():  # another caller opened it meanwhile
                return self
            journal = self._journal()
            url = None if self._service is None else str(self._service.url)
            record = await journal.open_job_session(self._name, url, "k-" + secrets.token_hex(8))
            if record is None:
                raise DoesNotExist(
                    f"there is no job session {self._name!r}: give a URL to create it"
                )
            if self._service is None:
                self._service = self._session.job_service(record.url)
            elif record.url != url:
                raise BadParameter(
                    f"url: the job session {self._name!r} exists at {record.url}, not {url}"
                )
            self._key = record.key
            self._lifecycle = _Lifecycle.OPENED
        return self

    async def close(self) -> None:
        """End the use of this handle (DRMAA2's ``close``): its jobs run on, the session
        stays in the journal, and this object refuses further calls (IncorrectState).
        Reopen it with :meth:`Session.job_session`. Closing twice is harmless.

        Array members still held back by ``max_parallel`` join the session as they are
        submitted, as before. Nothing here waits: cancelling it changes nothing."""
        if self._lifecycle is not _Lifecycle.DESTROYED:
            self._lifecycle = _Lifecycle.CLOSED

    async def destroy(self) -> None:
        """Forget the session (DRMAA2's ``destroyJobSession``): its name and its list of
        jobs leave the journal, and this object refuses further calls.

        Its jobs are left as they are, running ones running: each is still found by
        its id (:meth:`Session.job`) and listed by ``aiores jobs ls``. Cancel them
        first (``await js.jobs()``, then ``cancel``) for DRMAA2's stricter reading.
        Programs that have it open get DoesNotExist from their next call.

        Raises:
            DoesNotExist: it was destroyed already (by another program).
            IncorrectState: it was closed or destroyed here.

        Cancelling it leaves the session destroyed or not, as the journal decided.
        """
        await self.open()
        gone = await self._journal().destroy_job_session(self._name, self._key)
        self._lifecycle = _Lifecycle.DESTROYED
        if not gone:
            raise DoesNotExist(f"the job session {self._name!r} was destroyed already")

    def _is_open(self) -> bool:
        return self._lifecycle is _Lifecycle.OPENED

    def _check_usable(self) -> None:
        if self._lifecycle is _Lifecycle.CLOSED:
            raise IncorrectState(f"the job session {self._name!r} was closed here")
        if self._lifecycle is _Lifecycle.DESTROYED:
            raise IncorrectState(f"the job session {self._name!r} was destroyed")
        self._session._check_open()

    def _journal(self) -> Journal:
        journal = self._session.journal
        if journal is None:
            raise IncorrectState("job sessions live in the journal: this session has none")
        return journal

    async def _ready(self) -> JobService:
        self._check_usable()
        await self.open()
        assert self._service is not None
        return self._service

    async def _join(self, jobs: Sequence[Job]) -> None:
        ids = [job.id for job in jobs if job.native_id is not None]
        if ids and not await self._journal().join_job_session(self._name, self._key, ids):
            raise DoesNotExist(f"the job session {self._name!r} was destroyed (by another program)")

    async def _check_exists(self) -> None:
        """Raise DoesNotExist if another program destroyed the session (before a
        submit: a job would be cancelled again otherwise)."""
        record = await self._journal().open_job_session(self._name, None, "")
        if record is None or record.key != self._key:
            raise DoesNotExist(f"the job session {self._name!r} was destroyed (by another program)")

    async def _join_new(self, jobs: JobArray) -> None:
        """Make the jobs a submit call made members; if that cannot be (the call was
        cancelled, the session destroyed meanwhile), cancel them (shielded, bounded):
        nobody would hold them otherwise."""
        try:
            await self._join(jobs)
        except (asyncio.CancelledError, DoesNotExist):
            await self._session.shielded(
                jobs.cancel, what=f"cancelling the new jobs of the job session {self._name!r}"
            )
            raise

    async def _rows(self) -> builtins.list[dict[str, Any]]:
        """The members' journal rows; array members submitted since joined first."""
        submitted = [job for job in self._pending if job.native_id is not None]
        if submitted:
            await self._join(submitted)
            for job in submitted:
                if job in self._pending:
                    self._pending.remove(job)
        rows = await self._journal().job_session_jobs(self._name, self._key)
        if rows is None:
            raise DoesNotExist(f"the job session {self._name!r} was destroyed (by another program)")
        return rows

    # -- submitting -------------------------------------------------------------------
    async def submit(self, description: JobDescription, *, hold: bool = False) -> Job:
        """Submit one job into the session (DRMAA2's ``runJob``).

        Args:
            description: What to run.
            hold: Submit it HELD: it starts only after ``job.release()``.

        Returns:
            The job, accepted by the backend and a member of the session.

        Raises:
            BadParameter, DoesNotExist, PermissionDenied, NotSupported: as
                :meth:`JobService.submit`.
            DoesNotExist: the session was destroyed by another program (a job accepted
                meanwhile is cancelled).
            IncorrectState: the session was closed or destroyed here.

        Cancelling it cancels the job once the backend may have accepted it (shielded,
        bounded), as :meth:`JobService.submit` does, then re-raises.
        """
        service = await self._ready()
        await self._check_exists()
        job = await service.submit(description, hold=hold)
        await self._join_new(JobArray([job]))
        return job

    async def submit_array(
        self,
        description: JobDescription,
        begin: int,
        end: int,
        step: int = 1,
        max_parallel: int | None = None,
    ) -> JobArray:
        """Submit one job per index ``begin, begin+step, ... <= end`` (DRMAA2's
        ``runBulkJobs``), each seeing its index in ``$AIORES_ARRAY_INDEX``.

        DRMAA2 numbers bulk jobs from 1: ``submit_array(desc, 1, 10)`` makes ten jobs,
        indexed 1 to 10 (``job.index``); ``submit_array(desc, 2, 10, 4)`` three, 2, 6
        and 10. They are submitted through :meth:`JobService.submit_array` with those
        indices.

        Args:
            description: What each job runs.
            begin: The first index (>= 1).
            end: The last index at most (>= ``begin``).
            step: Between two indices (>= 1).
            max_parallel: At most this many unfinished at once (None: no limit).

        Returns:
            The jobs in index order. Those held back by ``max_parallel`` join the
            session as they are submitted, in this program's background; if it ends
            first, they are never submitted.

        Raises:
            BadParameter: a bad description, bounds, step or max_parallel, or more
                than 1,000,000 jobs (nothing was submitted).
            AioresError, DoesNotExist, IncorrectState: as :meth:`submit`.

        Cancelling it behaves as cancelling :meth:`JobService.submit_array`.
        """
        first = check.count(begin, "begin", min=1)
        last = check.count(end, "end", min=first)
        stride = check.count(step, "step")
        if (last - first) // stride + 1 > check.MAX_COUNT:
            raise BadParameter(
                f"begin, end and step make more than {check.MAX_COUNT} jobs: "
                f"{(last - first) // stride + 1}"
            )
        if max_parallel is not None:
            check.count(max_parallel, "max_parallel")
        service = await self._ready()
        await self._check_exists()
        array = await service.submit_array(
            description, indices=range(first, last + 1, stride), max_parallel=max_parallel
        )
        later = [job for job in array if job.native_id is None and not job.state.final]
        await self._join_new(array)
        if later:
            self._pending.extend(later)
            self._session.spawn(
                lambda: self._join_when_submitted(later),
                name=f"aiores-job-session {self._name} array",
            )
        return array

    async def _join_when_submitted(self, jobs: Sequence[Job]) -> None:
        """Add array members to the session as the array's feeder submits them.

        Each is waited for through its first change of state (from NEW: accepted, or
        failed or cancelled before it was submitted), which needs no polling.
        """
        loop = asyncio.get_running_loop()
        for job in jobs:
            while job.native_id is None and not job.state.final:
                changed: asyncio.Future[JobState | None] = loop.create_future()
                # NEW never comes again: the waiter is woken by the first change.
                job._waiters[changed] = JobState.NEW
                try:
                    await changed
                except (IncorrectState, DoesNotExist):  # the session closed, or it is gone
                    return
                finally:
                    job._waiters.pop(changed, None)
            if job.native_id is not None and job in self._pending:
                try:
                    await self._join([job])
                except (DoesNotExist, IncorrectState):
                    return  # the session was destroyed, or the journal closed
                finally:
                    if job in self._pending:
                        self._pending.remove(job)

    # -- finding ----------------------------------------------------------------------
    async def jobs(
        self,
        state: JobState | Iterable[JobState] | None = None,
        filter: Callable[[Job], bool] | None = None,
    ) -> builtins.list[Job]:
        """The session's jobs, first submitted first, with their states now
        (DRMAA2's ``getJobs``); reaped jobs are left out.

        One batched describe asks the backend about the members that are not final
        (jobs other programs submitted included); final ones are as the journal
        recorded them.

        Args:
            state: Only jobs in this state (or these states).
            filter: Only jobs for which ``filter(job)`` is true.

        Raises:
            BadParameter: ``state`` is not a JobState (or states), ``filter`` not
                callable.
            DoesNotExist: the session was destroyed by another program.
            IncorrectState: it was closed or destroyed here.
            AioresError: the backend could not be asked.

        Cancelling it changes nothing.
        """
        wanted = _states(state)
        if filter is not None and not callable(filter):
            raise check.fail("filter", "a callable taking a Job, or None", filter)
        service = await self._ready()
        rows = await self._rows()
        members = await _members(service, rows)
        return [
            job
            for job in members
            if (wanted is None or job.state in wanted) and (filter is None or filter(job))
        ]

    async def wait_any(
        self,
        jobs: Iterable[Job] | None = None,
        state: JobState | None = None,
        timeout: float | None = None,
    ) -> Job:
        """The first of ``jobs`` to reach ``state`` (DRMAA2's ``waitAnyStarted`` with
        RUNNING, ``waitAnyTerminated`` with None: any final state).

        Args:
            jobs: Jobs of this session (None: all of :meth:`jobs`).
            state: The state to wait for; None: any final state.
            timeout: Seconds to wait at most (None: as long as it takes).

        Returns:
            The first job that reached ``state`` (one already in it, at once).

        Raises:
            BadParameter: ``jobs`` is empty or holds a job of no or another session, or
                bad ``state`` or ``timeout``.
            IncorrectState: every job ended without reaching ``state``, or the
                session was closed or destroyed here.
            Timeout: none reached it within ``timeout``.
            DoesNotExist: the session was destroyed by another program.

        Cancelling it changes nothing but the waiting.
        """
        if jobs is None:
            chosen = await self.jobs()
            if not chosen:
                raise BadParameter(f"the job session {self._name!r} has no jobs to wait for")
        else:
            if isinstance(jobs, str | bytes) or not isinstance(jobs, Iterable):
                raise check.fail("jobs", "an iterable of jobs of this session", jobs)
            chosen = builtins.list(jobs)
            if not chosen:
                raise BadParameter("jobs must not be empty: wait_any needs a job to wait for")
            for i, job in enumerate(chosen):
                check.instance(job, Job, f"jobs[{i}]", "an aiores Job")
            await self._ready()
            members = {row["member"] for row in await self._rows()}
            for i, job in enumerate(chosen):
                if job.id not in members:
                    raise BadParameter(
                        f"jobs[{i}]: {job.id} is not a job of the job session {self._name!r}"
                    )
        return await wait_any(chosen, state, timeout)


def _states(state: object) -> frozenset[JobState] | None:
    if state is None:
        return None
    if isinstance(state, JobState):
        return frozenset({state})
    if isinstance(state, str | bytes) or not isinstance(state, Iterable):
        raise check.fail("state", "a JobState, an iterable of them, or None", state)
    states = builtins.list(state)
    for i, item in enumerate(states):
        check.instance(item, JobState, f"state[{i}]", "a JobState")
    return frozenset(states)


async def _members(service: JobService, rows: Sequence[dict[str, Any]]) -> builtins.list[Job]:
    """The jobs of journal ``rows`` (as :meth:`Journal.job_session_jobs` gives them).

    A job this program holds is that object; another is made at the state the journal
    holds. Those not final are then described in one call, and the answer applied as
    the endpoint's watcher applies its own (a change nobody saw is recorded).
    """
    adaptor, watcher = await service._open()
    jobs: builtins.list[Job] = []
    for row in rows:
        native = row["native_id"]
        if native is None or row["data"].get("reaped") is True:
            continue
        known = watcher.lookup(native)
        if isinstance(known, Job):
            if not known._is_reaped:
                jobs.append(known)
            continue
        try:
            recorded = JobState[row["state"]]
        except KeyError:
            recorded = JobState.NEW
        exit_code = row["data"].get("exit_code")
        info = JobInfo(
            id=native,
            state=recorded,
            state_detail=row["detail"] or "",
            exit_code=exit_code if isinstance(exit_code, int) else None,
            token=row["token"],
        )
        jobs.append(service._job(info, watcher, None))
    asking = [job.native_id for job in jobs if job.native_id and not job.state.final]
    if asking:
        infos = await adaptor.describe(asking)
        answer = watcher.take(asking, infos)
        # Only the watcher counts a job gone; one listing is not enough to say so.
        watcher.forget_misses(answer.missed)
    return [job for job in jobs if not job._is_reaped]
