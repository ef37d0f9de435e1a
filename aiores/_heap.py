"""Short full garbage collections after a bulk set-up: the heap frozen while it is held.

A fleet of thousands of machines, with their pooled SSH connections, is millions of
objects that live as long as the fleet. CPython's full (generation 2) collection
visits every object the cyclic collector tracks, on the thread that allocates, here
the event loop's: with 2000 pooled sim VMs each one stalled the loop 0.1-0.5 s, a few
times per fan-out. :func:`hold` moves the objects alive now into the permanent
generation (:func:`gc.freeze`), which no collection visits; later collections visit
only what came after.

The price: cyclic garbage among frozen objects (a destroyed machine's objects, a
closed connection's) is not reclaimed while they stay frozen. So the heap stays frozen
only while a holder holds it: a :class:`~aiores.Fleet` holds it once a
:meth:`~aiores.Fleet.wait` returned :data:`BULK` machines or more, and lets go when it
deprovisions or closes. Once nobody holds it, :func:`release` unfreezes everything
(:func:`gc.unfreeze`) and the next full collection reclaims that garbage (one long
pause, at a teardown, not during the work). Holders are kept weakly: one that
disappears without releasing counts no more at the next release. A holder may name
its owner (a fleet its session): :func:`release_owned` lets go of every holder of
an owner and of those that disappeared, so that closing a session thaws the heap
even when its fleets were never closed.

A program that froze the heap itself (``gc.get_freeze_count()`` above zero before
aiores first held it) is left alone: aiores neither freezes nor unfreezes its heap.

While it holds the heap, aiores also makes full collections ten times rarer (the
third collection threshold, ``gc.set_threshold``, times :data:`RARER`). CPython
holds full collections back until the objects that reached the oldest generation
since the last one are a quarter of those it kept then; frozen, the oldest
generation is nearly empty, so that guard no longer held anything back, and the
objects of the work in flight (1000 jobs, 1000 instances, 2000 commands: 100,000 to
200,000 objects) were visited by a full collection every 70,000 allocations, 40-130
ms each. The threshold it found is set back when it lets go, unless the program
changed it meanwhile.

:func:`no_collections` is for the other bulk: a big answer parsed into a tree of
short-lived objects (a thousand EC2 instances' XML: 100,000 elements, alive for the
tens of milliseconds of the parse). Every collection during the parse found them
alive, moved them on to the oldest generation, and that growth set off a full
collection, which visited them all again: one full collection per parse. With no
collection while it runs, the tree is freed by reference counting once it is used,
and never reaches the old generation.

:func:`quick_switches` is for the same parse's other cost. It runs in a worker
thread, in Python, for hundreds of milliseconds; the event loop's thread shares the
interpreter with it. CPython hands the interpreter to a waiting thread only after
the switch interval (5 ms by default), and the loop's thread waits anew after each
call that lets the interpreter go (a socket's send, a lock): an iteration of a few
dozen such calls waited 40-70 ms for it while one CPU stood idle. With the interval
at :data:`QUICK_SWITCH` while such a block runs, each wait is a tenth as long.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

__all__ = [
    "BULK",
    "QUICK_SWITCH",
    "RARER",
    "held",
    "hold",
    "no_collections",
    "quick_switches",
    "release",
    "release_owned",
]

T = TypeVar("T")

#: Machines a fleet's wait returns at least for it to hold the heap frozen.
BULK = 100

#: How much rarer full collections are while the heap is held.
RARER = 10

#: Who holds the heap, each with its owner (None: none).
_holders: weakref.WeakKeyDictionary[object, object] = weakref.WeakKeyDictionary()
_frozen = False  # the permanent generation is aiores's (it froze it, nobody else had)
#: (the thresholds found, those aiores set) while it holds the heap.
_thresholds: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None


def hold(holder: object, owner: object = None) -> None:
    """Freeze the objects alive now, for ``holder`` (again: also the newer ones),
    which ``owner`` may release with the others it owns (:func:`release_owned`).

    Young garbage is collected first (a generation-1 collection: a millisecond), so
    that little of what is frozen is already garbage.
    """
    global _frozen, _thresholds
    if not _frozen and gc.get_freeze_count() > 0:
        return  # the program froze its heap itself: its own policy
    gc.collect(1)
    gc.freeze()
    _frozen = True
    _holders[holder] = owner
    with _pause_lock:
        if _thresholds is None:
            found = _threshold()
            if found[0] > 0:  # 0: the program turned collections off its own way
                rarer = (found[0], found[1], found[2] * RARER)
                _set_threshold(rarer)
                _thresholds = (found, rarer)


def release(holder: object) -> None:
    """``holder`` lets go; once nobody holds the heap it is unfrozen."""
    _holders.pop(holder, None)
    _thaw()


def release_owned(owner: object) -> None:
    """Every holder ``owner`` owns lets go (and those that disappeared count no more)."""
    for holder, its_owner in list(_holders.items()):
        if its_owner is owner:
            _holders.pop(holder, None)
    _thaw()


def _thaw() -> None:
    """Unfreeze the heap once nobody holds it."""
    global _frozen, _thresholds
    if _frozen and not _holders:
        gc.unfreeze()
        _frozen = False
        with _pause_lock:
            if _thresholds is not None:
                found, rarer = _thresholds
                _thresholds = None
                if _threshold() == rarer:  # else the program set its own meanwhile
                    _set_threshold(found)


def held() -> bool:
    """Whether aiores holds the heap frozen now."""
    return _frozen


#: Serialises the blocks of every _Override and the heap's holds (their thresholds).
_pause_lock = threading.Lock()


class _Override(Generic[T]):
    """A process-wide setting changed while blocks run (any thread, overlapping).

    The first block reads the setting and sets ``change(found)`` (None: leave it);
    the last one sets back what the first found, unless the program set its own
    meanwhile. :meth:`underlying` and :meth:`assign` read and set the program's value
    through the blocks: the one in force once they end.
    """

    def __init__(
        self, get: Callable[[], T], put: Callable[[T], None], change: Callable[[T], T | None]
    ) -> None:
        self._get, self._put, self._change = get, put, change
        self._blocks = 0
        #: While blocks run and the setting is theirs: (what they found, what they set).
        self._state: tuple[T, T] | None = None

    @contextlib.contextmanager
    def block(self) -> Iterator[None]:
        with _pause_lock:
            if self._blocks == 0:
                found = self._get()
                changed = self._change(found)
                if changed is not None and changed != found:
                    self._put(changed)
                    self._state = (found, changed)
            self._blocks += 1
        try:
            yield
        finally:
            with _pause_lock:
                self._blocks -= 1
                if self._blocks == 0 and self._state is not None:
                    found, changed = self._state
                    self._state = None
                    if self._get() == changed:  # else the program set its own
                        self._put(found)

    def _theirs(self) -> tuple[T, T] | None:
        """(found, set) while the blocks' value is in force, else None."""
        state = self._state
        return state if state is not None and self._get() == state[1] else None

    def underlying(self) -> T:
        """The program's value: the one in force once the blocks end."""
        state = self._theirs()
        return state[0] if state is not None else self._get()

    def assign(self, value: T) -> None:
        """Set the program's value (after the blocks, if they run)."""
        if self._theirs() is not None:
            changed = self._change(value)
            if changed is None or changed == value:
                self._state = None
                self._put(value)
            else:
                self._state = (value, changed)
                self._put(changed)
        else:
            self._put(value)


def _set_gc_threshold(value: tuple[int, int, int]) -> None:
    gc.set_threshold(*value)


def _paused(found: tuple[int, int, int]) -> tuple[int, int, int] | None:
    # 0 as the first threshold: collections are off already, the program's way.
    return (0, found[1], found[2]) if found[0] > 0 else None


#: The collection thresholds, the first at 0 while no_collections() blocks run.
_NO_COLLECTIONS = _Override(gc.get_threshold, _set_gc_threshold, _paused)

#: The interpreter's switch interval while quick_switches() blocks run (seconds).
QUICK_SWITCH = 0.0005


def _set_switch_interval(seconds: float) -> None:
    # CPython keeps whole microseconds and truncates: the middle of the microsecond
    # read gives back exactly the interval read (0.007 would become 0.006999).
    sys.setswitchinterval((round(seconds * 1e6) + 0.5) * 1e-6)


#: The switch interval, at most QUICK_SWITCH while quick_switches() blocks run.
_QUICK_SWITCHES = _Override(
    sys.getswitchinterval,
    _set_switch_interval,
    lambda found: QUICK_SWITCH if found > QUICK_SWITCH else None,
)


def _threshold() -> tuple[int, int, int]:
    """The collection thresholds in force but for a no_collections() block's 0."""
    return _NO_COLLECTIONS.underlying()


def _set_threshold(value: tuple[int, int, int]) -> None:
    """Set the thresholds, after the no_collections() blocks if they run."""
    _NO_COLLECTIONS.assign(value)


def no_collections() -> contextlib.AbstractContextManager[None]:
    """No cyclic garbage collection while the block runs (see the module).

    For blocks that make many short-lived objects without cycles and end soon (a
    parse): the first of them (any thread) sets the first collection threshold to 0,
    which stops automatic collections, and the last sets back the thresholds it
    found, unless the program set its own meanwhile. The collector's switch
    (:func:`gc.disable`, :func:`gc.enable`) stays the program's: it may turn it
    while a block runs, and what it chose stays.
    """
    return _NO_COLLECTIONS.block()


def quick_switches() -> contextlib.AbstractContextManager[None]:
    """The interpreter passed between threads every :data:`QUICK_SWITCH` seconds at
    most while the block runs (see the module).

    For CPU-bound Python in a worker thread (a parse): the first block (any thread)
    sets the switch interval (:func:`sys.setswitchinterval`) to :data:`QUICK_SWITCH`
    if it was longer; the last sets back the one it found, unless the program set
    its own meanwhile.
    """
    return _QUICK_SWITCHES.block()
