"""The Session: contexts, adaptors (one per endpoint), watchers, journal, background tasks."""

from __future__ import annotations

import asyncio
import enum
import functools
import json
import logging
import os
import secrets
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar

import platformdirs

from . import _heap as heap
from . import _validate as check
from ._clock import Clock, LoopClock
from ._concurrency import Cleanups, Shared, TurnGate
from ._contexts import Context
from ._exceptions import (
    AioresError,
    AuthenticationFailed,
    BadParameter,
    DoesNotExist,
    IncorrectState,
    NotSupported,
    PermissionDenied,
)
from ._journal import Journal
from ._registry import registry
from ._states import ResourceState
from ._url import URL, same_endpoint, split_id
from ._watch import Watcher
from .adaptor import (
    Adaptor,
    AdaptorPlugin,
    CommandRunner,
    FileAdaptor,
    JobAdaptor,
    ResourceAdaptor,
    ResourceInfo,
)

if TYPE_CHECKING:
    from ._descriptions import ComputeDescription
    from ._fleet import Fleet
    from ._jobs import Job, JobService
    from ._jobsession import JobSession
    from ._pool import Policy, Pool
    from ._recover import Confirm, Reaped, Recovered
    from ._resource import Compute, Manager, Resource

__all__ = ["Session", "state_dir"]

log = logging.getLogger("aiores")

A = TypeVar("A", bound=Adaptor)
C = TypeVar("C", bound=Context)
T = TypeVar("T")


class _Default(enum.Enum):
    DEFAULT = "default"


DEFAULT: Final = _Default.DEFAULT

#: Seconds an adaptor may take to close when the session closes.
ADAPTOR_CLOSE_TIMEOUT = 10.0

_ENDED = frozenset(state.name for state in ResourceState if state.final)

#: Errors with which a backend refuses a call before it creates anything (the adaptor
#: contract: an acquire or submit raises one of these only then). The call's intent
#: is closed as ``failed``; nothing is left for recovery to find.
REFUSALS = (AuthenticationFailed, PermissionDenied, BadParameter, NotSupported)


def state_dir() -> Path:
    """``$AIORES_STATE_DIR``, else the platform's user state directory for aiores."""
    configured = os.environ.get("AIORES_STATE_DIR")
    return Path(configured) if configured else Path(platformdirs.user_state_dir("aiores"))


class _Lifecycle(enum.Enum):
    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


_KINDS: dict[str, str] = {
    "resources": "resource_adaptor",
    "jobs": "job_adaptor",
    "files": "file_adaptor",
    "commands": "command_runner",
}


class _Endpoint:
    """One adaptor instance of a session, opened once, with its watcher.

    The watcher is made when first asked for: an endpoint that only runs commands
    or copies files (one per machine in a fan-out) never watches anything.
    """

    def __init__(self, adaptor: Adaptor, make_watcher: Callable[[Adaptor], Watcher]) -> None:
        self.adaptor = adaptor
        self._make_watcher = make_watcher
        self._watcher: Watcher | None = None
        self.is_open = False
        # Held while opening: a caller cancelled or failing mid-open releases it and
        # the next caller tries again; nobody inherits another's cancellation.
        self.lock = asyncio.Lock()

    @property
    def watcher(self) -> Watcher:
        if self._watcher is None:
            self._watcher = self._make_watcher(self.adaptor)
        return self._watcher

    def close_watcher(self) -> None:
        if self._watcher is not None:
            self._watcher.close()


class Session:
    """The root of everything aiores does: use it as ``async with aiores.Session() as s``.

    Args:
        journal: Path of the sqlite journal; the default is ``journal.sqlite`` in
            :func:`state_dir`; None disables journalling (nothing is recoverable then).
        contexts: Credentials (:class:`SSHContext`, :class:`AWSContext`) for adaptors.
        clock: Time source for watchers and backoffs (tests inject a fake one).
        cleanup_timeout: Seconds that the cleanup after a cancelled acquire or submit
            may take at most.

    Resources and jobs outlive the session unless released: closing a session stops
    watching and closes connections, nothing else.
    """

    def __init__(
        self,
        journal: str | os.PathLike[str] | _Default | None = DEFAULT,
        contexts: Sequence[Context] = (),
        *,
        clock: Clock | None = None,
        cleanup_timeout: float = 60.0,
    ) -> None:
        if isinstance(contexts, (Context, str)) or not isinstance(contexts, Iterable):
            raise check.fail("contexts", "a sequence of aiores contexts", contexts)
        contexts = tuple(contexts)
        for i, ctx in enumerate(contexts):
            check.instance(ctx, Context, f"contexts[{i}]", "an aiores context (SSHContext...)")
        if journal is not None and not isinstance(journal, (str, os.PathLike, _Default)):
            raise check.fail("journal", "a path or None", journal)
        if journal is not None and journal is not DEFAULT:
            check.path(journal, "journal")
        if clock is not None and not (
            callable(getattr(clock, "now", None)) and callable(getattr(clock, "sleep", None))
        ):
            raise check.fail("clock", "a Clock (with now() and sleep()) or None", clock)
        cleanup_timeout = check.seconds(cleanup_timeout, "cleanup_timeout")
        self.id = "s-" + secrets.token_hex(6)
        self.contexts: tuple[Context, ...] = tuple(contexts)
        self._journal_path = journal
        self._clock: Clock = clock or LoopClock()
        self.cleanup_timeout = cleanup_timeout
        self.journal: Journal | None = None
        self._lifecycle = _Lifecycle.UNOPENED
        self._tg: asyncio.TaskGroup | None = None
        self._endpoints: dict[tuple[str, str, str], _Endpoint] = {}
        #: The opened endpoint of each (URL as given, kind) asked for: a run on a
        #: machine asks for its runner every time, and the URL's plugin and endpoint
        #: key do not change.
        self._opened: dict[tuple[str | URL, str], _Endpoint] = {}
        self._cleanups = Cleanups(cleanup_timeout, log)
        self._shared = Shared(ADAPTOR_CLOSE_TIMEOUT, log)
        self._background: set[asyncio.Task[None]] = set()
        #: Job submits take their steps (the first: checks, the journal's intent; the
        #: backend call) at most 16 per loop iteration: a thousand gathered at once
        #: would otherwise take each step together, in one iteration.
        self._submits = TurnGate(16)
        self._pinned: dict[tuple[str, int | None], tuple[str, ...]] = {}
        self._login_keys: dict[tuple[str, int | None], tuple[str, ...]] = {}
        self._state_dir = state_dir()

    def __repr__(self) -> str:
        return f"<aiores.Session {self.id} {self._lifecycle.value}>"

    # -- lifecycle --------------------------------------------------------------------
    async def __aenter__(self) -> Session:
        if self._lifecycle is not _Lifecycle.UNOPENED:
            raise IncorrectState(f"{self!r} cannot be opened twice")
        if self._journal_path is not None:
            path = (
                self._state_dir / "journal.sqlite"
                if self._journal_path is DEFAULT
                else Path(self._journal_path)
            )
            self.journal = Journal(path, self.id)
            await self.journal.open()
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        self._lifecycle = _Lifecycle.OPENED
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop watching, finish pending cleanups (bounded), close adaptors and journal."""
        if self._lifecycle is not _Lifecycle.OPENED:
            self._lifecycle = _Lifecycle.CLOSED
            return
        self._lifecycle = _Lifecycle.CLOSED
        try:
            # 1. Nobody waits on a closed session: waiters raise IncorrectState.
            for endpoint in self._endpoints.values():
                endpoint.close_watcher()
            # 2. Background work (watchers, array feeders, probes) stops first ...
            background = list(self._background)
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            # 3. ... then the cleanups of cancelled calls finish (bounded) ...
            await self._cleanups.drain(self.cleanup_timeout)
            # 4. ... while the adaptors they need are still open; then each closes.
            for endpoint in self._endpoints.values():
                if endpoint.is_open:
                    await self._close_adaptor(endpoint.adaptor)
            # 5. What they shared (connection pools, clients) closes last.
            await self._shared.aclose()
        finally:
            # Its fleets' machines and connections are garbage now, closed or not.
            heap.release_owned(self)
            assert self._tg is not None
            await self._tg.__aexit__(None, None, None)
            if self.journal is not None:
                await self.journal.close()

    async def _close_adaptor(self, adaptor: Adaptor) -> None:
        try:
            async with asyncio.timeout(ADAPTOR_CLOSE_TIMEOUT):
                await adaptor.aclose()
        except (AioresError, TimeoutError, OSError) as exc:
            # One adaptor failing to close must not keep the others open.
            log.warning("closing the %s adaptor failed: %r", adaptor.url, exc)

    def _check_open(self) -> None:
        if self._lifecycle is _Lifecycle.UNOPENED:
            raise IncorrectState(
                "the session is not open: use 'async with aiores.Session() as session:'"
            )
        if self._lifecycle is _Lifecycle.CLOSED:
            raise IncorrectState(f"{self!r} is closed")

    # -- public factories -------------------------------------------------------------
    def manager(self, url: str | URL) -> Manager:
        """A resource manager for ``url`` (``"sim://"``, ``"local://"``, ``"any://"``).

        Raises:
            IncorrectURL: the URL is malformed or no adaptor handles its scheme.
        """
        from ._resource import Manager

        self._check_open()
        parsed = URL.parse(url)
        return Manager(self, parsed, self._plugin(parsed, "resources"))

    def job_service(self, url: str | URL) -> JobService:
        """A job service for ``url`` (``"local://"``, ``"ssh://user@host"``).

        Raises:
            IncorrectURL: the URL is malformed or no adaptor handles its scheme.
        """
        from ._jobs import JobService

        self._check_open()
        parsed = URL.parse(url)
        return JobService(self, parsed, self._plugin(parsed, "jobs"))

    def job_session(self, name: str, url: str | URL | None = None) -> JobSession:
        """The DRMAA2 job session ``name``: created at ``url``, or reopened by name.

        Await it (``js = await session.job_session("nightly", "slurm://")``) or use it
        as ``async with`` (closed on exit); its first call opens it otherwise. The
        session lives in the journal: any program with the same journal (the same
        ``$AIORES_STATE_DIR``) reopens it by name and sees the same jobs.

        Args:
            name: Its name: non-empty text, at most 200 characters, without NUL,
                lone surrogates or control characters.
            url: The job URL its jobs are submitted to (``"local://"``,
                ``"ssh://user@host"``, ``"slurm://"``...). None reopens an existing
                session at the URL it was created with.

        Returns:
            A :class:`JobSession`, opened when first awaited or used.

        Raises:
            BadParameter: a bad name (the message names the field).
            IncorrectURL: the URL is malformed or no adaptor handles its scheme.
            NotSupported: the URL offers no jobs.
            IncorrectState: the session is not open, or has no journal.

        Opening it raises BadParameter if the name exists with another URL, and
        DoesNotExist if it does not exist and no URL was given.
        """
        from ._jobsession import JobSession, check_name

        self._check_open()
        check_name(name)
        if self.journal is None:
            raise IncorrectState("job sessions live in the journal: this session has none")
        return JobSession(self, name, url)

    async def job_session_names(self) -> list[str]:
        """The names of every job session in the journal, sorted (DRMAA2's
        ``getJobSessionNames``).

        Raises:
            IncorrectState: the session is not open, or has no journal.
        """
        self._check_open()
        if self.journal is None:
            raise IncorrectState("job sessions live in the journal: this session has none")
        return [record.name for record in await self.journal.job_sessions()]

    async def get(self, id: str, *, probe: bool = False) -> Resource | Job:
        """The resource or job ``id`` names, found through the id's own URL (SAGA's
        ``Compute(id=...)``): no manager or job service needed, from any program.

        ``[sim://]-[vm-3]`` reconnects as ``session.manager("sim://").get(...)`` would
        (its description and confirmed readiness restored from the journal); a job id
        as :meth:`job` does. Whether an id is a resource's or a job's is what the
        journal recorded; an id it does not know is looked for among the resources
        of its URL, then among its jobs.

        Args:
            id: A ``resource.id`` or ``job.id`` (``[url]-[native id]``).
            probe: For a machine whose readiness was never confirmed: try to reach it
                once now (see :meth:`Manager.get`).

        Raises:
            BadParameter: ``id`` is not an aiores id (a bare native id names no URL).
            IncorrectURL: its URL names no adaptor.
            DoesNotExist: its backend knows no such resource or job (or the job was
                reaped).

        Cancelling it changes nothing at the backend.
        """
        url, native = self._owner(id)
        kinds = await self._recorded_kinds(url, native)
        if "job" in kinds and "resource" not in kinds:
            return await self.job(id)
        try:
            manager = self.manager(url)
        except NotSupported:  # its URL offers jobs only (ssh://)
            return await self.job(id)
        try:
            return await manager.get(id, probe=probe)
        except DoesNotExist:
            if "resource" in kinds:
                raise
            try:
                return await self.job(id)
            except (DoesNotExist, NotSupported):
                raise DoesNotExist(f"{url} has no resource or job {id!r}") from None

    async def job(self, id: str) -> Job:
        """The job ``id`` names, found through the id's own URL (DRMAA2's ``get_job``).

        As ``session.job_service(url).get(id)`` with the URL the id holds.

        Raises:
            BadParameter: ``id`` is not an aiores id (a bare native id names no URL).
            IncorrectURL: its URL names no adaptor.
            NotSupported: its URL has no job service.
            DoesNotExist: its backend knows no such job, or it was reaped.

        Cancelling it changes nothing at the backend.
        """
        url, _ = self._owner(id)
        service = self.job_service(url)
        await self._learn_machine(service.url)
        return await service.get(id)

    async def _learn_machine(self, url: URL) -> None:
        """Reconnect to the journalled machine whose access URL ``url`` is, if any:
        a job on a machine aiores booted is reached with the host keys (and login
        keys) that machine's backend vouches for."""
        if self.journal is None or not url.host or self.pinned_host_keys(url.host, url.port):
            return
        for row in reversed(await self.journal.objects("resource")):  # latest first
            if row["state"] in _ENDED:
                continue
            try:
                data = json.loads(row["data"] or "{}")
                access = URL.parse(data["access"])
            except (ValueError, KeyError, TypeError, AioresError):
                continue
            if (access.host, access.port) != (url.host, url.port):
                continue
            try:
                await self.manager(row["url"]).get(row["id"])
            except AioresError as exc:
                log.debug("%s: its machine %s is not found again: %r", url, row["id"], exc)
                continue
            return

    def _owner(self, id: str) -> tuple[str, str]:
        self._check_open()
        parsed = split_id(check.text(id, "id"))
        if parsed is None:
            raise BadParameter(
                f"{id!r} is not an aiores id ([url]-[native id]): a bare native id names "
                "no backend; use session.manager(url).get() or session.job_service(url).get()"
            )
        return parsed

    async def _recorded_kinds(self, url: str, native: str) -> set[str]:
        """What the journal recorded under ``native`` at ``url``'s endpoint."""
        if self.journal is None:
            return set()
        rows = await self.journal.records(None, [native])
        return {row["kind"] for row in rows if same_endpoint(row["url"], url)}

    def fleet(self) -> Fleet:
        """A new, empty :class:`Fleet` of tagged machines on any clouds.

        ``async with session.fleet() as fleet`` destroys what it provisioned on exit.

        Raises:
            IncorrectState: the session is not open.
        """
        from ._fleet import Fleet

        self._check_open()
        return Fleet(self)

    def pool(
        self,
        url_or_manager: str | URL | Manager,
        description: ComputeDescription,
        *,
        min: int = 0,
        max: int = 10,
        tags: Iterable[str] | str = (),
        policy: Policy | None = None,
        slots: int = 1,
        retries: int = 3,
        batch: int = 10,
        idle_timeout: float = 60.0,
        boot_timeout: float | None = 600.0,
        boot_retries: int = 5,
        drain: Callable[[Compute, float], Awaitable[None]] | None = None,
        margin: float = 1.0,
        tick: float = 1.0,
    ) -> Pool:
        """An elastic :class:`Pool` of machines like ``description``, started at once.

        ``async with session.pool(...) as pool`` releases every machine it holds on
        leaving, also when cancelled (shielded, bounded by ``cleanup_timeout``).

        Args:
            url_or_manager: The cloud (``"sim://"``), or a Manager of this session.
            description: What to boot; the machines carry its tags and ``tags``.
            min: Machines kept at least, whatever the policy says.
            max: Machines held at most (booting and draining ones included).
            tags: More tags for the machines (a str is one tag).
            policy: Decides when to add and remove machines (a :class:`Policy`);
                None: :class:`QueuePolicy` with ``batch`` and ``idle_timeout``.
            slots: Work that one machine runs at once.
            retries: Times one piece of work is requeued after its machine failed
                or was revoked under it before it fails.
            batch: The most machines the default policy adds at once.
            idle_timeout: Seconds the default policy lets a machine stay idle.
            boot_timeout: Seconds a machine may take to become ACTIVE (None: no
                limit); past it, it counts as a failed boot and is released.
            boot_retries: Failed boots in a row (with no machine ACTIVE) after which
                the work waiting fails with NoSuccess.
            drain: ``await drain(machine, seconds_left)`` when a machine is revoked,
                bounded by its deadline (less ``margin``).
            margin: Seconds before a revocation deadline by which running work is
                stopped (and requeued).
            tick: Seconds between the policy's decisions when nothing happens.

        Raises:
            BadParameter: a bad argument.
            IncorrectURL: no adaptor for the URL.
            IncorrectState: the session is not open.
        """
        from ._pool import make_pool

        self._check_open()
        return make_pool(
            self,
            url_or_manager,
            description,
            min=min,
            max=max,
            tags=tags,
            policy=policy,
            slots=slots,
            retries=retries,
            batch=batch,
            idle_timeout=idle_timeout,
            boot_timeout=boot_timeout,
            boot_retries=boot_retries,
            drain=drain,
            margin=margin,
            tick=tick,
        )

    async def recover(self, *, timeout: float | None = 60.0) -> Recovered:
        """Reconnect to what earlier sessions left alive, according to the journal.

        Reads the journal of every session, asks each endpoint (one batched describe)
        about the resources and jobs recorded there and not final, and returns those
        the backends still know, with the states they report now (a change that
        happened while nobody watched is applied and recorded). An id the answer
        leaves out is asked about again, as the endpoint's watcher would, and counts
        as gone only when as many describes in a row as the watcher needs left it out
        (backends are eventually consistent): resources gone are recorded as ended and
        listed in ``gone``. Endpoints whose adaptor cannot load or that do not answer
        within ``timeout``, and ids not yet counted gone by then, are reported in
        ``problems``, not raised.

        Returns:
            A :class:`~aiores._recover.Recovered`: ``resources``, ``jobs``, ``gone``,
            ``problems`` and the intents still ``in_flight``.

        Raises:
            IncorrectState: the session is not open, or has no journal.

        Cancelling it stops the describes; nothing is changed at any backend.
        """
        from ._recover import recover

        timeout = check.timeout(timeout)
        return await recover(self, timeout=timeout)

    async def reap(self, *, confirm: Confirm | None = None, timeout: float | None = 60.0) -> Reaped:
        """Find and release resources (and jobs) that earlier sessions leaked.

        Leaked means: created under an acquire whose intent never completed (the
        process died during the call; found at the backend by the intent's token), or
        recorded by a session that died without closing (its process ended: killed,
        crashed hard) and never destroyed. Jobs whose submit never completed are
        found by token likewise and cancelled. A session that closed normally left its
        resources on purpose: they are kept. Pending intents of sessions that may
        still run (another live process, another host) are skipped. Nothing the
        journal does not name is touched.

        Args:
            confirm: Called with the leaks found (a plain or async callable); they are
                released only if it returns true. None releases without asking.
            timeout: Seconds each endpoint may take per call.

        Returns:
            A :class:`~aiores._recover.Reaped`: what was found, released, kept.
            Released intents are recorded ``released`` in the journal, destroyed
            resources CANCELED.

        Raises:
            IncorrectState: the session is not open, or has no journal.

        Cancelling it stops between calls; what was not released yet stays in the
        journal as it was, and a later reap finds it again.
        """
        from ._recover import reap

        timeout = check.timeout(timeout)
        return await reap(self, confirm=confirm, timeout=timeout)

    # -- adaptors ---------------------------------------------------------------------
    def _plugin(self, url: URL, kind: str) -> AdaptorPlugin:
        return self._resolve(url, kind)[0]

    def _resolve(self, url: URL, kind: str) -> tuple[AdaptorPlugin, _Endpoint]:
        """The plugin for ``url`` and its endpoint for ``kind`` (made now, so a plugin
        that lacks the capability fails at once)."""
        if url.scheme != "any":
            plugin = registry.plugin_for(url)
            return plugin, self._endpoint(plugin, url, kind)
        for plugin in registry.candidates(url):
            try:
                return plugin, self._endpoint(plugin, url, kind)
            except NotSupported:
                continue
        raise NotSupported(f"no adaptor accepts {str(url)!r} for {kind}")

    def _endpoint(self, plugin: AdaptorPlugin, url: URL, kind: str) -> _Endpoint:
        key = (plugin.name, kind, plugin.endpoint(url))
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            factory: Callable[[URL, Session], Adaptor] = getattr(plugin, _KINDS[kind])
            adaptor = factory(url, self)
            endpoint = self._endpoints[key] = _Endpoint(
                adaptor,
                functools.partial(Watcher, clock=self._clock, spawn=self.spawn, name=key[2]),
            )
        return endpoint

    async def _open_endpoint(
        self, plugin: AdaptorPlugin, url: URL, kind: str, endpoint: _Endpoint | None = None
    ) -> _Endpoint:
        """The endpoint's adaptor (``endpoint`` if it was looked up already), opened
        (once, shared by all concurrent callers)."""
        self._check_open()
        if endpoint is None:
            endpoint = self._endpoint(plugin, url, kind)
        if not endpoint.is_open:
            async with endpoint.lock:
                self._check_open()
                if not endpoint.is_open:
                    await endpoint.adaptor.open()
                    endpoint.is_open = True
        return endpoint

    def _ready_adaptor(self, url: str | URL, kind: str, base: type[A]) -> A | None:
        """The adaptor of ``url`` for ``kind`` if its endpoint is open already (no
        await, as for every command of a fan-out after the first); else None."""
        endpoint = self._opened.get((url, kind))
        if endpoint is None or not endpoint.is_open:
            return None
        self._check_open()
        adaptor = endpoint.adaptor
        return adaptor if isinstance(adaptor, base) else None

    async def _adaptor(self, url: str | URL, kind: str, base: type[A]) -> A:
        ready = self._ready_adaptor(url, kind, base)
        if ready is not None:
            return ready
        endpoint = self._opened.get((url, kind))
        if endpoint is not None and endpoint.is_open:
            self._check_open()  # open, but not a ``base``: said below
        else:
            parsed = URL.parse(url)
            plugin, endpoint = self._resolve(parsed, kind)
            endpoint = await self._open_endpoint(plugin, parsed, kind, endpoint)
            self._opened[(url, kind)] = endpoint
        adaptor = endpoint.adaptor
        if not isinstance(adaptor, base):
            scheme = URL.parse(url).scheme
            raise NotSupported(f"{scheme}:// {kind} adaptor is not a {base.__name__}")
        return adaptor

    # -- what adaptors see (aiores.adaptor.AdaptorEnv) --------------------------------
    @property
    def state_dir(self) -> Path:
        return self._state_dir

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def session_id(self) -> str:
        return self.id

    @property
    def cleanups(self) -> Cleanups:
        return self._cleanups

    def shared(self, key: Hashable, make: Callable[[], T]) -> T:
        if key not in self._shared:
            self._check_open()  # nothing new is made for a closing session
        return self._shared.get(key, make)

    def context(self, kind: type[C], host: str = "") -> C | None:
        for ctx in self.contexts:
            if isinstance(ctx, kind) and (not host or ctx.applies_to(host)):
                return ctx
        return None

    def spawn(self, fn: Callable[[], Awaitable[None]], *, name: str) -> asyncio.Task[None]:
        """Run ``fn()`` in the session's task group until it returns or the session closes.

        An exception escaping ``fn`` is logged, never propagated into the task that
        opened the session. Returns the task (it may be cancelled before ``fn`` starts).
        """
        self._check_open()
        assert self._tg is not None
        task = self._tg.create_task(self._guarded(fn, name), name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _guarded(self, fn: Callable[[], Awaitable[None]], name: str) -> None:
        try:
            await fn()
        except Exception:
            log.exception("aiores background task %r failed", name)

    def pinned_host_keys(self, host: str, port: int | None) -> tuple[str, ...]:
        return self._pinned.get((host.lower(), port), ())

    def login_keys(self, host: str, port: int | None) -> tuple[str, ...]:
        return self._login_keys.get((host.lower(), port), ())

    def learn_access(self, info: ResourceInfo) -> None:
        """Remember the host keys and login keys a resource's backend vouched for."""
        if not info.access or not (info.host_keys or info.login_keys):
            return
        url = URL.parse(info.access)
        if info.host_keys:
            self._pinned[(url.host, url.port)] = tuple(info.host_keys)
        if info.login_keys:
            self._login_keys[(url.host, url.port)] = tuple(info.login_keys)

    async def command_runner(self, url: str | URL) -> CommandRunner:
        return await self._adaptor(url, "commands", CommandRunner)  # type: ignore[type-abstract]

    async def job_adaptor(self, url: str | URL) -> JobAdaptor:
        return await self._adaptor(url, "jobs", JobAdaptor)  # type: ignore[type-abstract]

    async def file_adaptor(self, url: str | URL) -> FileAdaptor:
        return await self._adaptor(url, "files", FileAdaptor)

    async def resource_adaptor(self, url: str | URL) -> ResourceAdaptor:
        return await self._adaptor(url, "resources", ResourceAdaptor)  # type: ignore[type-abstract]

    # -- cancellation-safe backend calls ----------------------------------------------
    async def guarded_call(
        self,
        *,
        op: str,
        url: str,
        payload: Any,
        count: int,
        call: Callable[[str], Awaitable[Sequence[Any]]],
        release: Callable[[str], Awaitable[Sequence[str]]],
    ) -> Sequence[Any]:
        """Journal an intent, make the backend call, and release on cancel or failure.

        ``call(token)`` makes the backend call under a fresh idempotency token;
        ``release(token)`` finds and releases whatever the backend created under it and
        returns the released ids, once the backend has confirmed each one stopped or
        gone; if it cannot confirm that, it raises. If ``call`` is cancelled or fails,
        ``release`` runs shielded from cancellation and bounded by ``cleanup_timeout``,
        then the cancellation or error propagates. The journal closes the intent as
        ``released`` only when ``release`` returned: if it raised or ran out of time
        the intent stays ``pending``, and recovery finds what it made by its token.
        """
        self._check_open()
        token = "t-" + secrets.token_hex(8)
        if self.journal is not None:
            try:
                await self.journal.intent(token, op, url, payload, count)
            except asyncio.CancelledError:
                # The intent may still be committed: say it never reached the backend.
                self.journal.outcome(token, "cancelled", (), "cancelled before the backend call")
                raise
        try:
            result = await call(token)
            if self.journal is not None:
                # Durable before the caller holds the result: a crash from here on
                # leaves a 'done' intent, never a 'pending' one whose token recovery
                # would use to reap what the caller was given.
                ids = [getattr(r, "id", str(r)) for r in result]
                await self.journal.outcome_durable(token, "done", ids)
        except asyncio.CancelledError:
            await self._shielded_release(token, release, "cancelled", failed=None)
            raise
        except BaseException as exc:
            await self._shielded_release(token, release, repr(exc), failed=exc)
            raise
        return result

    async def _shielded_release(
        self,
        token: str,
        release: Callable[[str], Awaitable[Sequence[str]]],
        error: str,
        failed: BaseException | None,
    ) -> None:
        """Release what ``token`` created, after a call cancelled (``failed`` None) or
        failed with ``failed``.

        After a cancellation nobody else hears of a release that fails: it is logged
        as an error. After a failure the caller hears of that failure; the release's
        own is logged at debug level (an unreachable host fails both alike, and most
        often nothing was created). Either way the intent stays ``pending`` for
        recovery to find by token, unless the backend refused the call (one of
        :data:`REFUSALS`): then nothing was created, and the intent is closed
        ``failed`` whatever the release found out.
        """
        refused = isinstance(failed, REFUSALS)

        async def cleanup() -> None:
            try:
                # Returns only what the backend confirmed released.
                ids = await release(token)
            except (AioresError, OSError) as exc:
                if failed is None:
                    raise  # logged by the session's cleanups
                log.debug("releasing what %s created failed (after %s): %r", token, error, exc)
                if refused and self.journal is not None:
                    self.journal.outcome(token, "failed", (), error)
                return
            if self.journal is not None:
                if refused and not ids:
                    self.journal.outcome(token, "failed", (), error)
                else:
                    self.journal.outcome(token, "released", ids, error)

        # If it fails (could not confirm) or times out, the intent stays 'pending':
        # recovery finds it by token.
        await self.shielded(cleanup, what=f"releasing what {token} created")

    async def shielded(self, fn: Callable[[], Awaitable[None]], *, what: str) -> None:
        """Run cleanup ``fn()`` shielded from cancellation, bounded by ``cleanup_timeout``.

        Cancelling the caller again does not stop the cleanup: it runs on (bounded) and
        the session waits for it when closing; the cancellation still propagates. A
        failure of the cleanup is logged, not raised (the caller is already failing).
        """

        await self._cleanups.run(fn, what=what)
