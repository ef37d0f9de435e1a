"""The hard parts of concurrency, written once for the core and every adaptor.

- :class:`Cleanups`: shielded, bounded cleanup. A cleanup (releasing what a
  cancelled acquire made, stopping a remote process, aborting an upload) runs to its
  end or to its bound; cancelling the caller again does not cut it off; its owner (a
  session, the simulated cloud) waits for what still runs when it closes; a failure
  is logged, never raised into a caller that is already failing.

  Why a task and :func:`asyncio.shield`, not anyio's ``CancelScope(shield=True)``:
  on asyncio, a second native ``task.cancel()`` (what ``asyncio.timeout``,
  ``TaskGroup`` and a user's own code send) reaches through anyio's shield into the
  shielded code. A cleanup in a task of its own cannot be cancelled by anything
  aimed at the task that awaits it; only its own bound ends it.
- :func:`fail_after`: a deadline that raises :class:`~aiores.Timeout` only when *its
  own* deadline passed (trio's ``fail_at``). An inner timeout, an inner
  :class:`~aiores.Timeout` or a cancellation from outside passes through untouched.
  :func:`move_on_after` is the same deadline that ends the block quietly.
- :func:`settle`: run awaitables together and collect each one's outcome (its
  result or its error), so one failure never hides the others; a cancellation (any
  ``BaseException`` that is not an ``Exception``) is re-raised, never collected.
- :class:`InFlight`: requests that must not be cut off mid-air (a cloud's launch call
  under an idempotency token): each runs in a task of its own, its result and error
  are its caller's, a cancelled caller leaves it running, and whoever cleans up after
  that caller (``find`` by token) waits for its answer. Not a cleanup: it is not
  bounded, and its error is raised, not logged.
- :class:`Shared`: values (a connection pool, an AWS client) shared by the adaptors
  of one session and closed when it closes, instead of module-global registries.
- :class:`TaskSet`: tasks owned by one object that cancels and awaits them all when
  it closes, for fan-outs that stream results through an async generator (where an
  ``asyncio.TaskGroup`` must not stay open across ``yield``): no task outlives its
  owner, and a task's failure is not lost.
- :class:`TurnGate`: admission per loop iteration. Work that costs the loop a
  little each time it starts (a process spawned, an SSH channel opened, a fan-out's
  task started) passes at most ``per_turn`` times per iteration, so that a thousand
  of them started at once never hold every other task (a ticker, keepalives, the
  answers already in) for one long iteration.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Hashable,
    Iterable,
)
from typing import Any, Generic, TypeVar

from ._exceptions import BadParameter, Timeout

__all__ = [
    "Cleanups",
    "Deadline",
    "InFlight",
    "Shared",
    "TaskSet",
    "TurnGate",
    "errors",
    "fail_after",
    "move_on_after",
    "result_of",
    "settle",
]

T = TypeVar("T")

log = logging.getLogger("aiores")


class Cleanups:
    """Shielded, bounded cleanups, owned by one owner that waits for them on close.

    Args:
        timeout: The bound of each cleanup in seconds (None: unbounded), unless a
            call names its own.
        logger: Where a failed cleanup is reported.
    """

    def __init__(self, timeout: float | None, logger: logging.Logger = log) -> None:
        self.timeout = timeout
        self._log = logger
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def start(
        self, fn: Callable[[], Awaitable[None]], *, what: str, timeout: float | None = None
    ) -> asyncio.Task[None]:
        """Start cleanup ``fn()`` in a task of its own and return the task (not awaited)."""
        bound = self.timeout if timeout is None else timeout

        async def bounded() -> None:
            try:
                async with asyncio.timeout(bound):
                    await fn()
            except TimeoutError:
                self._log.error("%s did not finish within %s s", what, bound)
            except Exception as exc:
                self._log.error("%s failed: %r", what, exc)

        task = asyncio.get_running_loop().create_task(bounded(), name=f"aiores-cleanup {what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def run(
        self, fn: Callable[[], Awaitable[None]], *, what: str, timeout: float | None = None
    ) -> None:
        """Run cleanup ``fn()`` shielded from cancellation and bounded; wait for it.

        Cancelling the caller (once or again) stops only the waiting: the cleanup runs
        on to its end or bound, the owner waits for it on close, and the cancellation
        propagates. A failure is logged, not raised.
        """
        await asyncio.shield(self.start(fn, what=what, timeout=timeout))

    async def to_thread(
        self, fn: Callable[..., T], *args: Any, dispose: Callable[[T], object], what: str
    ) -> T:
        """Blocking ``fn(*args)`` in a thread; its result, or disposed of if cancelled.

        A thread cannot be stopped: if the caller is cancelled, the cancellation
        propagates at once and disposing of what the thread makes (``dispose(result)``,
        also blocking, run in a thread: closing the files it opened, removing the disks
        it made) is one of these cleanups, so the owner waits for it on close. Should
        the cleanup's bound end first, the result is disposed of when the thread ends.
        A thread that failed made nothing to dispose of.
        """
        work = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        try:
            # Not a cleanup: the future that brings the thread's result (to dispose of)
            # must outlive a cancelled wait.
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            self.start(functools.partial(_dispose_when_done, work, dispose), what=what)
            raise

    async def drain(self, timeout: float | None) -> None:
        """Wait (up to ``timeout`` s) for every cleanup still running; cancel the rest."""
        pending = set(self._tasks)
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=timeout)
        for task in late:
            task.cancel()
        if late:
            self._log.error("%d cleanups did not finish in time; cancelled", len(late))
            await asyncio.wait(late)


async def _dispose_when_done(work: asyncio.Future[T], dispose: Callable[[T], object]) -> None:
    try:
        await asyncio.wait({work})  # waits without cancelling it
    except asyncio.CancelledError:  # cut off by the cleanup's bound: dispose of it later
        work.add_done_callback(functools.partial(_dispose_later, dispose=dispose))
        raise
    if not work.cancelled() and work.exception() is None:  # exception() marks it retrieved
        await asyncio.to_thread(dispose, work.result())


def _dispose_later(work: asyncio.Future[T], dispose: Callable[[T], object]) -> None:
    if not work.cancelled() and work.exception() is None:
        asyncio.get_running_loop().run_in_executor(None, dispose, work.result())


class Deadline:
    """The scope of :func:`fail_after` / :func:`move_on_after`."""

    def __init__(self, scope: asyncio.Timeout, seconds: float | None) -> None:
        self._scope = scope
        self.seconds = seconds

    @property
    def expired(self) -> bool:
        """Whether this deadline (not an inner one) ended the block."""
        return self._scope.expired()

    def reschedule(self, seconds: float | None) -> None:
        """Move the deadline to ``seconds`` from now (None: no deadline)."""
        loop = asyncio.get_running_loop()
        self._scope.reschedule(None if seconds is None else loop.time() + seconds)
        self.seconds = seconds


def _mine(scope: asyncio.Timeout, exc: BaseException) -> bool:
    """Whether ``exc`` is the TimeoutError ``scope`` made of its own cancellation."""
    return (
        scope.expired()
        and type(exc) is TimeoutError
        and isinstance(exc.__cause__, asyncio.CancelledError)
    )


@contextlib.asynccontextmanager
async def fail_after(
    seconds: float | None, what: str | Callable[[], str]
) -> AsyncIterator[Deadline]:
    """A deadline ``seconds`` from now (None: none) that raises Timeout when it passes.

    ``what`` is the Timeout's message (or a function that makes it when needed).
    Only this deadline's own expiry becomes :class:`~aiores.Timeout`; anything else
    the block raises (an inner Timeout included) passes as it is.
    """
    scope = asyncio.timeout(seconds)
    try:
        async with scope:
            yield Deadline(scope, seconds)
    except TimeoutError as exc:
        if not _mine(scope, exc):
            raise
        raise Timeout(what() if callable(what) else what) from None


@contextlib.asynccontextmanager
async def move_on_after(seconds: float | None) -> AsyncIterator[Deadline]:
    """A deadline ``seconds`` from now that ends the block quietly when it passes.

    Afterwards ``deadline.expired`` says whether it did. Anything else the block
    raises passes as it is.
    """
    scope = asyncio.timeout(seconds)
    deadline = Deadline(scope, seconds)
    try:
        async with scope:
            yield deadline
    except TimeoutError as exc:
        if not _mine(scope, exc):
            raise


async def settle(aws: Iterable[Awaitable[T]]) -> list[T | Exception]:
    """Await all of ``aws`` together; each one's result or error, in order.

    A cancellation of the caller cancels them all and propagates; one of them ending
    in a ``BaseException`` that is not an ``Exception`` (a cancellation from
    elsewhere, ``KeyboardInterrupt``) is re-raised after all have ended.
    """
    outcomes = await asyncio.gather(*aws, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
            raise outcome
    return outcomes  # type: ignore[return-value]


def errors(outcomes: Iterable[object]) -> list[Exception]:
    """The errors among outcomes that :func:`settle` collected."""
    return [o for o in outcomes if isinstance(o, Exception)]


class TaskSet:
    """Tasks owned by this set: :meth:`aclose` cancels and awaits every one.

    For a fan-out that yields results as they come (an async generator cannot keep
    an ``asyncio.TaskGroup`` open across ``yield``)::

        async with TaskSet("run") as tasks:
            for item in items:
                tasks.spawn(work(item))
            async for result in tasks.as_completed():
                yield result

    A task that fails with an error is re-raised by :meth:`as_completed` (the work
    functions of a fan-out return their failure as a result instead).
    """

    __slots__ = ("_done", "_tasks", "_waiter", "_want", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: list[asyncio.Task[Any]] = []
        #: Tasks done and not yet taken by as_completed/results, in the order they ended.
        self._done: collections.deque[asyncio.Task[Any]] = collections.deque()
        #: The one wait on :attr:`_done`: woken once it holds ``_want`` tasks, or a
        #: task failed with an error.
        self._waiter: asyncio.Future[None] | None = None
        self._want = 1

    async def __aenter__(self) -> TaskSet:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str | None = None) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name or f"aiores-{self.name}")
        # One callback per task (a queue and asyncio.wait took two loop callbacks).
        task.add_done_callback(self._ended)
        self._tasks.append(task)

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._done.append(task)
        waiter = self._waiter
        if (
            waiter is not None
            and not waiter.done()
            and (len(self._done) >= self._want or _failed(task))
        ):
            waiter.set_result(None)

    async def _wait(self, want: int) -> None:
        """Until ``want`` tasks are done and not yet taken, or one failed with an error."""
        if len(self._done) >= want or any(_failed(t) for t in self._done):
            return
        self._want = want
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def as_completed(self) -> AsyncGenerator[Any, None]:
        """Each task's result as it completes (spawn everything first)."""
        for _ in range(len(self._tasks)):
            await self._wait(1)
            yield self._done.popleft().result()

    async def results(self) -> list[Any]:
        """Every task's result in the order they were spawned, once all are done
        (spawn everything first); a task's error is raised as soon as it fails."""
        await self._wait(len(self._tasks))
        if len(self._done) < len(self._tasks):  # one failed: raise its error now
            for task in self._done:  # (the rest are cancelled on exit)
                if _failed(task):
                    task.result()
        return [task.result() for task in self._tasks]

    async def aclose(self) -> None:
        """Cancel what still runs and wait for all (each is bounded by its own work:
        a cancelled run stops its remote command first); a second cancellation of
        the caller stops only this wait."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)


def _failed(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` ended with an error (a cancelled one did not)."""
    return task.done() and not task.cancelled() and task.exception() is not None


class TurnGate:
    """Spreads starts over loop iterations, at most ``per_turn`` in each.

    Starting a process blocks the loop for about a millisecond (fork and exec);
    opening an SSH channel, or a fan-out's first step on one machine, costs a tenth
    of one. A thousand of them gathered at once would otherwise all run in one
    iteration and stall every other task (timers, SSH keepalives, answers already
    in) for a second; through the gate the loop gets a turn after every
    ``per_turn`` starts, at nearly no cost in throughput. Callers are admitted in
    the order they came; a single caller in a loop works too (it waits once every
    ``per_turn`` starts).

    Callbacks that cannot wait (a protocol's ``data_received``: hundreds of
    connections answering in the same iteration) take a turn with :meth:`now`, and
    when none is left hand their work to :meth:`later`, which runs it in a later
    iteration's turn, in line with the waiting coroutines.

    Args:
        per_turn: Starts admitted per loop iteration (at least 1).

    Raises:
        BadParameter: ``per_turn`` is not an int of at least 1.
    """

    __slots__ = ("_scheduled", "_started", "_waiters", "per_turn")

    def __init__(self, per_turn: int = 8) -> None:
        if isinstance(per_turn, bool) or not isinstance(per_turn, int) or per_turn < 1:
            raise BadParameter(f"per_turn must be an int of at least 1, not {per_turn!r}")
        self.per_turn = per_turn
        self._started = 0
        self._scheduled = False  # a reset of the count is due in the next iteration
        #: Who waits for a turn: a coroutine's future, or a callback of :meth:`later`.
        self._waiters: collections.deque[asyncio.Future[None] | Callable[[], object]] = (
            collections.deque()
        )

    async def turn(self) -> None:
        """Return when this caller may start one thing in the current iteration.

        Cancelling it while it waits gives up its place (a turn it was given passes to
        the next in line).
        """
        if self._started >= self.per_turn or self._waiters:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._pass_on()  # hand the turn we were given to the next one
                raise
        self._count()

    def now(self) -> bool:
        """Take a turn in the current iteration if one is left and nobody waits.

        For callbacks: False means do the work in :meth:`later` instead.
        """
        if self._started >= self.per_turn or self._waiters:
            return False
        self._count()
        return True

    def later(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` in its turn of a later iteration (in line with the waiters).

        What it raises goes to the loop's exception handler; the others still run.
        """
        self._waiters.append(callback)
        self._schedule()

    def _count(self) -> None:
        self._schedule()
        self._started += 1

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._next_turn)

    def _next_turn(self) -> None:
        self._scheduled = False
        self._started = 0
        for _ in range(min(self.per_turn, len(self._waiters))):
            self._pass_on()
        if self._waiters:
            # Callbacks counted their turns; whoever still waits goes next iteration.
            self._schedule()

    def _pass_on(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if isinstance(waiter, asyncio.Future):
                if not waiter.done():
                    waiter.set_result(None)  # its coroutine counts its turn when it runs
                    return
                continue
            self._started += 1
            try:
                waiter()
            except Exception as exc:  # not the gate's: report it, keep the others going
                asyncio.get_running_loop().call_exception_handler(
                    {"message": "a callback run in its turn failed", "exception": exc}
                )
            return


class Shared:
    """Values shared by every adaptor of one owner (a session), closed with it.

    ``get(key, make)`` returns the value under ``key``, made by ``make()`` on first
    use. :meth:`aclose` closes every value that has an ``aclose`` coroutine method,
    newest first, each bounded by ``timeout``; a failure is logged. After it, a
    ``get`` makes a fresh value (a closed pool is never handed out again).
    """

    def __init__(self, timeout: float | None, logger: logging.Logger = log) -> None:
        self.timeout = timeout
        self._log = logger
        self._values: dict[Hashable, Any] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self._values

    def get(self, key: Hashable, make: Callable[[], T]) -> T:
        try:
            value: T = self._values[key]
        except KeyError:
            value = self._values[key] = make()
        return value

    async def aclose(self) -> None:
        values = list(self._values.values())
        self._values.clear()
        for value in reversed(values):
            close = getattr(value, "aclose", None)
            if close is None:
                continue
            try:
                async with asyncio.timeout(self.timeout):
                    await close()
            except TimeoutError:
                self._log.error("closing %r did not finish within %s s", value, self.timeout)
            except Exception as exc:
                self._log.error("closing %r failed: %r", value, exc)


class InFlight(Generic[T]):
    """Requests of one owner (an adaptor's acquires) under way, by idempotency token.

    Cancelling the caller of :meth:`run` stops only its waiting: the request goes on,
    and :meth:`take` (from the adaptor's ``find``, the core's cleanup of a cancelled
    acquire) waits for its answer, which names what it made even before the
    backend's listings show it. The owner's close waits for what is under way.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._tasks: dict[str, asyncio.Task[T]] = {}

    async def run(self, token: str, request: Coroutine[Any, Any, T]) -> T:
        """Run ``request`` in a task of its own kept under ``token``; its result.

        A cancelled caller leaves it running (and kept, for :meth:`take`); so does a
        failed one (its error is raised here, and again by :meth:`take`'s task).
        """
        task = asyncio.get_running_loop().create_task(request, name=f"{self.what} {token}")
        task.add_done_callback(_retrieve)
        self._tasks[token] = task
        # Shielded: this task is a shared future awaited by several (this caller,
        # ``take`` from find, ``aclose``), not a cleanup; cancelling the caller stops
        # only its waiting.
        result = await asyncio.shield(task)
        self._tasks.pop(token, None)
        return result

    async def take(self, token: str) -> asyncio.Task[T] | None:
        """The request kept under ``token``, once it ended (None: there is none)."""
        task = self._tasks.pop(token, None)
        if task is not None:
            await asyncio.wait({task})
        return task

    async def aclose(self) -> None:
        """Wait for the requests under way (the session bounds an adaptor's close)."""
        pending = [t for t in self._tasks.values() if not t.done()]
        if pending:
            await asyncio.wait(pending)


def result_of(task: asyncio.Task[T] | None) -> T | None:
    """The result of a request :meth:`InFlight.take` gave (None if none, failed or cancelled)."""
    if task is None or task.cancelled() or task.exception() is not None:
        return None
    return task.result()


def _retrieve(task: asyncio.Task[Any]) -> None:
    # The request's failure is raised to whoever awaits it (acquire or find); this only
    # keeps asyncio from calling it "never retrieved" when nobody is left to.
    if not task.cancelled():
        with contextlib.suppress(BaseException):
            task.exception()
