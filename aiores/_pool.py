"""Elastic pools: machines kept between a minimum and a maximum, with work placed on them.

elasticslice's manager, asyncio-native::

    desc = aiores.ComputeDescription(template="small")
    async with session.pool("sim://", desc, min=1, max=20) as pool:
        result = await pool.run("make test")            # on a free machine
        async for index, result in pool.map(commands):  # as each completes
            ...
    # every machine the pool held is released here, even if cancelled

A controller (one task per pool, woken by every change and at least every ``tick``)
asks the :class:`Policy` how many machines to add and which to give back, over a
read-only :class:`PoolView`, and holds the answer within ``min`` and ``max``. Machines
come in batches, one ``acquire_many`` each. Work waits in one queue (first come, first
placed) for a free slot on an ACTIVE machine (``slots`` per machine).

Work runs in its caller's task, on one machine at a time: it is requeued (and runs
again elsewhere) only once the attempt has ended, so it never runs twice at once. An
attempt is requeued when its machine ended (failed, expired, preempted), was revoked
and the work did not finish before the deadline, or broke under it (a lost
connection, a refused login: the machine is released first, so whatever of the
attempt still ran there ends with it); at most ``retries`` times, then the work fails
with :class:`~aiores.NoSuccess`. A command that runs and exits non-zero is a result,
never retried.

Revocation: a machine whose backend announces that it will be taken back (state
detail ``"preempting"`` or ``"delete-pending"``, seconds left in ``extra["preempt_in"]``
or ``extra["max_wait_time"]``, as sim:// and CloudLab announce it) gets no new work;
the ``drain`` hook runs, bounded by the deadline; work still running ``margin``
seconds before the deadline is stopped and requeued; the machine is released as soon
as it is drained, before the provider takes it. Which idle machines go first follows
their provider's values (``extra["value"]``, CloudLab's SetResourceValues).

Leases: with a description's ``duration``, each machine ends at its backend when its
lease does, whatever becomes of this program; the pool renews the leases of the
machines it still needs and lets the others run out (see :mod:`aiores._lease`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import itertools
import logging
import math
from collections import deque
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

from . import _validate as check
from ._concurrency import Deadline, TaskSet, move_on_after
from ._descriptions import ComputeDescription, JobDescription, _tags
from ._exceptions import (
    AioresError,
    AuthenticationFailed,
    BadParameter,
    IncorrectState,
    NoSuccess,
    Timeout,
)
from ._lease import Leases
from ._results import RunResult
from ._states import ResourceState

if TYPE_CHECKING:
    from ._jobs import Job
    from ._resource import Compute, Manager
    from ._session import Session

__all__ = [
    "MachineView",
    "Policy",
    "Pool",
    "PoolEvent",
    "PoolStats",
    "PoolView",
    "QueuePolicy",
]

log = logging.getLogger("aiores")

T = TypeVar("T")

#: State details with which a backend announces that it takes a machine back.
NOTICE_DETAILS = frozenset({"preempting", "delete-pending"})
#: Keys of ``extra`` that hold the seconds left before a revoked machine goes.
NOTICE_KEYS = ("preempt_in", "max_wait_time")
#: Seconds the pool waits after the first failed boot (or acquire) of a streak
#: before asking again; doubled for each one more, up to ``BACKOFF_MAX``.
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0
#: Seconds a closing pool lets running work stop before releasing its machines.
STOP_GRACE = 5.0


# -- what policies see --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MachineView:
    """One machine of a pool, as a policy sees it.

    Attributes:
        resource: The machine.
        state: ``"booting"``, ``"idle"``, ``"busy"`` or ``"draining"`` (revoked).
        running: Work running on it now.
        idle_for: Seconds it has been idle (0 unless idle).
        age: Seconds since the pool acquired it.
        value: How much its provider wants it back (``extra["value"]``, CloudLab's
            resource values; 0 when the backend says nothing): the default policy
            releases idle machines of higher value first.
        deadline: Seconds left before it is taken back, if it was revoked.
    """

    resource: Compute
    state: str
    running: int
    idle_for: float
    age: float
    value: float
    deadline: float | None


@dataclass(frozen=True, slots=True)
class PoolView:
    """A read-only snapshot of a pool, given to its :class:`Policy`.

    Attributes:
        min: The pool's minimum (the pool never goes below it, whatever the policy says).
        max: Its maximum (never exceeded).
        slots: Work per machine at once.
        queued: Work waiting for a machine.
        running: Work running now.
        acquiring: Machines asked of the backend that it has not returned yet.
        machines: Every machine held (booting, idle, busy, draining).
        now: The session clock's time.
    """

    min: int
    max: int
    slots: int
    queued: int
    running: int
    acquiring: int
    machines: tuple[MachineView, ...]
    now: float

    def _in(self, state: str) -> tuple[MachineView, ...]:
        return tuple(m for m in self.machines if m.state == state)

    @property
    def booting(self) -> int:
        """Machines not ACTIVE yet (those being acquired included)."""
        return self.acquiring + len(self._in("booting"))

    @property
    def idle(self) -> tuple[MachineView, ...]:
        """ACTIVE machines running nothing, longest idle first."""
        return tuple(sorted(self._in("idle"), key=lambda m: -m.idle_for))

    @property
    def busy(self) -> tuple[MachineView, ...]:
        return self._in("busy")

    @property
    def draining(self) -> tuple[MachineView, ...]:
        """Revoked machines, running out their work."""
        return self._in("draining")

    @property
    def size(self) -> int:
        """Every machine held or being acquired."""
        return self.acquiring + len(self.machines)

    @property
    def free_slots(self) -> int:
        """Slots free now on ACTIVE machines that take work."""
        return sum(self.slots - m.running for m in self.machines if m.state in ("idle", "busy"))


@runtime_checkable
class Policy(Protocol):
    """Decides when a pool grows and shrinks (elasticslice's helper).

    The pool asks at every change and at least every ``tick`` seconds; both methods
    must answer at once (no awaiting: read what outside state you need elsewhere and
    keep it where they can read it). The pool holds the answers within ``min`` and
    ``max``, and releases only idle machines. For example, machines for a scheduler's
    pending jobs, counted by some other task of the program::

        class Pending:
            def __init__(self) -> None:
                self.jobs = 0  # set by whoever polls the scheduler

            def should_add(self, view: aiores.PoolView) -> int:
                return max(0, self.jobs - view.size)

            def should_remove(self, view: aiores.PoolView) -> list[aiores.Compute]:
                surplus = view.size - self.jobs
                return [m.resource for m in view.idle[: max(0, surplus)]]
    """

    def should_add(self, view: PoolView) -> int:
        """How many machines to acquire now (0: none)."""
        ...

    def should_remove(self, view: PoolView) -> Sequence[Compute]:
        """Which idle machines to release now."""
        ...


@dataclass(frozen=True)
class QueuePolicy:
    """The default policy: as many machines as the queued work needs.

    Adds, in batches of at most ``batch`` (one ``acquire_many`` each), the machines
    that the work waiting needs beyond the free slots and the machines booting;
    releases machines idle for ``idle_timeout`` seconds while nothing waits, those
    their provider values most first.

    Args:
        batch: The most machines one decision adds.
        idle_timeout: Seconds a machine may stay idle before it is released.
    """

    batch: int = 10
    idle_timeout: float = 60.0

    def __post_init__(self) -> None:
        check.count(self.batch, "batch")
        object.__setattr__(
            self, "idle_timeout", check.seconds(self.idle_timeout, "idle_timeout", zero=True)
        )

    def should_add(self, view: PoolView) -> int:
        short = view.queued - view.free_slots - view.booting * view.slots
        return 0 if short <= 0 else min(self.batch, math.ceil(short / view.slots))

    def should_remove(self, view: PoolView) -> list[Compute]:
        if view.queued:
            return []
        idle = [m for m in view.idle if m.idle_for >= self.idle_timeout]
        idle.sort(key=lambda m: (-m.value, -m.idle_for))
        return [m.resource for m in idle]


# -- what dashboards and tests see -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A pool's figures now (:meth:`Pool.stats`).

    Attributes:
        size: Machines held or being acquired.
        booting: Machines not ACTIVE yet (those being acquired included).
        busy: Machines running work.
        idle: ACTIVE machines running nothing.
        draining: Revoked machines not released yet.
        revoked: Machines revoked so far.
        queued: Work waiting for a machine.
        running: Work running.
        done: Work that completed (a non-zero exit included).
        failed: Work that failed (its error raised to its caller).
        requeued: Attempts requeued (their machine failed or was revoked).
        boot_failures: Machines that did not boot, and failed acquires, so far.
        machine_seconds: Seconds of machines held, summed (on the session clock).
        renewed: Leases renewed so far (see :mod:`aiores._lease`).
    """

    size: int
    booting: int
    busy: int
    idle: int
    draining: int
    revoked: int
    queued: int
    running: int
    done: int
    failed: int
    requeued: int
    boot_failures: int
    machine_seconds: float
    renewed: int = 0


@dataclass(frozen=True, slots=True)
class PoolEvent:
    """One decision or change of a pool (:meth:`Pool.events`).

    Attributes:
        kind: ``"acquire"`` (``count`` machines asked for), ``"acquire-failed"``,
            ``"ready"`` (a machine is ACTIVE), ``"boot-failed"``, ``"revoked"``
            (``detail``: seconds left), ``"lost"`` (a machine ended on its own),
            ``"release"`` (``detail``: why: ``"idle"``, ``"drained"``, ``"fault"``,
            ``"boot failed"``), ``"requeue"`` (work goes back to the queue),
            ``"renewed"`` (a machine's lease, ``detail``: for how many seconds),
            ``"closed"``.
        resource: The machine concerned, if one is.
        count: How many (for ``"acquire"``).
        detail: More, in words.
        time: The session clock's time.
    """

    kind: str
    resource: Compute | None = None
    count: int = 0
    detail: str = ""
    time: float = 0.0


# -- inside --------------------------------------------------------------------------------


class _State(enum.Enum):
    BOOTING = "booting"
    IDLE = "idle"
    BUSY = "busy"
    DRAINING = "draining"
    RELEASING = "releasing"  # being released by the pool
    GONE = "gone"  # ended on its own


class _Machine:
    __slots__ = (
        "cut_at",
        "drained",
        "idle_since",
        "release",
        "resource",
        "seq",
        "since",
        "slots",
        "state",
    )

    def __init__(self, resource: Compute, since: float, seq: int) -> None:
        self.resource = resource
        self.state = _State.BOOTING
        self.since = since
        self.seq = seq
        self.idle_since = since
        self.slots: set[_Slot] = set()
        self.cut_at: float | None = None  # revoked: when running work is stopped
        self.drained = False  # revoked: the drain hook has ended
        self.release: asyncio.Task[None] | None = None

    @property
    def takes_work(self) -> bool:
        return self.state in (_State.IDLE, _State.BUSY)


class _Slot:
    """One place for work on a machine, taken by one attempt."""

    __slots__ = ("cut", "machine", "scope")

    def __init__(self, machine: _Machine) -> None:
        self.machine = machine
        self.scope: Deadline | None = None
        self.cut: str | None = None  # why the pool stopped the attempt

    def stop(self, why: str) -> None:
        """Stop the attempt (once: the first reason stays)."""
        if self.cut is None:
            self.cut = why
            if self.scope is not None:
                self.scope.reschedule(0)


def _notice(resource: Compute) -> float | None:
    """Seconds left before the backend takes ``resource`` back, if it said it will."""
    extra = resource.extra
    for key in NOTICE_KEYS:
        left = extra.get(key)
        if isinstance(left, int | float) and not isinstance(left, bool):
            return max(0.0, float(left))
    if resource.state_detail in NOTICE_DETAILS:
        return 0.0
    return None


def _value(resource: Compute) -> float:
    value = resource.extra.get("value")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return 0.0


def _machine_fault(error: AioresError, resource: Compute) -> bool:
    """Whether ``error`` (raised by work on ``resource``) is the machine's doing."""
    if resource.state.final:
        return True
    if isinstance(error, Timeout | BadParameter):
        return False  # the work's own limit, or the work's own mistake
    return isinstance(error, NoSuccess | AuthenticationFailed | IncorrectState)


# -- the pool --------------------------------------------------------------------------------


class Pool:
    """Machines kept between ``min`` and ``max``, running work (``session.pool(...)``).

    It starts at once: the controller acquires ``min`` machines and then as many as
    the policy asks for. ``async with session.pool(...) as pool`` releases every
    machine it holds on leaving (also when cancelled: shielded from the cancellation,
    bounded by ``Session.cleanup_timeout``); used plainly, :meth:`aclose` does.
    See :meth:`aiores.Session.pool` for the arguments.
    """

    def __init__(
        self,
        session: Session,
        manager: Manager,
        description: ComputeDescription,
        *,
        min: int,
        max: int,
        slots: int,
        policy: Policy,
        retries: int,
        boot_timeout: float | None,
        boot_retries: int,
        drain: Callable[[Compute, float], Awaitable[None]] | None,
        margin: float,
        tick: float,
    ) -> None:
        self.session = session
        self.manager = manager
        self.description = description
        self.min = min
        self.max = max
        self.slots = slots
        self.policy = policy
        self.retries = retries
        self.boot_timeout = boot_timeout
        self.boot_retries = boot_retries
        self.drain = drain
        self.margin = margin
        self.tick = tick
        self._clock = session.clock
        self._machines: dict[int, _Machine] = {}  # by id(resource)
        self._seq = itertools.count()
        self._queue: deque[asyncio.Future[_Slot]] = deque()
        self._acquiring = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._subscribers: list[asyncio.Queue[PoolEvent | None]] = []
        self._closing = False
        self._closed = asyncio.Event()
        self._idle_slots = asyncio.Event()  # set while no work runs
        self._idle_slots.set()
        self._streak = 0  # boots (and acquires) failed in a row
        self._backoff_until = -math.inf
        self._counts = dict.fromkeys(
            ("revoked", "done", "failed", "requeued", "boot_failures", "renewed"), 0
        )
        self._ended_seconds = 0.0
        self._policy_failed = False
        self._leases = Leases(description.duration, self._clock, self._spawn, self._renewed)
        self._spawn(self._control, "control")

    def __repr__(self) -> str:
        return (
            f"<aiores.Pool {self.manager.url} {len(self._machines)} machines "
            f"(min {self.min}, max {self.max}), {len(self._queue)} queued>"
        )

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- work ----------------------------------------------------------------------------
    async def run(
        self,
        command: str | Sequence[str],
        *,
        stdin: bytes | str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        user: str | None = None,
    ) -> RunResult:
        """Run ``command`` on a free machine of the pool, once it has one; its result.

        Arguments as :meth:`aiores.Compute.run`; ``timeout`` bounds the run on its
        machine, not the wait for a free one (bound that with ``asyncio.timeout``).
        A non-zero exit is a result (never retried). A machine that fails or is
        revoked under the command has it run again elsewhere (see :class:`Pool`).

        Raises:
            BadParameter: a bad argument (nothing ran).
            Timeout: ``timeout`` passed; the command was stopped.
            NoSuccess: ``retries`` machines failed or were revoked under it, or
                ``boot_retries`` machines in a row did not boot while it waited.
            IncorrectState: the pool was closed before it completed (it was stopped).
            AioresError: what the machine raised otherwise (the most specific class).

        Cancelling it takes it out of the queue, or stops the command on its machine.
        """
        command, data, env, timeout = check.run_arguments(command, stdin, env, timeout)
        if user is not None:
            check.text(user, "user")

        async def op(vm: Compute) -> RunResult:
            return await vm.run(command, stdin=data, env=env, timeout=timeout, user=user)

        return await self._work(op)

    async def submit(self, description: JobDescription) -> Job:
        """Run a job on a free machine of the pool; the job, once it has ended.

        The job takes a slot of its machine until it ends. A job whose machine fails
        or is revoked under it is cancelled there (where the machine still answers)
        and submitted again elsewhere, as :meth:`run` does; the job returned is the
        last one, ended (DONE, FAILED or CANCELED: its state says which).

        Raises:
            BadParameter: ``description`` is not a JobDescription.
            NoSuccess, IncorrectState, AioresError: as :meth:`run`.

        Cancelling it takes it out of the queue, or cancels the job on its machine.
        """
        check.instance(description, JobDescription, "description", "a JobDescription")

        async def op(vm: Compute) -> Job:
            job = await vm.job_service().submit(description)
            try:
                await job.wait()
            except BaseException:
                if not job.state.final:
                    await self.session.shielded(job.cancel, what=f"cancelling {job.id}")
                raise
            return job

        return await self._work(op)

    def map(
        self,
        commands: Iterable[str | Sequence[str]],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        user: str | None = None,
    ) -> AsyncGenerator[tuple[int, RunResult], None]:
        """Run every command of ``commands`` on the pool; yield each result as it completes.

        Yields ``(index, result)``: the command's index in ``commands`` and its
        :class:`~aiores.RunResult`. Nothing is raised for a failed command: a result
        whose work failed (see :meth:`run`) has ``error`` set::

            async with contextlib.aclosing(pool.map(commands)) as results:
                async for index, result in results:
                    print(index, result.exit_status)

        Raises:
            BadParameter: a bad command or argument (raised at once; nothing ran).

        Leaving the iteration early (``break``, an error, cancellation) stops what
        still runs and takes the rest out of the queue once the iterator is closed:
        use :func:`contextlib.aclosing` to close it at once.
        """
        items = check.sized(commands, "commands")
        checked = [check.command(c, f"commands[{i}]") for i, c in enumerate(items)]
        env = check.env(env)
        timeout = check.timeout(timeout)
        if user is not None:
            check.text(user, "user")
        return self._map(checked, env, timeout, user)

    async def _map(
        self,
        commands: list[str | tuple[str, ...]],
        env: dict[str, str] | None,
        timeout: float | None,
        user: str | None,
    ) -> AsyncGenerator[tuple[int, RunResult], None]:
        async def one(index: int, command: str | tuple[str, ...]) -> tuple[int, RunResult]:
            try:
                return index, await self.run(command, env=env, timeout=timeout, user=user)
            except AioresError as exc:  # its failure is its result: never dropped
                return index, RunResult(exit_status=None, error=exc)

        async with TaskSet("pool-map") as tasks:
            for index, command in enumerate(commands):
                tasks.spawn(one(index, command), name=f"aiores-pool-map {index}")
            async for done in tasks.as_completed():
                yield done

    async def _work(self, op: Callable[[Compute], Awaitable[T]]) -> T:
        """Place ``op`` on machines until it completes there (see the class docstring)."""
        self._check_open()
        requeues = 0
        while True:
            slot = await self._place()
            machine = slot.machine
            vm = machine.resource
            error: AioresError | None = None
            try:
                async with move_on_after(None) as scope:
                    slot.scope = scope
                    if slot.cut is not None:
                        scope.reschedule(0)
                    try:
                        result = await op(vm)
                    except AioresError as exc:
                        error = exc
                    else:
                        self._counts["done"] += 1
                        return result
                    finally:
                        slot.scope = None  # a finished scope cannot be rescheduled
                cut = slot.cut
                if cut is None and error is not None and not _machine_fault(error, vm):
                    self._counts["failed"] += 1
                    raise error
                if cut is None or cut == "fault":
                    # Broke under the work: released before the work runs elsewhere,
                    # so nothing of this attempt can still run there.
                    await self._release(machine, "fault", wait=True)
                    if not vm.state.final:
                        self._counts["failed"] += 1
                        assert error is not None
                        raise error
            finally:
                self._free(slot)
            if cut == "closing":
                self._counts["failed"] += 1
                raise IncorrectState(f"{self!r} was closed while work ran on {vm.id}; stopped")
            requeues += 1
            why = (cut or "failed") + (f": {error}" if error is not None else "")
            if requeues > self.retries:
                self._counts["failed"] += 1
                raise NoSuccess(
                    f"work failed on {requeues} machines (retries={self.retries}); "
                    f"last: {vm.id} {why}"
                ) from error
            self._counts["requeued"] += 1
            self._emit("requeue", vm, detail=why)

    async def _place(self) -> _Slot:
        """A free slot, once there is one (first come, first placed)."""
        self._check_open()
        fut: asyncio.Future[_Slot] = asyncio.get_running_loop().create_future()
        self._queue.append(fut)
        self._dispatch()
        self._wake.set()
        try:
            return await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._free(fut.result())  # placed as it was cancelled: give it back
            with contextlib.suppress(ValueError):
                self._queue.remove(fut)
            raise

    def _dispatch(self) -> None:
        """Give free slots to queued work."""
        while self._queue:
            free = [
                m for m in self._machines.values() if m.takes_work and len(m.slots) < self.slots
            ]
            if not free:
                return
            fut = self._queue.popleft()
            if fut.done():
                continue
            # Pack: the busiest machine first, so that the others go idle and away.
            machine = min(free, key=lambda m: (-len(m.slots), m.seq))
            slot = _Slot(machine)
            machine.slots.add(slot)
            machine.state = _State.BUSY
            self._idle_slots.clear()
            fut.set_result(slot)

    def _free(self, slot: _Slot) -> None:
        machine = slot.machine
        if slot not in machine.slots:
            return
        machine.slots.discard(slot)
        if not machine.slots:
            if machine.state is _State.BUSY:
                machine.state = _State.IDLE
                machine.idle_since = self._clock.now()
            elif machine.state is _State.DRAINING and machine.drained:
                self._start_release(machine, "drained")
            elif machine.state is _State.GONE:
                self._forget(machine)
        if not any(m.slots for m in self._machines.values()):
            self._idle_slots.set()
        self._dispatch()
        self._wake.set()

    # -- machines ------------------------------------------------------------------------
    def _spawn(self, fn: Callable[[], Awaitable[None]], what: str) -> None:
        task = self.session.spawn(fn, name=f"aiores-pool {what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _control(self) -> None:
        try:
            while not self._closing:
                self._wake.clear()
                now = self._clock.now()
                self._revocations(now)
                self._dispatch()
                self._scale(now)
                self._leases.renew_due(self._needed(), now)
                await self._nap(self._next_delay(now))
        except Exception as exc:
            error = NoSuccess(f"{self!r}: its controller failed: {exc!r}")
            self._fail_queued(error)
            self._closing = True  # nothing more can be placed; aclose still releases
            raise

    async def _nap(self, delay: float) -> None:
        """Until woken, or ``delay`` seconds on the session clock."""
        if self._wake.is_set():
            return
        sleeper = asyncio.ensure_future(self._clock.sleep(delay))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()
            await asyncio.wait({sleeper, waker})

    def _next_delay(self, now: float) -> float:
        delay = self.tick
        for machine in self._machines.values():
            if machine.cut_at is not None and machine.slots:
                delay = min(delay, machine.cut_at - now)
        renewal = self._leases.next_due(self._needed(), now)
        if renewal is not None:
            delay = min(delay, renewal)
        return max(0.0, delay)

    # -- leases ---------------------------------------------------------------------------
    def _needed(self) -> list[Compute]:
        """The machines whose leases the pool renews (see :mod:`aiores._lease`).

        Those booting or running work; idle ones while work waits, else as many as
        keep ``min`` machines (those their provider values least, then the newest).
        Not those being released or revoked: they are to end anyway.
        """
        needed = [m for m in self._machines.values() if m.state in (_State.BOOTING, _State.BUSY)]
        idle = [m for m in self._machines.values() if m.state is _State.IDLE]
        if not self._queue:
            idle.sort(key=lambda m: (_value(m.resource), -m.seq))
            idle = idle[: max(0, self.min - len(needed))]
        return [m.resource for m in (*needed, *idle)]

    def _renewed(self, resource: Compute, renewed: bool) -> None:
        if renewed:
            self._counts["renewed"] += 1
            self._emit("renewed", resource, detail=f"{self._leases.duration:g}")
        self._wake.set()

    def _view(self, now: float) -> PoolView:
        machines = []
        for m in self._machines.values():
            if m.state in (_State.RELEASING, _State.GONE):
                continue
            left = None if m.cut_at is None else max(0.0, m.cut_at - now + self.margin)
            machines.append(
                MachineView(
                    resource=m.resource,
                    state=m.state.value,
                    running=len(m.slots),
                    idle_for=now - m.idle_since if m.state is _State.IDLE else 0.0,
                    age=now - m.since,
                    value=_value(m.resource),
                    deadline=left,
                )
            )
        running = sum(len(m.slots) for m in self._machines.values())
        return PoolView(
            min=self.min,
            max=self.max,
            slots=self.slots,
            queued=len(self._queue),
            running=running,
            acquiring=self._acquiring,
            machines=tuple(machines),
            now=now,
        )

    def _scale(self, now: float) -> None:
        view = self._view(now)
        try:
            add = int(self.policy.should_add(view))
            remove = list(self.policy.should_remove(view))
        except Exception:
            if not self._policy_failed:
                log.exception("%r: its policy failed (logged once); it decides nothing", self)
            self._policy_failed = True
            add, remove = 0, []
        healthy = view.size - len(view.draining)
        if healthy < self.min:
            add = max(add, self.min - healthy)
        add = min(add, self.max - view.size)
        if add > 0 and now >= self._backoff_until:
            self._acquire(add)
            healthy += add
        for vm in remove:  # in the policy's order
            if healthy <= self.min:
                break
            machine = self._machines.get(id(vm))
            if machine is not None and machine.state is _State.IDLE:
                self._start_release(machine, "idle")
                healthy -= 1

    def _acquire(self, count: int) -> None:
        self._acquiring += count
        self._emit("acquire", count=count)

        async def acquire() -> None:
            asked = self._clock.now()  # the leases run from here at the latest
            try:
                vms = await self.manager.acquire_many(self.description, count)
            except AioresError as exc:
                self._boot_failed(None, exc)
                self._emit("acquire-failed", count=count, detail=str(exc))
                return
            finally:
                self._acquiring -= count
                self._wake.set()
            now = self._clock.now()
            for vm in vms:
                machine = _Machine(vm, now, next(self._seq))
                self._machines[id(vm)] = machine
                self._leases.begin(vm, asked)
                self._spawn(functools.partial(self._watch, machine), f"machine {vm.id}")

        self._spawn(acquire, f"acquire {count}")

    async def _watch(self, machine: _Machine) -> None:
        """Follow one machine: booted (or not), then until it ends."""
        vm = machine.resource
        try:
            await vm.wait(ResourceState.ACTIVE, timeout=self.boot_timeout)
        except AioresError as exc:
            if machine.state is _State.BOOTING:
                self._boot_failed(machine, exc)
                self._emit("boot-failed", vm, detail=str(exc))
                self._start_release(machine, "boot failed")
            return
        if machine.state is not _State.BOOTING:
            return
        machine.state = _State.IDLE
        machine.idle_since = self._clock.now()
        self._streak = 0
        self._backoff_until = -math.inf
        self._emit("ready", vm)
        self._dispatch()
        self._wake.set()
        with contextlib.suppress(AioresError):  # the watcher gave up on it: lost too
            await vm.wait()
        if machine.state in (_State.RELEASING, _State.GONE):
            return
        machine.state = _State.GONE
        self._emit("lost", vm, detail=f"{vm.state.name} ({vm.state_detail})")
        for slot in list(machine.slots):
            slot.stop("lost")
        if not machine.slots:
            self._forget(machine)
        self._wake.set()

    def _boot_failed(self, machine: _Machine | None, error: AioresError) -> None:
        self._counts["boot_failures"] += 1
        self._streak += 1
        wait = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (self._streak - 1))
        self._backoff_until = self._clock.now() + wait
        log.warning(
            "%r: %s did not boot (%d in a row; next acquire in %g s): %s",
            self,
            machine.resource.id if machine else "an acquire",
            self._streak,
            wait,
            error,
        )
        ready = any(m.takes_work or m.state is _State.DRAINING for m in self._machines.values())
        if self._streak >= self.boot_retries and not ready:
            self._fail_queued(
                NoSuccess(
                    f"{self._streak} machines in a row did not boot on {self.manager.url}; "
                    f"last: {error}"
                )
            )
            self._streak = 0

    def _fail_queued(self, error: AioresError) -> None:
        queued, self._queue = self._queue, deque()
        for fut in queued:
            if not fut.done():
                fut.set_exception(error)

    def _revocations(self, now: float) -> None:
        for machine in list(self._machines.values()):
            if machine.state in (_State.RELEASING, _State.GONE):
                continue
            left = _notice(machine.resource)
            if left is None:
                continue
            if machine.state is _State.BOOTING:  # it will never serve: give it back
                self._emit("revoked", machine.resource, detail=f"{left:g}")
                self._counts["revoked"] += 1
                self._start_release(machine, "drained")
                continue
            cut_at = now + max(0.0, left - self.margin)
            if machine.cut_at is None:
                machine.state = _State.DRAINING
                machine.cut_at = cut_at
                self._counts["revoked"] += 1
                self._emit("revoked", machine.resource, detail=f"{left:g}")
                if self.drain is None:
                    machine.drained = True
                else:
                    self._spawn(functools.partial(self._drain, machine, left), "drain")
            else:
                machine.cut_at = min(machine.cut_at, cut_at)
            if now >= machine.cut_at:
                for slot in list(machine.slots):
                    slot.stop("revoked")
            if machine.drained and not machine.slots:
                self._start_release(machine, "drained")

    async def _drain(self, machine: _Machine, left: float) -> None:
        assert self.drain is not None
        try:
            async with move_on_after(max(0.0, left - self.margin)):
                await self.drain(machine.resource, left)
        except Exception:
            log.exception("%r: the drain hook failed on %s", self, machine.resource.id)
        finally:
            machine.drained = True
            if machine.state is _State.DRAINING and not machine.slots:
                self._start_release(machine, "drained")
            self._wake.set()

    def _start_release(self, machine: _Machine, why: str) -> asyncio.Task[None]:
        """Release ``machine`` (once) in a cleanup of the session; the task that does."""
        if machine.release is None:
            if machine.state is not _State.GONE:
                machine.state = _State.RELEASING
            self._emit("release", machine.resource, detail=why)

            async def release() -> None:
                try:
                    await machine.resource.destroy()
                finally:
                    if not machine.slots:
                        self._forget(machine)
                    self._wake.set()

            machine.release = self.session.cleanups.start(
                release, what=f"releasing {machine.resource.id} of a pool"
            )
        return machine.release

    async def _release(self, machine: _Machine, why: str, *, wait: bool) -> None:
        for slot in list(machine.slots):
            slot.stop(why)
        task = self._start_release(machine, why)
        if wait:
            # The release is a session cleanup (Cleanups.start), shared by whoever
            # waits for it: a cancelled waiter stops only its waiting.
            await asyncio.shield(task)

    def _forget(self, machine: _Machine) -> None:
        self._leases.forget(machine.resource)
        if self._machines.pop(id(machine.resource), None) is not None:
            self._ended_seconds += self._clock.now() - machine.since

    def _emit(
        self, kind: str, resource: Compute | None = None, *, count: int = 0, detail: str = ""
    ) -> None:
        event = PoolEvent(kind, resource, count, detail, self._clock.now())
        log.debug("%r: %s", self, event)
        for queue in self._subscribers:
            queue.put_nowait(event)

    # -- looking on -----------------------------------------------------------------------
    def stats(self) -> PoolStats:
        """The pool's figures now."""
        now = self._clock.now()
        view = self._view(now)
        held = sum(now - m.since for m in self._machines.values())
        return PoolStats(
            size=view.size,
            booting=view.booting,
            busy=len(view.busy),
            idle=len(view.idle),
            draining=len(view.draining),
            revoked=self._counts["revoked"],
            queued=view.queued,
            running=view.running,
            done=self._counts["done"],
            failed=self._counts["failed"],
            requeued=self._counts["requeued"],
            boot_failures=self._counts["boot_failures"],
            machine_seconds=self._ended_seconds + held,
            renewed=self._counts["renewed"],
        )

    @property
    def machines(self) -> list[Compute]:
        """The machines of the pool now (booting, working, draining; not those being
        released), oldest first."""
        held = [
            m for m in self._machines.values() if m.state not in (_State.RELEASING, _State.GONE)
        ]
        return [m.resource for m in sorted(held, key=lambda m: m.seq)]

    def events(self) -> AsyncGenerator[PoolEvent, None]:
        """Every decision and change of the pool from this call on, as it happens.

        ``async for event in pool.events()``; the stream ends when the pool is
        closed (after a ``"closed"`` event). Events wait for their reader (none is
        dropped): read the stream, or close it (``aclose()``) when done.
        """
        queue: asyncio.Queue[PoolEvent | None] = asyncio.Queue()
        if self._closed.is_set():
            queue.put_nowait(None)
        else:
            self._subscribers.append(queue)
        return self._events(queue)

    async def _events(
        self, queue: asyncio.Queue[PoolEvent | None]
    ) -> AsyncGenerator[PoolEvent, None]:
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(queue)

    # -- closing --------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closing:
            raise IncorrectState(f"{self!r} is closed")

    async def aclose(self) -> None:
        """Release every machine of the pool; queued work fails, running work stops.

        Work still queued raises IncorrectState; work running is stopped (up to a
        few seconds) and raises IncorrectState; acquires under way are cancelled
        (which releases what they made); then every machine is released, in one
        call. Runs shielded from cancellation and bounded by
        ``Session.cleanup_timeout``; a failure is logged, not raised. Cancelling it
        does not stop the release; the cancellation still propagates.
        """
        if self._closed.is_set():
            return
        if self._closing and not self._tasks and not self._machines:
            self._closed.set()
            return
        first = not self._closing
        self._closing = True
        if first:
            await self.session.shielded(self._teardown, what=f"tearing down {self!r}")
        else:
            await self._closed.wait()

    async def _teardown(self) -> None:
        try:
            self._fail_queued(IncorrectState(f"{self!r} was closed"))
            for machine in self._machines.values():
                for slot in list(machine.slots):
                    slot.stop("closing")
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)  # acquires cancelled: what they made is released
            async with move_on_after(STOP_GRACE):
                await self._idle_slots.wait()  # running work stops its commands
            releasing = [m.release for m in self._machines.values() if m.release is not None]
            rest = [
                m.resource
                for m in self._machines.values()
                if m.release is None and not m.resource.state.final
            ]
            if rest:
                await self.manager.destroy(rest)
            if releasing:
                await asyncio.wait(releasing)
            for machine in list(self._machines.values()):
                if machine.resource.state.final:
                    self._forget(machine)
            if self._machines:
                log.error(
                    "%r: %d machines may not have been released: %s",
                    self,
                    len(self._machines),
                    ", ".join(m.resource.id for m in self._machines.values()),
                )
        finally:
            self._emit("closed")
            for queue in self._subscribers:
                queue.put_nowait(None)
            self._closed.set()


def check_size(min: object, max: object, fields: tuple[str, str] = ("min", "max")) -> None:
    """Check a pool's ``min`` and ``max`` (``fields``: their names in messages).

    Raises:
        BadParameter: not an int, out of range, or ``max`` below ``min``.
    """
    from ._resource import MAX_COUNT

    low = check.count(min, fields[0], min=0, max=MAX_COUNT)
    high = check.count(max, fields[1], min=1, max=MAX_COUNT)
    if high < low:
        raise BadParameter(f"{fields[1]} ({high}) must not be below {fields[0]} ({low})")


def make_pool(
    session: Session,
    url_or_manager: object,
    description: object,
    *,
    min: int,
    max: int,
    tags: Iterable[str] | str,
    policy: Policy | None,
    slots: int,
    retries: int,
    batch: int,
    idle_timeout: float,
    boot_timeout: float | None,
    boot_retries: int,
    drain: Callable[[Compute, float], Awaitable[None]] | None,
    margin: float,
    tick: float,
) -> Pool:
    """Check the arguments of :meth:`Session.pool` and start the pool."""
    from ._resource import Manager
    from ._url import URL

    if not isinstance(description, ComputeDescription):
        raise check.fail("description", "a ComputeDescription", description)
    check_size(min, max)
    check.count(slots, "slots")
    check.count(retries, "retries", min=0)
    check.count(boot_retries, "boot_retries")
    boot_timeout = check.timeout(boot_timeout, "boot_timeout")
    margin = check.seconds(margin, "margin", zero=True)
    tick = check.seconds(tick, "tick")
    if drain is not None and not callable(drain):
        raise check.fail("drain", "an async function (machine, seconds left) or None", drain)
    if policy is None:
        policy = QueuePolicy(batch=batch, idle_timeout=idle_timeout)
    elif not isinstance(policy, Policy):
        raise check.fail("policy", "a Policy (should_add and should_remove) or None", policy)
    wanted = _tags("Session.pool", tags) | description.tags
    if wanted != description.tags:
        description = description.replace(tags=wanted)
    if isinstance(url_or_manager, Manager):
        manager = url_or_manager
        if manager.session is not session:
            raise BadParameter(f"{manager!r} belongs to another session")
    elif isinstance(url_or_manager, str | URL):
        manager = session.manager(url_or_manager)
    else:
        raise check.fail("url_or_manager", "a URL or a Manager", url_or_manager)
    return Pool(
        session,
        manager,
        description,
        min=min,
        max=max,
        slots=slots,
        policy=policy,
        retries=retries,
        boot_timeout=boot_timeout,
        boot_retries=boot_retries,
        drain=drain,
        margin=margin,
        tick=tick,
    )
