"""Recovery and leak reaping from the journal: ``Session.recover()`` and ``Session.reap()``.

The journal names every resource and job a session acquired or submitted, and every
backend call in flight (an intent with its idempotency token). From it a later session
can:

- **recover**: reconnect to what earlier sessions left alive (one batched describe per
  endpoint), so that states that changed while nobody watched are reconciled and
  recorded, and the objects can be used again;
- **reap**: release what was leaked: resources created under intents that never
  completed (their process died mid-call; found at the backend by the intent's token)
  and resources whose session died without closing (killed, crashed hard) and that
  were never destroyed. Nothing the journal does not name is ever touched.

A session that closed normally hands its resources over on purpose (resources outlive
their session): reap leaves them alone.

Leases (``ComputeDescription.duration``): the end of a machine's lease is journalled
with it (``expires_at``). A machine the backend no longer knows whose lease has ended
ended on time, as it was meant to: it is recorded EXPIRED (``Recovered.expired``), not
gone. A machine alive whose lease ends within :data:`ENDING_WITHIN` seconds is
reported as ending (``Recovered.ending``; ``Leak.expires_at``). A lease does not make
a machine anyone's: reap releases the leased machines of dead sessions like any other
(a lease is a bound on a leak, not a reason to keep paying for it).

Backend answers are taken as the endpoint's watcher takes its own (``Watcher.take``):
each object is made at the state the journal holds and the answer applied to it, so
changes are recorded by the object like any other; an id the answer leaves out is
asked about again, and counts as gone only after as many describes in a row as the
watcher needs (backends are eventually consistent: an EC2 instance may be missing from
a describe right after it was launched).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._exceptions import AioresError, IncorrectState
from ._jobs import Job, JobService
from ._journal import Intent, Journal, loads_data
from ._resource import Compute, Manager, Resource, restored
from ._states import JobState, ResourceState
from ._url import URL, join_id
from ._watch import Info, Tracked, Watcher
from .adaptor import JobAdaptor, JobInfo, ResourceAdaptor, ResourceInfo

if TYPE_CHECKING:
    from ._session import Session

__all__ = [
    "Leak",
    "Problem",
    "Reaped",
    "Recovered",
    "SessionRecord",
    "describe_lease",
    "reap",
    "recover",
]

log = logging.getLogger("aiores.recover")

#: Seconds one endpoint may take to answer recovery's describe (or reap's find/destroy).
ENDPOINT_TIMEOUT = 60.0
#: The most ids in one destroy call made by reap.
DESTROY_BATCH = 500
#: Seconds before the end of its lease within which a machine is reported as ending.
ENDING_WITHIN = 300.0


@dataclass(frozen=True, slots=True)
class Problem:
    """Something recovery or reaping could not do: which object or endpoint, and why."""

    url: str
    error: str
    id: str | None = None
    token: str | None = None

    def __str__(self) -> str:
        what = self.id or (f"intent {self.token} at {self.url}" if self.token else self.url)
        return f"{what}: {self.error}"


@dataclass(frozen=True, slots=True)
class Recovered:
    """What :meth:`Session.recover` found.

    Attributes:
        resources: Resources earlier sessions recorded, alive at their backend, each
            with the state the backend reports now.
        jobs: Jobs earlier sessions recorded that are not final in the journal, with
            the state their backend reports now (final ones included: they ended while
            nobody watched).
        gone: Ids the journal held as alive that their backend no longer knows:
            left out of as many describes in a row as the endpoint's watcher needs
            to call an id gone (now recorded as ended: resources CANCELED; jobs of
            sessions that are over FAILED, as lost).
        problems: Endpoints that could not be reached or whose adaptor cannot load,
            and objects that could not be described (among them ids left out of
            the describes made within the timeout, not yet counted gone).
        in_flight: Intents still pending (calls whose outcome was never written):
            :meth:`Session.reap` releases what they created once their session is gone.
        expired: Ids of machines whose journalled lease has ended and that their
            backend no longer knows: they ended on time (now recorded EXPIRED), and
            are not among ``gone``.
        ending: Resources among ``resources`` whose lease ends within
            :data:`ENDING_WITHIN` seconds (or has ended, the backend not having said
            so yet): renew them (``vm.renew(seconds)``) to keep them.
    """

    resources: list[Resource] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    in_flight: list[Intent] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    ending: list[Resource] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Leak:
    """A resource :meth:`Session.reap` would release, and why.

    Attributes:
        id: Its aiores id (``[url]-[native id]``).
        url: Its manager's URL.
        native_id: The backend's id.
        session: The journal id of the session that made it.
        reason: ``"intent never completed"`` or ``"session gone"``.
        token: The idempotency token it was acquired under, where known.
        state: Its state at the backend now (a ResourceState or JobState name).
        tags: Its tags.
        kind: ``"resource"`` (released by destroying it) or ``"job"`` (a job whose
            submit never completed: released by cancelling it).
        expires_at: When its lease ends (epoch seconds), if it has one: it ends by
            itself then, and reap releases it now all the same.
    """

    id: str
    url: str
    native_id: str
    session: str
    reason: str
    token: str | None
    state: str
    tags: tuple[str, ...] = ()
    kind: str = "resource"
    expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class Reaped:
    """What :meth:`Session.reap` did.

    Attributes:
        leaks: Everything it found to release.
        released: Ids released (a subset of the leaks' ids).
        kept: Leaks not released (not confirmed, or their release failed).
        closed: Tokens of pending intents now closed in the journal (``released``).
        skipped: Pending intents left alone: their session may still be running.
        problems: What failed (endpoints unreachable, destroys refused).
    """

    leaks: list[Leak] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    kept: list[Leak] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    skipped: list[Intent] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One row of the journal's sessions table."""

    id: str
    pid: int | None
    host: str | None
    started: float | None
    ended: float | None


def _is_final(kind: str, state: str | None) -> bool:
    enum_type: Any = ResourceState if kind == "resource" else JobState
    try:
        return bool(enum_type[state].final)
    except KeyError:
        return False


def _journal_of(session: Session) -> Journal:
    session._check_open()
    if session.journal is None:
        raise IncorrectState(
            "this session has no journal (journal=None): there is nothing to recover from"
        )
    return session.journal


# -- recover ---------------------------------------------------------------------------------


async def recover(session: Session, *, timeout: float | None = ENDPOINT_TIMEOUT) -> Recovered:
    """Reconnect to every resource and job earlier sessions recorded and not final.

    See :meth:`Session.recover`.
    """
    journal = _journal_of(session)
    objects = await journal.objects()
    records = await sessions(session)
    dead = await asyncio.to_thread(_gone_sessions, records.values(), session.id)
    finished = dead | _ended_sessions(records.values())
    objects += await _unrecorded(journal, objects, dead)
    result = Recovered(in_flight=await journal.in_flight())
    by_endpoint: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in objects:
        if not _is_final(row["kind"], row["state"]):
            by_endpoint.setdefault((row["kind"], row["url"]), []).append(row)
    # Resources first: they tell the session the host keys and login keys their
    # machines' job services (ssh://) need.
    resource_eps = [(url, rows) for (kind, url), rows in by_endpoint.items() if kind == "resource"]
    job_eps = [(url, rows) for (kind, url), rows in by_endpoint.items() if kind == "job"]
    outcomes = await asyncio.gather(
        *(_recover_resources(session, url, rows, timeout) for url, rows in resource_eps)
    )
    now = time.time()
    for found, gone, problems in outcomes:
        result.resources.extend(found)
        result.ending.extend(r for r in found if _ending(r, now))
        for rid, expired in gone:
            (result.expired if expired else result.gone).append(rid)
        result.problems.extend(problems)
    job_outcomes = await asyncio.gather(
        *(_recover_jobs(session, url, rows, timeout, finished) for url, rows in job_eps)
    )
    for jobs, lost, problems in job_outcomes:
        result.jobs.extend(jobs)
        result.gone.extend(lost)
        result.problems.extend(problems)
    return result


#: Journalled calls that make things, and the kind of object each makes.
_MAKES = {"acquire": "resource", "submit": "job", "submit_array": "job"}


async def _unrecorded(
    journal: Journal, recorded: list[dict[str, Any]], dead: set[str], kind: str | None = None
) -> list[dict[str, Any]]:
    """Rows for what completed intents of ``dead`` sessions made but never recorded.

    A process killed right after its acquire or submit returned (the intent is made
    durable before the caller holds the result) may not have recorded the objects
    yet: the completed intent names them. Only ``kind`` objects when given.
    """
    known = {row["id"] for row in recorded}
    rows: list[dict[str, Any]] = []
    for intent in await journal.intents("done"):
        made = _MAKES.get(intent.op)
        if made is None or intent.session not in dead or kind not in (None, made):
            continue
        for native in intent.ids:
            rid = join_id(intent.url, native)
            if rid not in known:
                known.add(rid)
                rows.append(
                    {
                        "id": rid,
                        "kind": made,
                        "url": intent.url,
                        "native_id": native,
                        "session": intent.session,
                        "token": intent.token,
                        "state": "NEW",
                        "detail": "",
                        "data": None,
                    }
                )
    return rows


def _epoch(value: object) -> float | None:
    """``value`` as a time (epoch seconds) if it is one: a finite number."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _lease_end(row: dict[str, Any]) -> float | None:
    """When the lease of the resource of ``row`` ends, as the journal holds it."""
    return _epoch(loads_data(row.get("data")).get("expires_at"))


def _ending(resource: Resource, now: float) -> bool:
    ends = getattr(resource, "expires_at", None)
    return ends is not None and ends - now <= ENDING_WITHIN


def _record_gone(obj: Resource | Job, row: dict[str, Any], now: float) -> bool:
    """Record the end of a resource its backend no longer knows; True if its lease had
    ended (EXPIRED: it ended on time), False if not (CANCELED, gone)."""
    ends = _lease_end(row)
    if ends is not None and ends <= now:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ends))
        _end(obj, ResourceState.EXPIRED, f"expired: its lease ended at {when}")
        return True
    _end(obj, ResourceState.CANCELED, GONE)
    return False


async def _recover_resources(
    session: Session, url: str, rows: list[dict[str, Any]], timeout: float | None
) -> tuple[list[Resource], list[tuple[str, bool]], list[Problem]]:
    start = session.clock.now()
    try:
        async with asyncio.timeout(timeout):
            manager = session.manager(url)
            adaptor, watcher = await manager._open()
        asked = await _ask(
            session, adaptor, watcher, rows, _restorer(manager, watcher), start, timeout
        )
    except AioresError as exc:
        return [], [], [Problem(url, f"{type(exc).__name__}: {exc}", id=r["id"]) for r in rows]
    except TimeoutError:
        return [], [], [Problem(url, f"no answer within {timeout} s", id=r["id"]) for r in rows]
    found: list[Resource] = []
    gone: list[tuple[str, bool]] = []
    problems: list[Problem] = []
    now = time.time()
    for row in rows:
        native = row["native_id"]
        if native in asked.gone:
            # The backend no longer knows it (destroyed elsewhere, the cloud stopped,
            # or its lease ended and the backend forgot it since).
            expired = _record_gone(_unanswered(manager, watcher, row), row, now)
            gone.append((row["id"], expired))
        elif native in asked.unsure:
            problems.append(Problem(url, asked.unsure[native], id=row["id"]))
        else:
            resource = asked.objects[native]
            assert isinstance(resource, Resource)
            if not resource.state.final:
                found.append(resource)
    return found, gone, problems


async def _recover_jobs(
    session: Session,
    url: str,
    rows: list[dict[str, Any]],
    timeout: float | None,
    finished: set[str],
) -> tuple[list[Job], list[str], list[Problem]]:
    start = session.clock.now()
    try:
        async with asyncio.timeout(timeout):
            service = session.job_service(url)
            adaptor, watcher = await service._open()
        asked = await _ask(
            session, adaptor, watcher, rows, _restorer(service, watcher), start, timeout
        )
    except AioresError as exc:
        return [], [], [Problem(url, f"{type(exc).__name__}: {exc}", id=r["id"]) for r in rows]
    except TimeoutError:
        return [], [], [Problem(url, f"no answer within {timeout} s", id=r["id"]) for r in rows]
    jobs: list[Job] = []
    lost: list[str] = []
    problems: list[Problem] = []
    for row in rows:
        native = row["native_id"]
        if native in asked.gone:
            # Not final and not known: a job of a backend that forgets (local:// jobs
            # live in the process that submitted them), or one reaped elsewhere.
            if row["session"] in finished:
                # Its session is over: nobody can reach it again. Recorded as lost
                # (FAILED) so that later recoveries do not ask again.
                lost.append(row["id"])
                lost_job = _unanswered(service, watcher, row)
                _end(lost_job, JobState.FAILED, f"lost: {url} does not know it")
            else:
                problems.append(Problem(url, f"{url} does not know this job", id=row["id"]))
        elif native in asked.unsure:
            problems.append(Problem(url, asked.unsure[native], id=row["id"]))
        else:
            job = asked.objects[native]
            assert isinstance(job, Job)
            jobs.append(job)
    return jobs, lost, problems


# -- asking the backends ---------------------------------------------------------------------

#: The detail recorded for a resource its backend no longer knows.
GONE = "gone: the backend no longer knows it"

_Restore = Callable[[dict[str, Any], Info], Tracked[Any]]


@dataclass(slots=True)
class _Asked:
    """What describing the recorded objects of one endpoint came to, by native id.

    Attributes:
        objects: The object each answered id's answers went to.
        infos: Each answered id's last answer, as the backend gave it.
        gone: Ids left out of as many describes in a row as the watcher needs.
        unsure: Ids left out fewer times when asking stopped, and why it stopped.
    """

    objects: dict[str, Tracked[Any]] = field(default_factory=dict)
    infos: dict[str, Info] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)
    unsure: dict[str, str] = field(default_factory=dict)


async def _ask(
    session: Session,
    adaptor: ResourceAdaptor | JobAdaptor,
    watcher: Watcher,
    rows: list[dict[str, Any]],
    restore: _Restore,
    start: float,
    timeout: float | None,
) -> _Asked:
    """Describe the ids of ``rows`` until each is answered or gone, as the watcher would.

    One batched describe per round; each later round asks only about the ids the last
    one left out, after the interval the watcher would wait while nothing changes,
    until :meth:`Watcher.take` calls them gone. Asking stops once the next round would
    start more than ``timeout`` seconds (on the session's clock) after ``start``. The
    first answer about an id makes its object (``restore``); every answer goes to the
    object through :meth:`Watcher.take`.

    Raises:
        AioresError: the first describe failed.
        TimeoutError: the first describe did not answer in time.
    """
    clock = session.clock
    recorded = {row["native_id"]: row for row in rows}
    asked = _Asked()
    asking = list(recorded)
    rounds = 0
    while asking:
        remaining = None if timeout is None else start + timeout - clock.now()
        try:
            async with asyncio.timeout(remaining):
                infos: Mapping[str, Info] = await adaptor.describe(asking)
        except (AioresError, TimeoutError) as exc:
            if not rounds:
                raise
            why = f"{type(exc).__name__}: {exc}" if str(exc) else f"no answer within {timeout} s"
            asked.unsure.update(dict.fromkeys(asking, why))
            break
        rounds += 1
        for native in asking:
            info = infos.get(native)
            if info is not None:
                asked.infos[native] = info
                if native not in asked.objects:
                    asked.objects[native] = restore(recorded[native], info)
        answer = watcher.take(asking, infos)
        asked.gone.update(answer.gone)
        asking = answer.missed
        if not asking:
            break
        delay = watcher.quiet_delay(rounds)
        if timeout is not None and clock.now() + delay > start + timeout:
            why = f"left out of {rounds} describes in a row; not counted gone yet"
            asked.unsure.update(dict.fromkeys(asking, why))
            break
        if delay > 0:
            await clock.sleep(delay)
    watcher.forget_misses(list(asked.unsure))
    return asked


def _restorer(owner: Manager | JobService, watcher: Watcher) -> _Restore:
    """Make a recorded object at the state the journal holds, with its first answer.

    The answer is then applied to it (by ``Watcher.take``), so that a change that
    happened while nobody watched is taken, and recorded, as any other. An object
    this session holds already is the one answers go to.
    """

    def restore(row: dict[str, Any], info: Info) -> Tracked[Any]:
        known = watcher.lookup(row["native_id"])
        if known is not None:
            return known
        recorded: dict[str, Any] = {}
        if info.token is None and row["token"]:
            recorded["token"] = row["token"]
        state = _recorded(row)
        if state is not None:
            recorded.update(state=state, state_detail=row.get("detail") or "")
        info = dataclasses.replace(info, **recorded)
        if isinstance(owner, Manager):
            assert isinstance(info, ResourceInfo)
            # Its description and confirmed readiness, as the journal holds them.
            description, ready = restored(loads_data(row.get("data")), info.rtype)
            return owner._resource(info, watcher, description, ready=ready)
        assert isinstance(info, JobInfo)
        return owner._job(info, watcher, None)

    return restore


def _recorded(row: dict[str, Any]) -> ResourceState | JobState | None:
    """The state the journal holds for ``row`` (None if it names none)."""
    enum_type: Any = JobState if row.get("kind") == "job" else ResourceState
    try:
        return enum_type[row["state"]]  # type: ignore[no-any-return]
    except KeyError:
        return None


def _unanswered(
    owner: Manager | JobService, watcher: Watcher, row: dict[str, Any]
) -> Resource | Job:
    """The object of a recorded id no describe answered, at the state the journal holds.

    Only its end is recorded through it: its record is left as it was.
    """
    known = watcher.lookup(row["native_id"])
    if isinstance(known, (Resource, Job)):
        return known
    state = _recorded(row)
    detail = row.get("detail") or ""
    if isinstance(owner, Manager):
        resource = ResourceInfo(
            id=row["native_id"],
            state=state if isinstance(state, ResourceState) else ResourceState.NEW,
            state_detail=detail,
            token=row["token"],
        )
        return Compute(owner, resource, watcher, None)
    job = JobInfo(
        id=row["native_id"],
        state=state if isinstance(state, JobState) else JobState.NEW,
        state_detail=detail,
        token=row["token"],
    )
    return Job(owner, watcher, None, job)


def _end(obj: Resource | Job, state: ResourceState | JobState, detail: str) -> None:
    """Take an end the backend cannot report itself (it no longer knows the object)."""
    if isinstance(obj, Resource):
        assert isinstance(state, ResourceState)
        obj._apply(dataclasses.replace(obj._info, state=state, state_detail=detail))
    else:
        assert isinstance(state, JobState)
        obj._apply(dataclasses.replace(obj._info, state=state, state_detail=detail))


# -- reap -------------------------------------------------------------------------------------


Confirm = Callable[[Sequence[Leak]], "bool | Awaitable[bool]"]


async def sessions(session: Session) -> dict[str, SessionRecord]:
    """Every session the journal knows, by id (read on the journal's thread)."""
    journal = _journal_of(session)
    return {row[0]: SessionRecord(*row) for row in await journal.sessions()}


def _process_started(pid: int) -> float | None:
    """When process ``pid`` of this host started (epoch seconds), None if it runs no more."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
        with open("/proc/stat", "rb") as handle:
            boot = next(float(line.split()[1]) for line in handle if line.startswith(b"btime "))
    except (OSError, StopIteration, ValueError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return 0.0
        return 0.0  # alive, start unknown (no /proc)
    fields = stat.rsplit(b")", 1)[1].split()
    if fields[0] == b"Z":
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return boot + int(fields[19]) / ticks


def _gone_sessions(records: Iterable[SessionRecord], me: str) -> set[str]:
    """Sessions that died without closing: on this host, and their process ended.

    A session of another host that did not close may still run: never gone. A pid
    reused by a later process counts as ended.
    """
    host = socket.gethostname()
    gone = set()
    for record in records:
        if record.id == me or record.ended is not None:
            continue
        if record.host != host or record.pid is None:
            continue
        started = _process_started(record.pid)
        if started is None or (
            started > 0 and record.started is not None and started > record.started + 1.0
        ):
            gone.add(record.id)
    return gone


def _ended_sessions(records: Iterable[SessionRecord]) -> set[str]:
    return {r.id for r in records if r.ended is not None}


async def reap(
    session: Session,
    *,
    confirm: Confirm | None = None,
    timeout: float | None = ENDPOINT_TIMEOUT,
) -> Reaped:
    """Find and release leaked resources; see :meth:`Session.reap`."""
    journal = _journal_of(session)
    records = await sessions(session)
    dead = await asyncio.to_thread(_gone_sessions, records.values(), session.id)
    closed_ok = _ended_sessions(records.values())
    result = Reaped()
    intents_by_url: dict[str, list[Intent]] = {}
    submits_by_url: dict[str, list[Intent]] = {}
    for intent in await journal.in_flight():
        if intent.op not in ("acquire", "submit"):
            continue
        if intent.session in dead or intent.session in closed_ok:
            table = intents_by_url if intent.op == "acquire" else submits_by_url
            table.setdefault(intent.url, []).append(intent)
        else:
            result.skipped.append(intent)
    rows_by_url: dict[str, list[dict[str, Any]]] = {}
    recorded = await journal.objects("resource")
    recorded += await _unrecorded(journal, recorded, dead, kind="resource")
    for row in recorded:
        if row["session"] in dead and not _is_final("resource", row["state"]):
            rows_by_url.setdefault(row["url"], []).append(row)
    urls = sorted(set(intents_by_url) | set(rows_by_url))
    found = await asyncio.gather(
        *(
            _find_leaks(
                session, url, intents_by_url.get(url, []), rows_by_url.get(url, []), timeout
            )
            for url in urls
        )
    )
    if submits_by_url:
        # Jobs on machines aiores booted need the host keys their clouds published.
        await recover(session, timeout=timeout)
    found_jobs = await asyncio.gather(
        *(
            _find_job_leaks(session, url, intents, timeout)
            for url, intents in sorted(submits_by_url.items())
        )
    )
    empty_tokens: list[str] = []
    token_ids: dict[str, list[str]] = {}
    held: list[Resource] = []
    for job_leaks, empties, problems in found_jobs:
        found.append((job_leaks, empties, problems, []))
    for leaks, empties, problems, resources in found:
        held.extend(resources)
        result.leaks.extend(leaks)
        empty_tokens.extend(empties)
        result.problems.extend(problems)
        for leak in leaks:
            if leak.reason == "intent never completed" and leak.token:
                token_ids.setdefault(leak.token, []).append(leak.native_id)
    # Intents that created nothing (killed before the backend answered, or what they
    # made has ended): nothing to release, they are closed at once.
    why = f"reaped by {session.id}: its session is gone"
    for token in empty_tokens:
        journal.outcome(token, "released", (), why)
        result.closed.append(token)
    if result.leaks:
        go = True
        if confirm is not None:
            answer = confirm(list(result.leaks))
            go = bool(await answer) if inspect.isawaitable(answer) else bool(answer)
        if not go:
            result.kept.extend(result.leaks)
        else:
            await _release(session, result, timeout)
            released = set(result.released)
            for token, natives in token_ids.items():
                url = next(leak.url for leak in result.leaks if leak.token == token)
                ids = [join_id(url, n) for n in natives]
                if all(i in released for i in ids):
                    journal.outcome(token, "released", natives, why)
                    result.closed.append(token)
    await journal.flush()
    del held
    return result


async def _find_job_leaks(
    session: Session, url: str, intents: list[Intent], timeout: float | None
) -> tuple[list[Leak], list[str], list[Problem]]:
    """Jobs submitted under ``intents`` (never completed) that have not ended."""
    try:
        async with asyncio.timeout(timeout):
            adaptor, _ = await session.job_service(url)._open()
            finds = await asyncio.gather(*(adaptor.find(i.token) for i in intents))
    except AioresError as exc:
        problem = f"{type(exc).__name__}: {exc}"
        return [], [], [Problem(url, problem, token=i.token) for i in intents]
    except TimeoutError:
        problem = f"no answer within {timeout} s"
        return [], [], [Problem(url, problem, token=i.token) for i in intents]
    leaks: list[Leak] = []
    empties: list[str] = []
    for intent, made in zip(intents, finds, strict=True):
        live = [info for info in made if not info.state.final]
        if not live:
            empties.append(intent.token)
        leaks.extend(
            Leak(
                id=join_id(url, info.id),
                url=url,
                native_id=info.id,
                session=intent.session,
                reason="intent never completed",
                token=intent.token,
                state=info.state.name,
                kind="job",
            )
            for info in live
        )
    return leaks, empties, []


async def _find_leaks(
    session: Session,
    url: str,
    intents: list[Intent],
    rows: list[dict[str, Any]],
    timeout: float | None,
) -> tuple[list[Leak], list[str], list[Problem], list[Resource]]:
    # The resource objects are held until released: the watcher holds them weakly, and
    # the destroy records their end (CANCELED) in the journal through them.
    held: list[Resource] = []
    leaks: list[Leak] = []
    empties: list[str] = []
    start = session.clock.now()
    try:
        async with asyncio.timeout(timeout):
            manager = session.manager(url)
            adaptor, watcher = await manager._open()
            finds = await asyncio.gather(*(adaptor.find(i.token) for i in intents))
        asked = _Asked()
        if rows:
            restore = _restorer(manager, watcher)
            asked = await _ask(session, adaptor, watcher, rows, restore, start, timeout)
    except AioresError as exc:
        problem = f"{type(exc).__name__}: {exc}"
        return (
            [],
            [],
            [Problem(url, problem, token=i.token) for i in intents]
            + [Problem(url, problem, id=r["id"]) for r in rows],
            [],
        )
    except TimeoutError:
        problem = f"no answer within {timeout} s"
        return [], [], [Problem(url, problem, token=i.token) for i in intents], []
    seen: set[str] = set()
    for intent, made in zip(intents, finds, strict=True):
        live = [info for info in made if not info.state.final]
        if not live:
            empties.append(intent.token)
        for info in live:
            seen.add(info.id)
            held.append(manager._resource(info, watcher, None))
            leaks.append(
                Leak(
                    id=join_id(url, info.id),
                    url=url,
                    native_id=info.id,
                    session=intent.session,
                    reason="intent never completed",
                    token=intent.token,
                    state=info.state.name,
                    tags=tuple(sorted(info.tags)),
                    expires_at=_lease_of(info),
                )
            )
    problems: list[Problem] = []
    for row in rows:
        native = row["native_id"]
        if native in asked.gone:
            _record_gone(_unanswered(manager, watcher, row), row, time.time())
            continue
        if native in asked.unsure:
            # Perhaps not visible yet: kept for a later reap, never recorded ended.
            problems.append(Problem(url, asked.unsure[native], id=row["id"]))
            continue
        described = asked.infos[native]
        assert isinstance(described, ResourceInfo)
        if described.state.final or described.id in seen:
            continue
        resource = asked.objects[native]
        assert isinstance(resource, Resource)
        held.append(resource)
        leaks.append(
            Leak(
                id=resource.id,
                url=url,
                native_id=described.id,
                session=row["session"],
                reason="session gone",
                token=row["token"],
                state=described.state.name,
                tags=tuple(sorted(described.tags)),
                expires_at=_lease_of(described),
            )
        )
    return leaks, empties, problems, held


def _lease_of(info: ResourceInfo) -> float | None:
    return _epoch(info.extra.get("expires_at"))


def describe_lease(expires_at: float | None, now: float | None = None) -> str:
    """A lease's end for listings: ``""`` (none), ``lease ends in 4m``, ``lease ended``."""
    if expires_at is None:
        return ""
    now = time.time() if now is None else now
    if expires_at <= now:
        return "lease ended"
    return f"lease ends in {describe_age(now, expires_at)}"


async def _release(session: Session, result: Reaped, timeout: float | None) -> None:
    by_url: dict[str, list[Leak]] = {}
    jobs: list[Leak] = []
    for leak in result.leaks:
        if leak.kind == "job":
            jobs.append(leak)
        else:
            by_url.setdefault(leak.url, []).append(leak)

    async def cancel(leak: Leak) -> None:
        try:
            async with asyncio.timeout(timeout):
                adaptor, _ = await session.job_service(leak.url)._open()
                await adaptor.cancel(leak.native_id)
        except AioresError as exc:
            result.problems.append(
                Problem(leak.url, f"cancel failed: {type(exc).__name__}: {exc}", id=leak.id)
            )
            result.kept.append(leak)
        except TimeoutError:
            result.problems.append(Problem(leak.url, "cancel: no answer", id=leak.id))
            result.kept.append(leak)
        else:
            result.released.append(leak.id)

    async def release(url: str, leaks: list[Leak]) -> None:
        manager = session.manager(url)
        for start in range(0, len(leaks), DESTROY_BATCH):
            batch = leaks[start : start + DESTROY_BATCH]
            try:
                async with asyncio.timeout(timeout):
                    await manager.destroy([leak.native_id for leak in batch])
            except AioresError as exc:
                result.problems.append(Problem(url, f"destroy failed: {type(exc).__name__}: {exc}"))
                result.kept.extend(batch)
            except TimeoutError:
                result.problems.append(Problem(url, f"destroy: no answer within {timeout} s"))
                result.kept.extend(batch)
            else:
                result.released.extend(leak.id for leak in batch)

    await asyncio.gather(
        *(release(url, leaks) for url, leaks in by_url.items()), *(cancel(j) for j in jobs)
    )


def describe_age(created: float | None, now: float | None = None) -> str:
    """``created`` as an age for listings: ``42s``, ``5m``, ``3h``, ``2d``."""
    if created is None:
        return "-"
    seconds = max(0.0, (now if now is not None else time.time()) - created)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def endpoint_of(url: str) -> str:
    """``url`` without options (for display)."""
    return str(URL.parse(url).replace(query=()))
