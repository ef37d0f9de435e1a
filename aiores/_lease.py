"""Leases of a pool's machines: renewed while the pool needs them, left to end when not.

A machine acquired with ``ComputeDescription(duration=...)`` holds a lease: its
backend ends it (EXPIRED) at the end of the lease whatever becomes of the program
that acquired it (sim:// at the cloud, ec2:// by a shutdown timer on the machine), so
no machine outlives its purpose by more than one lease. A pool whose description has
a ``duration`` renews, by that duration again, the lease of each machine it still
needs once less than :data:`RENEW_LEFT` of it is left (elasticslice's ``renew``), and
lets the others run out: machines being released, revoked machines, and idle ones
beyond what the pool keeps.

The pool reckons each lease on the session's clock, from the moment it asked for
the machine (or for the renewal): never later than the backend's own reckoning.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from ._exceptions import AioresError

if TYPE_CHECKING:
    from ._clock import Clock
    from ._resource import Compute

__all__ = ["RENEW_LEFT", "Leases"]

log = logging.getLogger("aiores")

#: A lease is renewed once less than this fraction of it is left.
RENEW_LEFT = 1 / 3
#: Seconds before a renewal that failed is tried again (at most).
RETRY_DELAY = 5.0


class Leases:
    """When each machine's lease ends (on the session clock), and its renewals.

    Args:
        duration: The lease of every machine (the description's ``duration``);
            None: machines hold no lease and nothing is renewed.
        clock: The session's clock.
        spawn: Runs a renewal in a task the pool owns (``spawn(fn, what)``).
        done: Called after each renewal, with the machine and whether it was renewed.
    """

    def __init__(
        self,
        duration: float | None,
        clock: Clock,
        spawn: Callable[[Callable[[], Awaitable[None]], str], None],
        done: Callable[[Compute, bool], None],
    ) -> None:
        self.duration = duration
        self._clock = clock
        self._spawn = spawn
        self._done = done
        self._ends: dict[int, float] = {}  # by id(resource)
        self._busy: set[int] = set()  # a renewal is under way
        self._retry: dict[int, float] = {}  # not before this time, after a failure

    def begin(self, resource: Compute, asked: float) -> None:
        """``resource`` was asked for at ``asked``: its lease runs from then."""
        if self.duration is not None:
            self._ends[id(resource)] = asked + self.duration

    def forget(self, resource: Compute) -> None:
        """The pool holds ``resource`` no more."""
        key = id(resource)
        self._ends.pop(key, None)
        self._busy.discard(key)
        self._retry.pop(key, None)

    def ends(self, resource: Compute) -> float | None:
        """When the lease of ``resource`` ends, on the session clock (None: no lease)."""
        return self._ends.get(id(resource))

    def _due_at(self, key: int) -> float:
        assert self.duration is not None
        return max(self._ends[key] - self.duration * RENEW_LEFT, self._retry.get(key, -1.0))

    def renew_due(self, needed: Iterable[Compute], now: float) -> None:
        """Renew the lease of each machine of ``needed`` whose renewal is due."""
        if self.duration is None:
            return
        for resource in needed:
            key = id(resource)
            if key in self._ends and key not in self._busy and now >= self._due_at(key):
                self._busy.add(key)
                self._spawn(functools.partial(self._renew, resource), f"renew {resource.id}")

    def next_due(self, needed: Iterable[Compute], now: float) -> float | None:
        """Seconds until the next renewal of ``needed`` is due (None: none is)."""
        if self.duration is None:
            return None
        times = [
            self._due_at(id(r)) - now
            for r in needed
            if id(r) in self._ends and id(r) not in self._busy
        ]
        return max(0.0, min(times)) if times else None

    async def _renew(self, resource: Compute) -> None:
        assert self.duration is not None
        key = id(resource)
        asked = self._clock.now()
        renewed = False
        try:
            await resource.renew(self.duration)
        except AioresError as exc:
            if resource.state.final:
                return  # it ended (expired, revoked): the pool hears of it
            left = self._ends.get(key, asked) - asked
            log.warning("could not renew the lease of %s (%.3g s left): %s", resource.id, left, exc)
            if key in self._ends:
                self._retry[key] = asked + min(RETRY_DELAY, max(0.1, left / 4))
        else:
            if key in self._ends:
                self._ends[key] = asked + self.duration
                self._retry.pop(key, None)
                renewed = True
        finally:
            self._busy.discard(key)
            self._done(resource, renewed)
