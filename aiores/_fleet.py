"""Fleets: provision tagged machines on several clouds, wait for them, select groups.

precip's experiment made concurrent and multi-cloud::

    async with session.fleet() as fleet:
        fleet.provision("sim://", ComputeDescription(template="small"), count=40, tags={"web"})
        fleet.provision(other_cloud, ComputeDescription(template="large"), count=10, tags={"db"})
        await fleet.add("ssh://me@login.example.org", tags={"login"})
        await fleet.wait(timeout=300)
        results = await fleet.select("web").run("systemctl is-active nginx", check=False)
    # every machine the fleet provisioned is destroyed here, even if cancelled

Each machine carries the tags it was provisioned with, plus two default tags: its
manager's URL scheme (``"sim"``; ``"hosts"`` for machines added with :meth:`Fleet.add`)
and its index in the fleet (``"0"``, ``"1"``, ...). Selection is by all given tags.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

from . import _heap as heap
from . import _validate as check
from ._concurrency import errors, move_on_after, settle
from ._descriptions import ComputeDescription, _tags
from ._exceptions import AioresError, BadParameter, FanOutError, IncorrectState, Timeout
from ._group import Group
from ._results import GroupResult, RunResult
from ._states import ResourceState

if TYPE_CHECKING:
    from ._resource import Compute, Manager, Network, Resource
    from ._session import Session
    from ._url import URL

__all__ = ["Fleet", "Group", "GroupResult", "Provision", "RunResult"]

log = logging.getLogger("aiores")


class Provision:
    """Machines being acquired by :meth:`Fleet.provision`, in the background.

    ``await provision`` returns its machines once the backend accepted them
    (NEW or PENDING: :meth:`Fleet.wait` waits for ACTIVE), or raises what the
    acquire raised. Cancelling that await changes nothing but the waiting.
    """

    def __init__(
        self,
        manager: Manager,
        description: ComputeDescription,
        count: int,
        tags: frozenset[str],
        first: int,
    ) -> None:
        self.manager = manager
        self.description = description
        self.count = count
        #: The tags asked for (the description's tags included).
        self.tags = tags
        #: The fleet indices its machines take.
        self.indices = range(first, first + count)
        self.resources: list[Compute] = []
        self.error: BaseException | None = None
        self._done = asyncio.Event()
        self._task: asyncio.Task[object] | None = None
        self._stopped = False

    def __repr__(self) -> str:
        state = "pending" if not self.done() else ("failed" if self.error else "done")
        return f"<aiores.Provision {self.count} on {self.manager.url} {state}>"

    def done(self) -> bool:
        """True once the acquire has returned, failed or been cancelled."""
        return self._done.is_set()

    async def result(self) -> list[Compute]:
        """The machines, once acquired (see the class docstring).

        Raises:
            AioresError: the acquire failed (what the manager raised).
            IncorrectState: the fleet was closed before the acquire finished.
        """
        await self._done.wait()
        if self.error is not None:
            raise self.error
        return list(self.resources)

    def __await__(self) -> Generator[object, None, list[Compute]]:
        return self.result().__await__()

    def _may_have(self, wanted: frozenset[str]) -> bool:
        """Whether some machine of this provision can carry all of ``wanted``."""
        extra = wanted - self.tags - {self.manager.url.scheme}
        return len(extra) <= 1 and all(t.isdigit() and int(t) in self.indices for t in extra)

    async def _run(self, joined: Callable[[Provision], None]) -> None:
        self._task = asyncio.current_task()
        try:
            if self._stopped:
                raise IncorrectState("the fleet was closed before its provision began")
            self.resources = await self.manager.acquire_many(self.description, self.count)
            joined(self)
        except asyncio.CancelledError:
            self.error = IncorrectState(
                f"provisioning {self.count} on {self.manager.url} was cancelled"
            )
            raise
        except Exception as exc:  # kept for whoever awaits it, or Fleet.wait, to raise
            self.error = exc
        finally:
            self._done.set()

    def _ended(self, task: asyncio.Task[None]) -> None:
        """The background task ended: also when cancelled before ``_run`` ever began."""
        if not self._done.is_set():
            self.error = IncorrectState(
                f"provisioning {self.count} on {self.manager.url} was cancelled before it began "
                "(the session closed)"
            )
            self._done.set()

    async def _stop(self) -> None:
        """Cancel the acquire if it still runs (it releases what it made) and wait."""
        self._stopped = True
        if self._task is not None and not self._done.is_set():
            self._task.cancel()
        await self._done.wait()


@dataclass(slots=True)
class _Member:
    index: int
    resource: Compute
    tags: frozenset[str]
    provision: Provision | None  # None: added with Fleet.add, never destroyed


class Fleet:
    """Tagged machines, provisioned on any clouds or added, as groups (``session.fleet()``).

    Usable plainly, or as ``async with session.fleet() as fleet``: leaving the block
    destroys every machine the fleet provisioned (shielded from cancellation,
    bounded by ``Session.cleanup_timeout``); hosts added with :meth:`add` are only
    forgotten. Used plainly, machines outlive the fleet until :meth:`deprovision`
    or :meth:`aclose`.
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self._members: dict[int, _Member] = {}
        self._provisions: list[Provision] = []
        self._next = 0
        self._retired: list[Resource] = []  # failed machines replaced, not yet destroyed
        self._closed = False

    def __repr__(self) -> str:
        pending = sum(not p.done() for p in self._provisions)
        return f"<aiores.Fleet {len(self._members)} machines, {pending} provisions pending>"

    async def __aenter__(self) -> Fleet:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Destroy every machine the fleet provisioned; forget added hosts.

        Provisions still being acquired are cancelled (which releases what they
        made). Runs shielded from cancellation and bounded by
        ``Session.cleanup_timeout``; a failure is logged, not raised. Cancelling it
        does not stop the teardown; the cancellation still propagates.
        """
        if self._closed:
            return
        self._closed = True
        try:
            await self.session.shielded(self._teardown, what="tearing down a fleet")
        finally:
            heap.release(self)

    async def _teardown(self) -> None:
        booted = [m.resource for m in self._members.values() if m.provision is not None]
        self._members.clear()
        retired, self._retired = self._retired, []

        async def stop_provisions() -> None:
            await asyncio.gather(*(p._stop() for p in self._provisions))
            late, self._retired = self._retired, []  # joined while being stopped
            await _destroy(late)

        # What is booted is destroyed now, alongside stopping the provisions: one
        # cloud's stuck acquire must not use up the time the others need.
        for error in errors(await settle([_destroy([*booted, *retired]), stop_provisions()])):
            log.error("tearing down a fleet: %r", error)

    def _check_open(self) -> None:
        if self._closed:
            raise IncorrectState(f"{self!r} is closed")

    # -- adding machines ----------------------------------------------------------------
    def provision(
        self,
        url_or_manager: str | URL | Manager,
        description: ComputeDescription,
        count: int = 1,
        tags: Iterable[str] | str = (),
        network: str | Network | None = None,
    ) -> Provision:
        """Start acquiring ``count`` machines; returns at once, without waiting.

        One ``acquire_many`` (one backend call where the backend allows) runs in the
        session's background; several provisions, on several clouds, run together.
        Their machines join the fleet when the backend accepted them; use
        :meth:`wait` to have them ACTIVE, or await the returned :class:`Provision`.

        Args:
            url_or_manager: The cloud (``"sim://"``), or a Manager.
            description: What to boot; its tags are the machines' tags too.
            count: How many.
            tags: Tags to select them by (a str is one tag).
            network: Place them on this :class:`~aiores.Network` (or network id) of
                the same cloud, as ``ComputeDescription(network=...)`` does: they
                reach each other at their ``private_hostnames``.

        Raises:
            BadParameter: a bad description, count or tag, or a network of another
                cloud.
            IncorrectURL: no adaptor for the URL.
            IncorrectState: the fleet or session is closed.
        """
        from ._resource import MAX_COUNT, Manager

        self._check_open()
        if not isinstance(description, ComputeDescription):
            raise BadParameter(
                f"a fleet provisions machines: pass a ComputeDescription, not {description!r}"
            )
        check.count(count, "count", max=MAX_COUNT)
        wanted = _fleet_tags("Fleet.provision", _tags("Fleet.provision", tags) | description.tags)
        manager = (
            url_or_manager
            if isinstance(url_or_manager, Manager)
            else self.session.manager(url_or_manager)
        )
        if manager.session is not self.session:
            raise BadParameter(f"{manager!r} belongs to another session")
        desc = description.replace(tags=wanted) if wanted != description.tags else description
        if network is not None:
            desc = desc.replace(network=network)
        if desc.network is not None:
            manager._native(desc.network, "network")  # of this cloud, or BadParameter now
        provision = Provision(manager, desc, count, wanted, self._next)
        self._next += count
        self._provisions.append(provision)
        task = self.session.spawn(
            lambda: provision._run(self._joined),
            name=f"aiores-provision {count} on {manager.url}",
        )
        task.add_done_callback(provision._ended)
        return provision

    def _joined(self, provision: Provision) -> None:
        if self._closed:  # torn down meanwhile: _teardown destroys it via the provision
            self._retired.extend(provision.resources)
            return
        scheme = provision.manager.url.scheme
        for index, resource in zip(provision.indices, provision.resources, strict=True):
            tags = provision.tags | {scheme, str(index)}
            self._members[index] = _Member(index, resource, tags, provision)

    async def add(self, access: str, tags: Iterable[str] | str = ()) -> Compute:
        """Add an existing machine that aiores did not boot, ACTIVE at once.

        It is reached through ``access`` (``"ssh://user@host:port"``) with the
        session's contexts (its host key verified as for any ssh:// URL). Its
        default tags are ``"hosts"`` and its index. Deprovisioning or closing the
        fleet only forgets it. Adding a machine the fleet has adds the tags.

        Raises:
            IncorrectURL: ``access`` is not a machine's URL.
            BadParameter: a bad tag.
            IncorrectState: the fleet or session is closed.
        """
        from ._hosts import SCHEME, host_info
        from ._resource import Compute

        self._check_open()
        wanted = _fleet_tags("Fleet.add", _tags("Fleet.add", tags))
        info = host_info(access, wanted)
        for member in self._members.values():
            if member.provision is None and member.resource.native_id == info.id:
                member.tags |= wanted
                return member.resource
        # The public path: hosts:// knows every machine it is asked about, ACTIVE at
        # once (an existing machine: no readiness probe, no journal record).
        resource = await self.session.manager(f"{SCHEME}://").get(info.id)
        assert isinstance(resource, Compute)
        index, self._next = self._next, self._next + 1
        self._members[index] = _Member(index, resource, wanted | {SCHEME, str(index)}, None)
        return resource

    # -- selecting ----------------------------------------------------------------------
    def select(self, *tags: str) -> Group:
        """The machines carrying all ``tags`` (no tags: all), in fleet order.

        Machines of provisions still being acquired are not there yet:
        :meth:`wait` first.
        """
        return Group(m.resource for m in self._select(tags))

    def list(self, *tags: str) -> builtins.list[Compute]:
        """The machines carrying all ``tags`` (no tags: all), in fleet order."""
        return [m.resource for m in self._select(tags)]

    def tags_of(self, resource: Resource) -> frozenset[str]:
        """The fleet tags of ``resource`` (its own, its scheme's and its index).

        Raises:
            BadParameter: it is not in the fleet.
        """
        for member in self._members.values():
            if member.resource is resource:
                return member.tags
        raise BadParameter(f"{resource!r} is not in {self!r}")

    def _select(self, tags: Sequence[str]) -> builtins.list[_Member]:
        wanted = _wanted(tags)
        return [m for _, m in sorted(self._members.items()) if wanted <= m.tags]

    # -- waiting ------------------------------------------------------------------------
    async def wait(
        self, *tags: str, timeout: float | None = None, replace_failed: int = 0
    ) -> Group:
        """Wait until the machines carrying all ``tags`` (no tags: all) are ACTIVE.

        First waits for provisions still being acquired, then for every selected
        machine to be ACTIVE or to have failed.

        Args:
            tags: Which machines.
            timeout: Seconds to wait at most, for everything (None: no limit).
            replace_failed: Replace up to this many machines that failed to boot
                (ended FAILED, EXPIRED...; in total) with new ones of the same
                manager, description and tags (and index), and wait for those too;
                the failed ones are destroyed. A machine that runs but refuses the
                session's key or shows an unexpected host key is reported, not
                replaced.

        Returns:
            The selected machines, as a :class:`Group`.

        Raises:
            FanOutError: some machines failed to boot (or their provision failed)
                beyond what ``replace_failed`` covered: one exception per failure,
                the selected machines in its ``results``.
            Timeout: ``timeout`` passed first (the message says how many are not
                ACTIVE).
            BadParameter: a bad tag, timeout or replace_failed.

        Cancelling it changes nothing but the waiting (replacements being acquired
        release what they made).

        Once it returns 100 machines or more, the fleet holds the process's heap
        frozen (:func:`gc.freeze`) until it deprovisions or closes, or its session
        closes: the machines' objects and connections live on, and full garbage
        collections that visit them all would stall the event loop for a tenth of a
        second or more each (a program that froze its heap itself is left alone; see
        ``aiores._heap``).
        """
        wanted = _wanted(tags)
        timeout = check.timeout(timeout)
        check.count(replace_failed, "replace_failed", min=0)
        self._check_open()
        failed: builtins.list[Exception] = []
        async with move_on_after(timeout) as deadline:
            failed = await self._barrier(wanted, replace_failed)
        # (timeout=0 asks "are they all up now?")
        if deadline.expired and not self._all_active(wanted):
            raise self._timeout(wanted, timeout)
        selected = self._select(tuple(wanted))
        if failed:
            raise FanOutError(
                f"{len(failed)} machine(s) of {len(selected) or 'the'} selected failed to boot: "
                + "; ".join(str(e) for e in failed[:3])
                + (f"; and {len(failed) - 3} more" if len(failed) > 3 else ""),
                failed,
                [m.resource for m in selected],
            )
        if len(selected) >= heap.BULK:
            # What these machines are (objects, connections) lives on: out of the full
            # garbage collections, which would otherwise stall the loop (aiores._heap).
            heap.hold(self, self.session)
        return Group(m.resource for m in selected)

    async def _barrier(self, wanted: frozenset[str], budget: int) -> builtins.list[Exception]:
        provisions = [p for p in self._provisions if p._may_have(wanted)]
        await asyncio.gather(*(p._done.wait() for p in provisions))
        failures: builtins.list[Exception] = [
            p.error for p in provisions if isinstance(p.error, Exception)
        ]
        while True:
            members = self._select(tuple(wanted))
            outcomes = await asyncio.gather(*(_ready(m.resource) for m in members))
            failed = [(m, e) for m, e in zip(members, outcomes, strict=True) if e is not None]
            # Only machines that ended are replaced: one that runs but refuses the
            # session's credentials or host keys would be refused again.
            replaceable = [
                m for m, _ in failed if m.provision is not None and m.resource.state.final
            ][:budget]
            if not replaceable:
                return failures + [e for _, e in failed]
            budget -= len(replaceable)
            failures += await self._replace(replaceable)

    async def _replace(self, failed: builtins.list[_Member]) -> builtins.list[Exception]:
        """New machines in the places of ``failed`` (one acquire per provision)."""
        by_provision: dict[int, builtins.list[_Member]] = {}
        for member in failed:
            by_provision.setdefault(id(member.provision), []).append(member)

        async def renew(members: builtins.list[_Member]) -> None:
            provision = members[0].provision
            assert provision is not None
            fresh = await provision.manager.acquire_many(provision.description, len(members))
            orphans = []
            for member, resource in zip(members, fresh, strict=True):
                if self._closed or self._members.get(member.index) is not member:
                    orphans.append(resource)  # torn down or deprovisioned meanwhile
                    continue
                self._retired.append(member.resource)
                member.resource = resource
            if orphans:
                await self.session.shielded(
                    lambda: _destroy(orphans), what="destroying replacements nobody holds"
                )

        # A cancellation propagates: the acquires released what they made.
        failures = errors(await settle(renew(ms) for ms in by_provision.values()))
        retired, self._retired = self._retired, []
        try:
            await _destroy(retired)
        except AioresError as exc:
            log.warning("destroying failed machines that were replaced failed: %r", exc)
            self._retired.extend(retired)  # the teardown tries again
        except BaseException:
            self._retired.extend(retired)  # cancelled: the teardown destroys them
            raise
        return failures

    def _all_active(self, wanted: frozenset[str]) -> bool:
        pending = any(not p.done() for p in self._provisions if p._may_have(wanted))
        members = self._select(tuple(wanted))
        return not pending and all(m.resource.state is ResourceState.ACTIVE for m in members)

    def _timeout(self, wanted: frozenset[str], timeout: float | None) -> Timeout:
        members = self._select(tuple(wanted))
        waiting = [m for m in members if m.resource.state is not ResourceState.ACTIVE]
        pending = sum(p.count for p in self._provisions if not p.done() and p._may_have(wanted))
        which = f" tagged {', '.join(sorted(wanted))}" if wanted else ""
        counts: dict[str, int] = {}
        for member in waiting:
            counts[member.resource.state.name] = counts.get(member.resource.state.name, 0) + 1
        if pending:
            counts["not yet acquired"] = pending
        states = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        return Timeout(
            f"{len(waiting) + pending} of {len(members) + pending} machines{which} "
            f"not ACTIVE within {timeout} s ({states})"
        )

    # -- releasing ----------------------------------------------------------------------
    async def deprovision(self, *tags: str) -> None:
        """Destroy the machines carrying all ``tags`` (no tags: all); forget added hosts.

        Waits for provisions still being acquired that may carry the tags first.
        One destroy call per manager, the managers concurrently.

        Raises:
            FanOutError: some manager failed to destroy (one exception per manager);
                its machines stay in the fleet.

        Cancelling it abandons the wait; the machines stay in the fleet (destroying
        them again, e.g. when the fleet closes, is not an error).
        """
        wanted = _wanted(tags)
        provisions = [p for p in self._provisions if p._may_have(wanted)]
        await asyncio.gather(*(p._done.wait() for p in provisions))
        # The machines' objects become garbage: let the collector reach them (a later
        # wait holds the heap again).
        heap.release(self)
        members = self._select(tuple(wanted))
        for member in members:
            if member.provision is None:
                del self._members[member.index]
        booted = [m for m in members if m.provision is not None]
        failures = await _destroy_each(m.resource for m in booted)
        failed = {id(r) for rs in failures.values() for r in rs}
        for member in booted:
            if id(member.resource) not in failed:
                del self._members[member.index]
        if not wanted:
            retired, self._retired = self._retired, []
            failures.update(await _destroy_each(retired))
        if failures:
            raise FanOutError(
                f"destroying failed on {len(failures)} manager(s)", builtins.list(failures)
            )


# -- helpers -------------------------------------------------------------------------------


def _fleet_tags(owner: str, tags: frozenset[str]) -> frozenset[str]:
    """``tags``, refusing those that would mix with the fleet's default tags."""
    from ._registry import registry

    for tag in tags:
        if tag.isdigit():
            raise BadParameter(
                f"{owner}: tag {tag!r} is all digits, like the index tags the fleet gives "
                "every machine; choose another"
            )
    schemes = set(registry.known_schemes()) | {"hosts"}
    taken = sorted(tags & schemes)
    if taken:
        raise BadParameter(
            f"{owner}: tag {taken[0]!r} names a cloud, like the scheme tag the fleet gives "
            f"every machine of {taken[0]}://; choose another"
        )
    return tags


def _wanted(tags: Sequence[str]) -> frozenset[str]:
    return frozenset(check.str_seq(tags, "tags", items_empty=False))


async def _ready(resource: Resource) -> Exception | None:
    """None once ``resource`` is ACTIVE; the error if it never can be."""
    try:
        await resource.wait(ResourceState.ACTIVE)
    except AioresError as exc:
        return exc
    return None


async def _destroy_each(resources: Iterable[Resource]) -> dict[Exception, builtins.list[Resource]]:
    """Destroy, one call per manager, concurrently; each failure with its machines."""
    by_manager: dict[str, tuple[Manager, builtins.list[Resource]]] = {}
    for resource in resources:
        key = str(resource.manager.url)
        by_manager.setdefault(key, (resource.manager, []))[1].append(resource)
    groups = builtins.list(by_manager.values())
    outcomes = await settle(manager.destroy(rs) for manager, rs in groups)
    return {
        outcome: rs
        for (_, rs), outcome in zip(groups, outcomes, strict=True)
        if isinstance(outcome, Exception)
    }


async def _destroy(resources: Iterable[Resource]) -> None:
    """Destroy, one call per manager; raise the first failure after trying them all."""
    failed = await _destroy_each(resources)
    if failed:
        raise next(iter(failed))
