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
"""

from __future__ import annotations

import contextlib
import gc
import threading
import weakref
from collections.abc import Iterator

__all__ = ["BULK", "RARER", "held", "hold", "no_collections", "release", "release_owned"]

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


_pauses = 0  # how many no_collections() blocks run now (any thread)
#: While they run: (the thresholds they found, the ones they set: the first at 0).
_paused: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None
_pause_lock = threading.Lock()


def _threshold() -> tuple[int, int, int]:
    """The collection thresholds in force but for a no_collections() block's 0."""
    if _paused is not None and gc.get_threshold() == _paused[1]:
        return _paused[0]
    return gc.get_threshold()


def _set_threshold(value: tuple[int, int, int]) -> None:
    """Set the thresholds, after the no_collections() blocks if they run."""
    global _paused
    if _paused is not None and gc.get_threshold() == _paused[1]:
        _paused = (value, (0, value[1], value[2]))
        gc.set_threshold(*_paused[1])
    else:
        gc.set_threshold(*value)


@contextlib.contextmanager
def no_collections() -> Iterator[None]:
    """No cyclic garbage collection while the block runs (see the module).

    For blocks that make many short-lived objects without cycles and end soon (a
    parse): the first of them (any thread) sets the first collection threshold to 0,
    which stops automatic collections, and the last sets back the thresholds it
    found, unless the program set its own meanwhile. The collector's switch
    (:func:`gc.disable`, :func:`gc.enable`) stays the program's: it may turn it
    while a block runs, and what it chose stays.
    """
    global _pauses, _paused
    with _pause_lock:
        if _pauses == 0:
            found = gc.get_threshold()
            if found[0] > 0:  # 0: collections are off already, the program's way
                _paused = (found, (0, found[1], found[2]))
                gc.set_threshold(*_paused[1])
        _pauses += 1
    try:
        yield
    finally:
        with _pause_lock:
            _pauses -= 1
            if _pauses == 0 and _paused is not None:
                found, paused = _paused
                _paused = None
                if gc.get_threshold() == paused:  # else the program set its own
                    gc.set_threshold(*found)
