"""Managers and resources: acquire, reconnect, list, destroy; Compute runs and copies."""

from __future__ import annotations

import builtins
import dataclasses
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload

from . import _validate as check
from ._descriptions import ComputeDescription, NetworkDescription, StorageDescription, from_record
from ._exceptions import (
    AioresError,
    BadParameter,
    DoesNotExist,
    IncorrectState,
    NoSuccess,
    NotSupported,
    Timeout,
)
from ._results import RunResult
from ._states import ResourceState
from ._url import URL, join_id, native_id, same_endpoint
from ._watch import Tracked, Watcher
from .adaptor import (
    AdaptorPlugin,
    CommandRunner,
    Image,
    ResourceAdaptor,
    ResourceInfo,
    Template,
)

if TYPE_CHECKING:
    from ._jobs import JobService
    from ._journal import Journal
    from ._session import Session

__all__ = ["Compute", "Manager", "Network", "Resource", "Storage"]

log = logging.getLogger("aiores")

#: Readiness probing of machines whose ACTIVE means "SSH answers" (seconds).
PROBE_FIRST_DELAY = 0.1
PROBE_MAX_DELAY = 5.0
PROBE_TIMEOUT = 30.0
#: Access schemes whose answer to a command is what "ready" means.
READY_SCHEMES = {"ssh"}

#: The key of ``ResourceInfo.extra`` that holds when a machine's lease ends (epoch seconds).
LEASE_KEY = "expires_at"

#: The most resources one acquire_many call may ask for.
MAX_COUNT = 100_000

Description = ComputeDescription | StorageDescription | NetworkDescription
N = TypeVar("N", Template, Image)


class Manager:
    """Acquires and finds the resources of one backend (``session.manager(url)``).

    Usable plainly or as ``async with session.manager(url) as mgr``; leaving the block
    releases nothing (resources outlive their manager until destroyed).
    """

    def __init__(self, session: Session, url: URL, plugin: AdaptorPlugin) -> None:
        self.session = session
        self.url = url
        self._plugin = plugin

    def __repr__(self) -> str:
        return f"<aiores.Manager {self.url}>"

    async def __aenter__(self) -> Manager:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def _open(self) -> tuple[ResourceAdaptor, Watcher]:
        endpoint = await self.session._open_endpoint(self._plugin, self.url, "resources")
        assert isinstance(endpoint.adaptor, ResourceAdaptor)
        return endpoint.adaptor, endpoint.watcher

    def _resource(
        self,
        info: ResourceInfo,
        watcher: Watcher,
        description: Description | None,
        *,
        ready: bool = False,
    ) -> Resource:
        """The object of ``info`` (this session's, if it has one); ``description`` and
        ``ready`` (its readiness was confirmed once) as known or journalled."""
        known = watcher.lookup(info.id)
        if isinstance(known, Resource) and not (known.state.final and info.existing):
            known._apply(info)
            return known
        cls = _CLASSES.get(info.rtype, Compute)
        resource = cls(self, info, watcher, description, ready=ready)
        resource._journal_it()  # its state as held (PENDING until SSH answers)
        return resource

    async def _recorded(self, natives: Sequence[str]) -> dict[str, tuple[Description | None, bool]]:
        """What the journal holds of these resources of this endpoint, by native id:
        their description and whether their readiness was confirmed once."""
        journal = self.session.journal
        if journal is None or not natives:
            return {}
        found: dict[str, tuple[Description | None, bool]] = {}
        for row in await journal.records("resource", natives):  # latest first
            if row["native_id"] in found or not same_endpoint(row["url"], self.url):
                continue
            data = row["data"]
            found[row["native_id"]] = restored(data, data.get("rtype"))
        return found

    # -- acquiring --------------------------------------------------------------------
    @overload
    async def acquire(self, description: ComputeDescription) -> Compute: ...
    @overload
    async def acquire(self, description: StorageDescription) -> Storage: ...
    @overload
    async def acquire(self, description: NetworkDescription) -> Network: ...
    async def acquire(self, description: Description) -> Resource:
        """Acquire one resource; returns once the backend accepted it (NEW or PENDING).

        Raises:
            BadParameter: the description is not a Compute-, Storage- or
                NetworkDescription, or it places a machine on a network of another
                manager's cloud.
            NotSupported: a network, or a machine on one, from a backend without
                networks.
            AioresError: the backend refused (the most specific subclass).

        Cancelling it after the backend may have accepted releases whatever was created
        (shielded from the cancellation, bounded by ``Session.cleanup_timeout``), then
        re-raises the cancellation.
        """
        return (await self.acquire_many(description, 1))[0]

    @overload
    async def acquire_many(
        self, description: ComputeDescription, count: int
    ) -> builtins.list[Compute]: ...
    @overload
    async def acquire_many(
        self, description: StorageDescription, count: int
    ) -> builtins.list[Storage]: ...
    @overload
    async def acquire_many(
        self, description: NetworkDescription, count: int
    ) -> builtins.list[Network]: ...
    async def acquire_many(self, description: Description, count: int) -> builtins.list[Any]:
        """Acquire ``count`` alike resources, in one backend call where the backend allows.

        Raises and cancels as :meth:`acquire` does: on failure or cancellation every
        resource created under the call's token is released.
        """
        if not isinstance(
            description, (ComputeDescription, StorageDescription, NetworkDescription)
        ):
            raise BadParameter(
                "acquire needs an aiores.ComputeDescription, StorageDescription or "
                f"NetworkDescription, not {type(description).__name__}"
            )
        check.count(count, "count", max=MAX_COUNT)
        asked: Description = description
        if isinstance(description, ComputeDescription) and description.network is not None:
            # The backend is given its own id; a network of another cloud is refused here.
            asked = description.replace(network=self._native(description.network, "network"))
        adaptor, watcher = await self._open()
        networked = isinstance(asked, NetworkDescription) or (
            isinstance(asked, ComputeDescription) and asked.network is not None
        )
        if networked and not adaptor.supports_networks:
            raise NotSupported(f"{self.url.scheme}:// has no networks")

        async def call(token: str) -> Sequence[ResourceInfo]:
            # An adaptor that supports networks widens acquire() to take one.
            infos = await adaptor.acquire(asked, count, token)  # type: ignore[arg-type]
            return [dataclasses.replace(i, token=i.token or token) for i in infos]

        async def release(token: str) -> Sequence[str]:
            ids = [info.id for info in await adaptor.find(token)]
            if ids:
                await adaptor.destroy(ids)
            return ids

        infos = await self.session.guarded_call(
            op="acquire",
            url=str(self.url),
            payload=description,
            count=count,
            call=call,
            release=release,
        )
        return [self._resource(info, watcher, description) for info in infos]

    @overload
    def acquired(self, description: ComputeDescription) -> AbstractAsyncContextManager[Compute]: ...
    @overload
    def acquired(self, description: StorageDescription) -> AbstractAsyncContextManager[Storage]: ...
    @overload
    def acquired(self, description: NetworkDescription) -> AbstractAsyncContextManager[Network]: ...
    def acquired(self, description: Description) -> AbstractAsyncContextManager[Any]:
        """``async with mgr.acquired(desc) as vm``: acquire, and destroy on exit.

        The destroy on exit runs even if the block was cancelled (shielded, bounded).
        """
        return self._acquired(description)

    @asynccontextmanager
    async def _acquired(self, description: Description) -> AsyncIterator[Resource]:
        resource = await self.acquire(description)
        try:
            yield resource
        finally:
            await self.session.shielded(resource.destroy, what=f"destroying {resource.id}")

    # -- finding ----------------------------------------------------------------------
    async def get(self, rid: str, *, probe: bool = False) -> Resource:
        """Reconnect to a resource by its id (``resource.id``), e.g. from another process.

        Its description comes back from the journal (without what the journal never
        holds, such as user data), and so does whether its readiness was confirmed
        once: a machine that answered SSH in an earlier program is ACTIVE while its
        backend says it runs. One that never answered is PENDING until a ``wait``
        probes it, or at once with ``probe=True``.

        Args:
            rid: Its id (or its backend's native id).
            probe: If the backend says it runs but its readiness was never confirmed,
                try to reach it once now (bounded); it is ACTIVE if that answered.

        Raises:
            DoesNotExist: the backend does not know it.
            BadParameter: the id belongs to another manager's URL.
            AuthenticationFailed: ``probe`` was refused (credentials, host key): retrying
                cannot help.

        Cancelling it changes nothing at the backend.
        """
        check.flag(probe, "probe")
        native = self._native(rid)
        adaptor, watcher = await self._open()
        known = watcher.lookup(native)
        if isinstance(known, Resource) and not (known.state.final and known._existing):
            resource = known
        else:
            infos = await adaptor.describe([native])
            if native not in infos:
                raise DoesNotExist(f"{self.url} has no resource {rid!r}")
            description, ready = (await self._recorded([native])).get(native, (None, False))
            resource = self._resource(infos[native], watcher, description, ready=ready)
        if probe:
            await resource._probe_once()
        return resource

    async def get_description(self, rid: str) -> Description | None:
        """The description a resource was acquired with (SAGA's ``get_description``).

        It is the one the resource holds, restored from the journal where it was
        acquired by another program; None if no journal this session reads recorded it.

        Raises:
            DoesNotExist: the backend does not know it.
            BadParameter: the id belongs to another manager's URL.
        """
        return (await self.get(rid)).description

    def _native(self, rid: str, kind: str = "resource") -> str:
        return native_id(rid, self.url, kind)

    async def list(
        self, rtype: str | None = None, tags: Iterable[str] | str | None = None
    ) -> builtins.list[Resource]:
        """Resources this backend holds, of ``rtype`` and carrying all ``tags``."""
        if rtype not in (None, "compute", "storage", "network"):
            raise BadParameter(
                f"rtype must be 'compute', 'storage', 'network' or None, not {rtype!r}"
            )
        wanted = frozenset(
            [check.text(tags, "tags")]
            if isinstance(tags, str)
            else check.str_seq(tags or (), "tags", items_empty=False)
        )
        adaptor, watcher = await self._open()
        infos = [
            i
            for i in await adaptor.list(wanted)
            if (rtype is None or i.rtype == rtype) and wanted <= i.tags
        ]
        recorded = await self._recorded(
            [i.id for i in infos if not isinstance(watcher.lookup(i.id), Resource)]
        )
        resources = []
        for info in infos:
            description, ready = recorded.get(info.id, (None, False))
            resources.append(self._resource(info, watcher, description, ready=ready))
        return resources

    async def list_templates(self) -> builtins.list[Template]:
        """The sizes the backend offers."""
        adaptor, _ = await self._open()
        return builtins.list(await adaptor.list_templates())

    async def get_template(self, name: str) -> Template:
        """One template by name; raises DoesNotExist naming the ones there are."""
        templates = await self.list_templates()
        return _named(templates, name, "template", self.url)

    async def list_images(self) -> builtins.list[Image]:
        """The images the backend can boot."""
        adaptor, _ = await self._open()
        return builtins.list(await adaptor.list_images())

    async def get_image(self, name: str) -> Image:
        """One image by name; raises DoesNotExist naming the ones there are."""
        return _named(await self.list_images(), name, "image", self.url)

    # -- releasing --------------------------------------------------------------------
    async def destroy(self, target: str | Resource | Iterable[str | Resource]) -> None:
        """Release resources (by id or object) in as few backend calls as it allows.

        Already-released resources are not an error. Each resource object of this
        session becomes CANCELED.
        """
        if isinstance(target, (str, Resource)):
            items: builtins.list[str | Resource] = [target]
        elif isinstance(target, bytes) or not isinstance(target, Iterable):
            raise check.fail("target", "a resource, an id, or an iterable of them", target)
        else:
            items = check.sized(target, "target")
        natives: builtins.list[str] = []
        for i, item in enumerate(items):
            if not isinstance(item, (str, Resource)):
                raise check.fail(f"target[{i}]", "a resource or an id (str)", item)
            if isinstance(item, Resource):
                if item.manager.url != self.url:
                    raise BadParameter(
                        f"{item.id} belongs to {item.manager.url}, not to {self.url}: "
                        "destroy it with its own manager (or resource.destroy())"
                    )
                natives.append(item.native_id)
            else:
                natives.append(self._native(item))
        if not natives:
            return
        adaptor, watcher = await self._open()
        await adaptor.destroy(natives)
        for native in natives:
            obj = watcher.lookup(native)
            if isinstance(obj, Resource):
                obj._destroyed()


def restored(data: Mapping[str, Any], rtype: object) -> tuple[Description | None, bool]:
    """A resource's journalled ``data``: its description and whether it was ready once."""
    kind = _DESCRIPTIONS.get(str(rtype), ComputeDescription)
    return from_record(kind, data.get("description")), data.get("ready") is True


def _named(items: Sequence[N], name: str, what: str, url: URL) -> N:
    for item in items:
        if item.name == name:
            return item
    known = ", ".join(sorted(i.name for i in items)) or "none"
    raise DoesNotExist(f"{url} has no {what} {name!r}; it has: {known}")


class Resource(Tracked[ResourceState]):
    """A resource acquired from (or found at) a backend; it outlives the session.

    Attributes are the backend's last word; ``state`` never goes backwards.
    """

    _kind = "resource"

    def __init__(
        self,
        manager: Manager,
        info: ResourceInfo,
        watcher: Watcher,
        description: Description | None,
        *,
        ready: bool = False,
    ) -> None:
        self._manager = manager
        self._description = description
        self._existing = info.existing  # a machine aiores does not own (hosts://)
        self._ready = ready  # SSH has answered, here or in an earlier program
        self._held = False  # the backend says running; SSH has not answered yet
        self._probing = False
        self.id = join_id(str(manager.url), info.id)
        self._pin(info)
        held = self._hold_until_ready(info)
        self._info = held
        super().__init__(held.state, watcher, info.id)

    def __repr__(self) -> str:
        return f"<aiores.{type(self).__name__} {self.id} {self._state.name}>"

    __str__ = __repr__

    def _on_info(self, info: ResourceInfo) -> None:
        self._info = info
        self._pin(info)

    def _pin(self, info: ResourceInfo) -> None:
        self._manager.session.learn_access(info)

    def _journal_it(self) -> None:
        """Record it (its state, description, tags, access, confirmed readiness).

        A machine aiores does not own is not recorded: it is nobody's leak. What
        this object does not know (a description, readiness) keeps what the journal
        holds (see :meth:`Journal.record_object`).
        """
        if self._existing:
            return
        self._remember(
            url=str(self._manager.url),
            token=self._info.token,
            data={
                "description": self._description,
                "rtype": self._info.rtype,
                "tags": self._info.tags,
                "access": self._info.access,
                "ready": True if self._ready else None,
                "expires_at": self._info.extra.get(LEASE_KEY),
            },
        )

    def _apply(self, info: ResourceInfo) -> bool:  # type: ignore[override]
        return super()._apply(self._hold_until_ready(info))

    # -- readiness: ACTIVE means usable ---------------------------------------------------
    def _needs_probe(self, info: ResourceInfo) -> bool:
        """True while the backend says running but SSH has not answered yet."""
        ready = "ssh" if self._description is None else getattr(self._description, "ready", None)
        return (
            not self._ready
            and not info.existing
            and ready == "ssh"
            and info.rtype == "compute"
            and info.state is ResourceState.ACTIVE
            and bool(info.access)
            and URL.parse(info.access or "").adaptor in READY_SCHEMES
        )

    def _hold_until_ready(self, info: ResourceInfo) -> ResourceInfo:
        """Report a running but not yet reachable machine as PENDING (probed while waited on)."""
        if not self._needs_probe(info):
            self._held = False
            return info
        self._held = True
        self._start_probe()
        return dataclasses.replace(info, state=ResourceState.PENDING)

    def _interest_changed(self, interested: bool) -> None:
        if interested:
            self._start_probe()

    def _start_probe(self) -> None:
        # Only while someone waits: listing a thousand running machines must not open
        # a thousand SSH connections.
        if self._held and self._interest and not self._probing:
            self._probing = True
            self._manager.session.spawn(self._probe, name=f"aiores-ready {self.id}")

    async def _probe(self) -> None:
        """Probe (:meth:`_reach`) until it answers, while someone waits."""
        session = self._manager.session
        delay = PROBE_FIRST_DELAY
        try:
            while self._held and self._interest and not self._state.final:
                try:
                    if await self._reach():
                        return
                except AioresError as exc:
                    # Refused credentials or host key, a bad URL: retrying cannot help,
                    # and the machine is not at fault. The waiters hear of it; the next
                    # wait() probes again (after, say, the known_hosts file is fixed).
                    self._wake(exc)
                    return
                await session.clock.sleep(delay)
                delay = min(delay * 2, PROBE_MAX_DELAY)
        finally:
            self._probing = False

    async def _probe_once(self) -> None:
        """One probe now if it is held (``Manager.get(probe=True)``); raises what
        retrying cannot help."""
        if self._held and not self._state.final:
            await self._reach()

    async def _reach(self) -> bool:
        """Run ``true`` over SSH, then the adaptor's
        :meth:`~aiores.adaptor.ResourceAdaptor.reached`; True (and ACTIVE, journalled as
        ready for later programs) if it answered, False if it is not up yet.

        Raises:
            AioresError: not transient (refused credentials or host key).
        """
        access = self._info.access
        assert access is not None
        try:
            runner = await self._manager.session.command_runner(access)
            await runner.run("true", timeout=PROBE_TIMEOUT)
            # The backend's last step over that first connection (ec2://
            # rotates the host key it injected at boot).
            adaptor, _ = await self._manager._open()
            info = await adaptor.reached(self._info, runner)
        except (NoSuccess, Timeout, OSError) as exc:  # not up yet
            log.debug("%s: not reachable yet: %r", self, exc)
            return False
        if not self._held:  # another probe got there first
            return True
        # SSH answered (whatever the exit status).
        self._ready = True
        self._held = False
        self._apply(dataclasses.replace(info, state=ResourceState.ACTIVE))
        self._journal_it()
        return True

    def _detail(self) -> str:
        return self._info.state_detail

    def _journal(self) -> Journal | None:
        return self._manager.session.journal

    @property
    def _journal_id(self) -> str:
        return self.id

    def _destroyed(self) -> None:
        self._held = False
        if not self._state.final:
            self._apply(
                dataclasses.replace(
                    self._info, state=ResourceState.CANCELED, state_detail="destroyed"
                )
            )

    @property
    def native_id(self) -> str:
        """The backend's own id."""
        assert self._native_id is not None
        return self._native_id

    @property
    def rtype(self) -> str:
        """``"compute"``, ``"storage"`` or ``"network"``."""
        return self._info.rtype

    @property
    def state_detail(self) -> str:
        """The backend's own word for the state (``"running"``, ``"shutting-down"``)."""
        return self._info.state_detail

    @property
    def access(self) -> str | None:
        """The URL through which jobs, commands and files reach it, once known."""
        return self._info.access

    @property
    def description(self) -> Description | None:
        """What it was acquired with; found again from another program, as the journal
        recorded it (without user data, never journalled), or None if no journal did."""
        return self._description

    @property
    def manager(self) -> Manager:
        return self._manager

    @property
    def tags(self) -> frozenset[str]:
        return self._info.tags

    @property
    def public_address(self) -> str | None:
        return self._info.public_address

    @property
    def private_address(self) -> str | None:
        return self._info.private_address

    @property
    def host_keys(self) -> tuple[str, ...]:
        """Host keys the backend vouches for (pinned when connecting)."""
        return self._info.host_keys

    @property
    def extra(self) -> Mapping[str, Any]:
        """Backend-specific facts (instance type, zone...)."""
        return self._info.extra

    async def destroy(self) -> None:
        """Release it; it becomes CANCELED. Releasing twice is not an error."""
        await self._manager.destroy(self)

    async def reconfig(self, description: Description) -> None:
        """Change it in place where the backend can (else NotSupported)."""
        if isinstance(description, NetworkDescription):
            raise NotSupported(f"{self}: a network cannot be changed in place")
        adaptor, _ = await self._manager._open()
        self._apply(await adaptor.reconfig(self.native_id, description))
        self._description = description
        self._journal_it()


class Compute(Resource):
    """A machine: run commands, submit jobs, copy files through its ``access`` URL."""

    def _require_access(self) -> str:
        if self._state.final:
            raise IncorrectState(f"{self} is {self._state.name}: nothing runs on it any more")
        if self.access is None:
            raise IncorrectState(
                f"{self} has no access URL yet; await resource.wait(ResourceState.ACTIVE)"
            )
        return self.access

    @property
    def expires_at(self) -> float | None:
        """When its lease ends, in seconds since the epoch (the backend's clock), or None.

        A machine acquired with ``ComputeDescription(duration=...)`` holds a lease: its
        backend ends it then (EXPIRED) whatever becomes of the program that acquired
        it, unless :meth:`renew` extends it; never earlier, though a backend may be
        coarser (ec2:// counts whole minutes from the end of boot). None for a
        machine with no lease (or a backend that does not say).
        """
        value = self._info.extra.get(LEASE_KEY)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        return None

    async def renew(self, seconds: float) -> None:
        """Renew its lease: it now ends ``seconds`` from now (see :attr:`expires_at`).

        The new end replaces the old one (``renew(600)`` on a machine with an hour
        left shortens its lease to ten minutes). sim:// renews through the cloud's
        API; ec2:// re-arms the shutdown timer on the machine over SSH and updates
        its ``aiores:expires`` tag. The new end is journalled.

        Args:
            seconds: Seconds from now (finite, > 0; a timedelta too).

        Raises:
            BadParameter: ``seconds`` is not a finite number > 0.
            IncorrectState: it has ended, or was acquired with no ``duration`` (no
                lease to renew).
            NotSupported: its backend has no leases.
            AioresError: the backend refused (the most specific subclass).

        Cancelling it may leave the lease renewed or not (the old end, or the new).
        """
        seconds = check.seconds(seconds, "seconds")
        if self._state.final:
            raise IncorrectState(f"{self} is {self._state.name}: it has no lease to renew")
        adaptor, _ = await self._manager._open()
        self._apply(await adaptor.renew(self.native_id, seconds))
        self._journal_it()

    def job_service(self) -> JobService:
        """A job service on this machine (through its access URL)."""
        return self._manager.session.job_service(self._require_access())

    def access_as(self, user: str | None) -> str:
        """Its access URL, logging in as ``user`` (None: the URL's own user).

        Raises:
            BadParameter: ``user`` is not a login name (empty, starting with ``-``, or
                holding white space, a control character, ``@``, ``:`` or ``/``).
            IncorrectState: it is not reachable (no access URL, or released).
        """
        access = self._require_access()
        if user is None:
            return access
        name = check.text(user, "user")
        if name.startswith("-") or any(
            not c.isprintable() or c.isspace() or c in "@:/\\" for c in name
        ):
            raise BadParameter(
                f"user must be a login name (no white space, control character, @, : or /), "
                f"not {user!r}"
            )
        return str(URL.parse(access).replace(user=user))

    async def run(
        self,
        command: str | Sequence[str],
        *,
        stdin: bytes | str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        user: str | None = None,
        on_output: Callable[[str, bytes], None] | None = None,
    ) -> RunResult:
        """Run a command on it and return its result (a non-zero exit is a result).

        A str is a shell command; a sequence is a program and its arguments, never
        interpreted by a shell.

        Args:
            command: What to run.
            stdin: Its standard input.
            env: Environment variables to set for it.
            timeout: Seconds it may take (0 allowed: a command that cannot finish at
                once is stopped); None: no limit.
            user: Log in as this user instead of the access URL's (same host), as
                ``Group.run(user=...)`` does.
            on_output: Called on the event loop with ``"stdout"`` or ``"stderr"`` and
                each chunk of output (bytes, not split into lines) as it arrives, never
                after ``run`` returns; the result still holds all the output. A
                backend that cannot stream calls it once per stream at the end. It
                must not raise: if it does, the command is stopped and ``run`` raises
                that error. (``Group.run(on_line=...)`` gives whole lines.)

        Raises:
            BadParameter: an empty command, text holding NUL or a lone surrogate, an
                environment name that is not portable, a negative or non-finite timeout,
                a ``user`` that is not a login name, an ``on_output`` that is not
                callable (nothing ran; the same rules on every backend).
            IncorrectState: it is not reachable (no access URL, or released).
            Timeout: ``timeout`` passed; the command was stopped.
            AuthenticationFailed: ``user`` may not log in.

        Cancelling it stops the command.
        """
        command, data, env, timeout = check.run_arguments(command, stdin, env, timeout)
        if on_output is not None and not callable(on_output):
            raise check.fail("on_output", "a callable or None", on_output)
        result = await self._run_checked(command, data, env, timeout, user, on_output)
        return dataclasses.replace(result, resource=self)

    def _run_checked(
        self,
        command: str | tuple[str, ...],
        stdin: bytes | None,
        env: dict[str, str] | None,
        timeout: float | None,
        user: str | None,
        on_output: Callable[[str, bytes], None] | None,
    ) -> Awaitable[RunResult]:
        """:meth:`run` of arguments already checked (``run_arguments``, a callable
        ``on_output``), as a fan-out checks them once for all its machines; the
        result's ``resource`` is left for the caller to set.

        The runner's own run when its endpoint is open already (no coroutine of its
        own in between: a fan-out's commands each pass here); errors in finding it
        (``access_as``) are raised at once, as the await would raise them.
        """
        url = self.access_as(user)
        runner = self._manager.session._ready_adaptor(url, "commands", CommandRunner)  # type: ignore[type-abstract]
        if runner is None:
            return self._run_on_new(url, command, stdin, env, timeout, on_output)
        return _run_on(runner, command, stdin, env, timeout, on_output)

    async def _run_on_new(
        self,
        url: str,
        command: str | tuple[str, ...],
        stdin: bytes | None,
        env: dict[str, str] | None,
        timeout: float | None,
        on_output: Callable[[str, bytes], None] | None,
    ) -> RunResult:
        """:meth:`_run_checked` on a runner that is looked up (and opened) first."""
        runner = await self._manager.session.command_runner(url)
        return await _run_on(runner, command, stdin, env, timeout, on_output)

    async def put(self, local: str | os.PathLike[str], remote: str) -> None:
        """Copy a local file or directory to it."""
        check.path(local, "local")
        check.text(remote, "remote")
        files = await self._manager.session.file_adaptor(self._require_access())
        await files.put(Path(local), remote)

    async def get(self, remote: str, local: str | os.PathLike[str]) -> None:
        """Copy a file or directory from it."""
        check.text(remote, "remote")
        check.path(local, "local")
        files = await self._manager.session.file_adaptor(self._require_access())
        await files.get(remote, Path(local))


def _run_on(
    runner: CommandRunner,
    command: str | tuple[str, ...],
    stdin: bytes | None,
    env: dict[str, str] | None,
    timeout: float | None,
    on_output: Callable[[str, bytes], None] | None,
) -> Awaitable[RunResult]:
    if on_output is None:  # a runner that predates on_output still runs commands
        return runner.run(command, stdin=stdin, env=env, timeout=timeout)
    return runner.run(command, stdin=stdin, env=env, timeout=timeout, on_output=on_output)


class Storage(Resource):
    """Storage (a bucket, a volume); files reach it through its ``access`` URL."""


class Network(Resource):
    """A private network (SAGA's network resource): machines acquired with
    ``ComputeDescription(network=net)`` reach each other at their private addresses.

    ``access`` names the backend's own id of it (``ec2://`` its VPC or subnet, with
    its security group in ``extra``); ``cidr`` is its address range. Destroying it
    while machines still use it raises :class:`~aiores.IncorrectState`; destroy them
    first (a backend waits for machines that are already ending).
    """

    @property
    def cidr(self) -> str | None:
        """Its address range (``"10.20.0.0/24"``), once the backend said it."""
        cidr = self._info.extra.get("cidr")
        if cidr is None and isinstance(self._description, NetworkDescription):
            return self._description.cidr
        return str(cidr) if cidr is not None else None


_CLASSES: dict[str, type[Resource]] = {"compute": Compute, "storage": Storage, "network": Network}
_DESCRIPTIONS: dict[str, type[ComputeDescription | StorageDescription | NetworkDescription]] = {
    "compute": ComputeDescription,
    "storage": StorageDescription,
    "network": NetworkDescription,
}
