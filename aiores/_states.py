"""Resource and job states: enums with a ``final`` flag and their legal transitions.

A state never goes backwards: every transition an adaptor reports is checked against
the tables here, and the journal records only legal ones. ``reachable`` answers
"can this state still come?", which is how ``wait()`` knows to raise
:class:`~aiores.IncorrectState` instead of waiting forever.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

__all__ = ["JobState", "ResourceState"]


class _State(enum.Enum):
    @property
    def final(self) -> bool:
        """True for states that never change again."""
        return self in _FINAL

    def can_become(self, other: _State) -> bool:
        """True if a direct transition from this state to ``other`` is legal."""
        return other in _NEXT[self]

    def reachable(self, target: _State) -> bool:
        """True if ``target`` can still come from this state (itself included)."""
        if target is self:
            return True
        seen: set[_State] = set()
        frontier = [self]
        while frontier:
            state = frontier.pop()
            for nxt in _NEXT[state]:
                if nxt is target:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
        return False

    def __str__(self) -> str:
        return self.name


class ResourceState(_State):
    """The life of a resource (SAGA's resource states).

    NEW: known to aiores, not yet accepted by the backend. PENDING: accepted, being
    provisioned. ACTIVE: usable for its purpose (for a Compute with SSH access, SSH
    answers). DONE, FAILED, EXPIRED, CANCELED are final.
    """

    NEW = "NEW"
    PENDING = "PENDING"
    ACTIVE = "ACTIVE"
    DONE = "DONE"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"
    CANCELED = "CANCELED"


class JobState(_State):
    """The life of a job (DRMAA2/PSI/J job states).

    NEW: not yet submitted. QUEUED: accepted, waiting to run. HELD: accepted but held
    until released. RUNNING, SUSPENDED. DONE (exit code 0), FAILED, CANCELED are final.
    """

    NEW = "NEW"
    QUEUED = "QUEUED"
    HELD = "HELD"
    RUNNING = "RUNNING"
    SUSPENDED = "SUSPENDED"
    DONE = "DONE"
    FAILED = "FAILED"
    CANCELED = "CANCELED"


_R = ResourceState
_J = JobState
_R_FINAL = frozenset({_R.DONE, _R.FAILED, _R.EXPIRED, _R.CANCELED})
_J_FINAL = frozenset({_J.DONE, _J.FAILED, _J.CANCELED})
_FINAL: frozenset[_State] = _R_FINAL | _J_FINAL

_NEXT: Mapping[_State, frozenset[_State]] = {
    _R.NEW: frozenset({_R.PENDING, _R.ACTIVE}) | _R_FINAL,
    _R.PENDING: frozenset({_R.ACTIVE}) | _R_FINAL,
    _R.ACTIVE: _R_FINAL,
    **{s: frozenset() for s in _R_FINAL},
    # A polled backend may first see a job that started SUSPENDED (it ran in between).
    _J.NEW: frozenset({_J.QUEUED, _J.HELD, _J.RUNNING, _J.SUSPENDED}) | _J_FINAL,
    _J.QUEUED: frozenset({_J.HELD, _J.RUNNING, _J.SUSPENDED}) | _J_FINAL,
    _J.HELD: frozenset({_J.QUEUED, _J.RUNNING, _J.SUSPENDED}) | _J_FINAL,
    _J.RUNNING: frozenset({_J.SUSPENDED}) | _J_FINAL,
    _J.SUSPENDED: frozenset({_J.RUNNING}) | _J_FINAL,
    **{s: frozenset() for s in _J_FINAL},
}
