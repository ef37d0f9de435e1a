"""The shared watcher: one per backend endpoint, feeding every object's state.

Objects (resources, jobs) never poll. ``wait()`` registers interest and awaits a
future that the watcher resolves when a new state arrives. Push-style adaptors deliver
states through :meth:`Watcher.feed`; for polled adaptors one loop per endpoint calls
``describe`` for *all* watched ids in chunks of ``PollPolicy.batch`` per tick, at an
adaptive interval (floor, backoff to a ceiling while nothing changes, jitter).

Every describe answer, whoever asked (the polling loop, or recovery reconnecting to
what earlier sessions left), is applied by :meth:`Watcher.take`: one rule for "an id
left out of the answer" shared by all askers of an endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeGuard, TypeVar

from . import _validate as check
from ._clock import Clock
from ._concurrency import TaskSet, fail_after
from ._exceptions import (
    AioresError,
    BadParameter,
    DoesNotExist,
    IncorrectState,
    NoSuccess,
    NotSupported,
    Timeout,
)
from ._states import JobState, ResourceState

if TYPE_CHECKING:
    from ._journal import Journal
from .adaptor import Adaptor, Describes, JobInfo, PollPolicy, ResourceInfo

__all__: list[str] = []

log = logging.getLogger("aiores.watch")

S = TypeVar("S", ResourceState, JobState)

#: Describes in a row that may fail transiently (connection reset, 5xx) before the
#: waiters of the ids hear of it.
FAILURES_BEFORE_GIVING_UP = 5
#: Describes in a row that must leave an id out before it counts as gone.
MISSES_BEFORE_GONE = 3
#: Pushed infos kept for ids no object has registered yet (the oldest go first).
EARLY_INFOS_KEPT = 10_000
#: Infos of one describe answer taken per loop iteration.
TAKES_PER_TURN = 128
Info = ResourceInfo | JobInfo


@dataclass(slots=True)
class Answer:
    """What one describe answer did (see :meth:`Watcher.take`).

    Attributes:
        changed: Some object's state changed.
        news: Some object's state detail changed while its state stayed (the
            backend says "preempting", "shutting-down": what comes next may come soon).
        missed: Ids left out, not (yet) counted gone.
        gone: Ids left out of ``MISSES_BEFORE_GONE`` describes in a row: gone.
    """

    changed: bool = False
    news: bool = False
    missed: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)


def _may_follow(new: ResourceState | JobState, old: S) -> TypeGuard[S]:
    """Whether ``new`` is of the same kind as ``old`` and may directly follow it."""
    return isinstance(new, type(old)) and old.can_become(new)


class Tracked(Generic[S]):
    """An object whose state the watcher feeds: the base of Resource and Job."""

    _kind = "object"
    _interest = 0  # waiters now (a class default: subclasses read it before __init__ ends)

    def __init__(self, state: S, watcher: Watcher, native_id: str | None) -> None:
        self._state: S = state
        self._watcher = watcher
        self._native_id = native_id
        # Each waiter's future and the state it waits for (None: any final state).
        self._waiters: dict[asyncio.Future[S | None], S | None] = {}
        self._interest = 0
        self._final_callbacks: list[Callable[[], None]] = []
        if native_id is not None:
            watcher.register(native_id, self)

    # -- what subclasses provide ------------------------------------------------------
    def _on_info(self, info: Any) -> None:
        """Take the non-state fields of a fresh info (addresses, exit code...)."""

    def _journal(self) -> Journal | None:
        """The session's journal (None when journalling is off)."""
        return None

    @property
    def _journal_id(self) -> str:
        """The id the journal knows the object by."""
        raise NotImplementedError

    def _remember(self, *, url: str, token: str | None, data: Any) -> None:
        """Record the object (its current state) in the journal."""
        journal = self._journal()
        if journal is not None and self._native_id is not None:
            journal.record_object(
                id=self._journal_id,
                kind=self._kind,
                url=url,
                native_id=self._native_id,
                token=token,
                state=self._state.name,
                detail=self._detail(),
                data=data,
            )

    def _record(self, old: S, new: S, detail: str) -> None:
        """Write a transition to the journal."""
        journal = self._journal()
        if journal is not None and self._native_id is not None:
            journal.transition(self._journal_id, self._kind, old.name, new.name, detail)

    # -- state ------------------------------------------------------------------------
    @property
    def state(self) -> S:
        """The last state the backend reported (never goes backwards)."""
        return self._state

    def _set_native_id(self, native_id: str) -> None:
        self._native_id = native_id
        self._watcher.register(native_id, self)
        if self._interest:
            self._watcher.watch(native_id)

    def _apply(self, info: Info) -> bool:
        """Take a reported info; returns True if the state changed."""
        old, new = self._state, info.state
        if new is old:
            # Every answer refreshes what it says beside the state (a countdown in
            # ``extra``, a detail such as "preempting"), whether or not the state moved.
            self._on_info(info)
            return False
        if not _may_follow(new, old):
            # Usually a stale answer (a poll overtaken by a push); never taken.
            log.debug("%s: ignoring report of %s after %s (%s)", self, new, old, info.state_detail)
            return False
        self._state = new
        self._on_info(info)
        self._record(old, self._state, info.state_detail)
        # Tell each waiter which state came, so that a state passed within one loop
        # iteration (RUNNING, then DONE) still counts for whoever waited for it.
        for fut, target in self._waiters.items():
            if not fut.done():
                hit = target is self._state or (target is None and self._state.final)
                fut.set_result(self._state if hit else None)
        if new.final:
            callbacks, self._final_callbacks = self._final_callbacks, []
            for callback in callbacks:
                callback()
        return True

    def _on_final(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the state is final (now, if it already is)."""
        if self._state.final:
            callback()
        else:
            self._final_callbacks.append(callback)

    def _wake(self, error: BaseException) -> None:
        """Make every current waiter raise ``error``."""
        for fut in self._waiters:
            if not fut.done():
                fut.set_exception(error)

    def _interest_changed(self, interested: bool) -> None:
        """Called when the first waiter arrives (True) or the last one leaves (False)."""

    # -- waiting ----------------------------------------------------------------------
    def _reached(self, state: S | None) -> bool:
        return self._state.final if state is None else self._state is state

    def _check_reachable(self, state: S | None) -> None:
        if state is not None and not self._state.reachable(state):
            raise IncorrectState(
                f"{self} is {self._state.name}"
                + (f" ({self._detail()})" if self._detail() else "")
                + f"; {state.name} can no longer come"
            )

    def _detail(self) -> str:
        return ""

    async def wait(self, state: S | None = None, timeout: float | None = None) -> S:
        """Wait until the object is in ``state`` (None: any final state).

        Never polls: the endpoint's shared watcher feeds the state.

        Args:
            state: The state to wait for; None waits for any final state.
            timeout: Seconds to wait at most; None waits as long as it takes.

        Returns:
            The state reached.

        Raises:
            IncorrectState: ``state`` can no longer come (the object moved past it,
                or ended in another final state).
            Timeout: ``timeout`` passed first.
            DoesNotExist: the backend no longer knows the object.
            AioresError: the backend failed while being asked for the state.

        Cancelling ``wait`` changes nothing but the waiting.
        """
        if state is not None and not isinstance(state, type(self._state)):
            raise BadParameter(f"{self} has {type(self._state).__name__} states, not {state!r}")
        timeout = check.timeout(timeout)
        self._watcher.check_open()
        self._check_reachable(state)
        if self._reached(state):
            return self._state
        loop = asyncio.get_running_loop()

        def late() -> str:
            target = state.name if state is not None else "a final state"
            return f"{self} did not reach {target} within {timeout} s; it is {self._state.name}"

        async with fail_after(timeout, late):
            self._add_interest()
            try:
                while not self._reached(state):
                    fut: asyncio.Future[S | None] = loop.create_future()
                    self._waiters[fut] = state
                    try:
                        came = await fut
                    finally:
                        del self._waiters[fut]
                    if came is not None:
                        return came
                    self._check_reachable(state)
            finally:
                self._drop_interest()
        return self._state

    def _add_interest(self) -> None:
        if self._interest == 0 and self._native_id is not None:
            self._watcher.watch(self._native_id)  # may raise: then nothing changed
        self._interest += 1
        if self._interest == 1:
            self._interest_changed(True)

    def _drop_interest(self) -> None:
        self._interest -= 1
        if self._interest == 0:
            if self._native_id is not None:
                self._watcher.unwatch(self._native_id)
            self._interest_changed(False)


class Watcher:
    """Feeds the states of every object of one endpoint (see the module docstring)."""

    def __init__(
        self,
        adaptor: Adaptor,
        *,
        clock: Clock,
        spawn: Callable[..., object],
        name: str,
        rng: random.Random | None = None,
    ) -> None:
        self._adaptor = adaptor
        self._clock = clock
        self._spawn = spawn
        self._name = name
        self._rng = rng or random.Random()
        self._policy: PollPolicy | None = adaptor.poll
        self._objects: weakref.WeakValueDictionary[str, Tracked[Any]] = (
            weakref.WeakValueDictionary()
        )
        self._interest: dict[str, int] = {}
        self._running = False
        #: Set while no polling loop runs (tests await it).
        self.idle = asyncio.Event()
        self.idle.set()
        self._wake = asyncio.Event()
        self._last_tick = -math.inf
        self._delay = 0.0
        self._quiet = 0  # ticks in a row that saw no change
        self._failures = 0  # describes in a row that failed transiently
        self._missing: dict[str, int] = {}  # id -> describes in a row that left it out
        self._closed = False
        self._early: dict[str, Info] = {}  # infos pushed for ids not registered yet
        #: Counters for tests and benchmarks.
        self.ticks = 0
        self.describe_calls = 0
        adaptor.set_listener(self.feed)

    # -- objects ----------------------------------------------------------------------
    def register(self, native_id: str, obj: Tracked[Any]) -> None:
        self._objects[native_id] = obj
        early = self._early.pop(native_id, None)
        if early is not None:
            obj._apply(early)

    def lookup(self, native_id: str) -> Tracked[Any] | None:
        return self._objects.get(native_id)

    def feed(self, info: Info) -> None:
        """Deliver one pushed info to its object."""
        self._deliver(info)

    def _deliver(self, info: Info) -> bool:
        obj = self._objects.get(info.id)
        if obj is not None:
            return obj._apply(info)
        # A push can beat the submit's answer (a local job may end before the
        # journal confirms its submission): keep the latest word until it registers.
        self._early.pop(info.id, None)
        self._early[info.id] = info
        if len(self._early) > EARLY_INFOS_KEPT:
            del self._early[next(iter(self._early))]
        return False

    # -- lifecycle --------------------------------------------------------------------
    def check_open(self) -> None:
        if self._closed:
            raise IncorrectState(f"the session watching {self._name} is closed")

    def close(self) -> None:
        """Stop for good: every waiter of every object raises IncorrectState."""
        self._closed = True
        error = IncorrectState(f"the session watching {self._name} was closed")
        for obj in list(self._objects.values()):
            obj._wake(error)

    # -- interest ---------------------------------------------------------------------
    def watch(self, native_id: str) -> None:
        """Poll ``native_id`` until :meth:`unwatch` (raises if the session closed)."""
        self.check_open()
        if self._policy is not None and not self._running:
            self._spawn(self._loop, name=f"aiores-watch {self._name}")
            self._running = True
            self.idle.clear()
        self._interest[native_id] = self._interest.get(native_id, 0) + 1
        if self._policy is None:
            return  # the adaptor pushes every change
        self._quiet = 0
        self._delay = self._jittered(self._policy.floor)
        self._wake.set()

    def unwatch(self, native_id: str) -> None:
        count = self._interest.get(native_id, 0) - 1
        if count > 0:
            self._interest[native_id] = count
        else:
            self._interest.pop(native_id, None)
            self._missing.pop(native_id, None)

    # -- the polling loop -------------------------------------------------------------
    def _jittered(self, delay: float) -> float:
        assert self._policy is not None
        spread = self._policy.jitter
        return delay * (1.0 + self._rng.uniform(-spread, spread))

    def quiet_delay(self, quiet: int) -> float:
        """Seconds before the next describe after ``quiet`` describes in a row saw no change.

        floor, floor, floor*backoff, ... up to the ceiling, jittered. An endpoint that
        pushes has no interval: its describe answers from what it holds (0).
        """
        policy = self._policy
        if policy is None:
            return 0.0
        # The exponent is capped: a long quiet spell must not overflow a float (the
        # ceiling is reached long before 64 growths).
        grown = policy.floor * policy.backoff ** min(max(0, quiet - 1), 64)
        return self._jittered(min(policy.ceiling, grown))

    async def _sleep_or_wake(self, delay: float) -> bool:
        """Sleep ``delay`` seconds on the clock; True if woken early."""
        self._wake.clear()

        async def sleep() -> bool:
            await self._clock.sleep(delay)
            return False

        async def woken() -> bool:
            return await self._wake.wait()

        # The first to end decides; leaving the set cancels the other and awaits it.
        async with TaskSet(f"watch {self._name}") as race:
            race.spawn(sleep())
            race.spawn(woken())
            async for early in race.as_completed():
                return bool(early)
        return False

    async def _loop(self) -> None:
        assert self._policy is not None
        policy = self._policy
        try:
            while self._interest:
                # Sleep until the last tick plus the current delay; a new waiter
                # resets the delay to the floor, so waiters arriving one by one
                # share ticks instead of each causing a describe.
                while True:
                    remaining = self._last_tick + self._delay - self._clock.now()
                    if remaining <= 0 or not await self._sleep_or_wake(remaining):
                        break
                if not self._interest:
                    break
                self._last_tick = self._clock.now()
                self.ticks += 1
                changed = await self._tick(list(self._interest), policy.batch)
                self._quiet = 0 if changed else self._quiet + 1
                self._delay = self.quiet_delay(self._quiet)
        except Exception as exc:
            # A bug, not a backend error (those are handled per describe): fail the
            # waiters rather than leave them waiting on a loop that is gone.
            error = NoSuccess(f"the state watcher of {self._name} failed: {exc!r}")
            for native_id in list(self._interest):
                obj = self._objects.get(native_id)
                if obj is not None:
                    obj._wake(error)
            raise
        finally:
            # The loop only ends with no interest left (or cancelled): no await
            # separates the last check from here, so no waiter can be stranded.
            self._running = False
            self.idle.set()

    async def _tick(self, ids: Sequence[str], batch: int) -> bool:
        chunks = [ids[i : i + batch] for i in range(0, len(ids), batch)]
        results = await asyncio.gather(*(self._describe(chunk) for chunk in chunks))
        return any(results)

    async def _describe(self, ids: Sequence[str]) -> bool:
        self.describe_calls += 1
        try:
            if not isinstance(self._adaptor, Describes):
                raise NotSupported(f"{self._adaptor.url} cannot describe what it made")
            infos: Mapping[str, Info] = await self._adaptor.describe(ids)
        except (AioresError, OSError) as exc:
            transient = isinstance(exc, (NoSuccess, Timeout, OSError))
            self._failures += 1
            if transient and self._failures < FAILURES_BEFORE_GIVING_UP:
                log.debug(
                    "%s: describe failed (%d in a row), retrying: %r",
                    self._name,
                    self._failures,
                    exc,
                )
                return False
            # A permanent error (refused credentials...), or a transient one that
            # persisted: the waiters of these ids raise it.
            log.debug("%s: describe failed: %r", self._name, exc)
            for native_id in ids:
                obj = self._objects.get(native_id)
                if obj is not None:
                    obj._wake(exc)
            return False
        self._failures = 0
        changed = False
        for start in range(0, len(ids), TAKES_PER_TURN):
            if start:
                # Each state taken wakes its waiters: a thousand at once held the
                # loop 40 ms in the next iteration. The rest take their turn.
                await asyncio.sleep(0)
            answer = self.take(ids[start : start + TAKES_PER_TURN], infos)
            # A new detail counts as a change for the interval: back to the floor.
            changed = changed or answer.changed or answer.news
        return changed

    # -- describe answers -------------------------------------------------------------
    def take(self, ids: Sequence[str], infos: Mapping[str, Info]) -> Answer:
        """Apply one describe answer about ``ids``, whoever asked for it.

        Each info goes to its object (which records any change in the journal), and
        refreshes its state detail and extras even when the state stays. An id
        left out counts a miss: backends are eventually consistent (an EC2 instance may
        be missing from a describe right after RunInstances), so only an absence
        ``MISSES_BEFORE_GONE`` describes in a row means gone; then its object's waiters
        raise DoesNotExist. Ids with no object here count misses all the same.
        """
        answer = Answer()
        for native_id in ids:
            obj = self._objects.get(native_id)
            info = infos.get(native_id)
            if info is not None:
                self._missing.pop(native_id, None)
                if obj is not None:
                    before = obj._detail()
                    answer.changed = obj._apply(info) or answer.changed
                    answer.news = answer.news or obj._detail() != before
                continue
            misses = self._missing[native_id] = self._missing.get(native_id, 0) + 1
            if misses < MISSES_BEFORE_GONE:
                answer.missed.append(native_id)
                continue
            del self._missing[native_id]
            answer.gone.append(native_id)
            if obj is not None:
                obj._wake(DoesNotExist(f"{obj} is no longer known to {self._adaptor.url}"))
        return answer

    def forget_misses(self, ids: Sequence[str]) -> None:
        """Stop counting misses of ``ids`` nobody watches (their asker gave up on them)."""
        for native_id in ids:
            if native_id not in self._interest:
                self._missing.pop(native_id, None)
