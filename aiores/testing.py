"""Helpers for testing code that uses aiores.

:class:`FakeClock` replaces the session's clock so that time-based logic (the watcher's
poll interval and backoff) runs deterministically without sleeping::

    clock = FakeClock()
    async with aiores.Session(journal=None, clock=clock) as session:
        ...
        await clock.wait_for_sleepers()   # the watcher is waiting for its next tick
        clock.advance(1.0)                # ... which is now due
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

__all__ = ["FakeClock"]


class FakeClock:
    """A clock that moves only when told to (:meth:`advance`)."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._changed: asyncio.Event | None = None

    def now(self) -> float:
        return self._now

    def _event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + max(0.0, seconds), next(self._seq), fut))
        self._event().set()
        await fut

    @property
    def sleepers(self) -> int:
        """How many sleeps are pending."""
        return sum(1 for _, _, fut in self._sleepers if not fut.done())

    def next_deadline(self) -> float | None:
        """When the earliest pending sleep ends, or None."""
        for deadline, _, fut in sorted(self._sleepers):
            if not fut.done():
                return deadline
        return None

    async def wait_for_sleepers(self, count: int = 1) -> None:
        """Return once at least ``count`` sleeps are pending (no real time passes)."""
        while self.sleepers < count:
            event = self._event()
            event.clear()
            await event.wait()

    def advance(self, seconds: float) -> None:
        """Move time forward, ending every sleep that is due by then."""
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    def advance_to_next(self) -> float:
        """Advance to the earliest pending deadline; returns the step taken."""
        deadline = self.next_deadline()
        if deadline is None:
            raise RuntimeError("no sleep is pending")
        step = max(0.0, deadline - self._now)
        self.advance(step)
        return step
