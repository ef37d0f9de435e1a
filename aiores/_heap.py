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
disappears without releasing counts no more at the next release.

A program that froze the heap itself (``gc.get_freeze_count()`` above zero before
aiores first held it) is left alone: aiores neither freezes nor unfreezes its heap.
"""

from __future__ import annotations

import gc
import weakref

__all__ = ["BULK", "held", "hold", "release"]

#: Machines a fleet's wait returns at least for it to hold the heap frozen.
BULK = 100

_holders: weakref.WeakSet[object] = weakref.WeakSet()
_frozen = False  # the permanent generation is aiores's (it froze it, nobody else had)


def hold(holder: object) -> None:
    """Freeze the objects alive now, for ``holder`` (again: also the newer ones).

    Young garbage is collected first (a generation-1 collection: a millisecond), so
    that little of what is frozen is already garbage.
    """
    global _frozen
    if not _frozen and gc.get_freeze_count() > 0:
        return  # the program froze its heap itself: its own policy
    gc.collect(1)
    gc.freeze()
    _frozen = True
    _holders.add(holder)


def release(holder: object) -> None:
    """``holder`` lets go; once nobody holds the heap it is unfrozen."""
    global _frozen
    _holders.discard(holder)
    if _frozen and not _holders:
        gc.unfreeze()
        _frozen = False


def held() -> bool:
    """Whether aiores holds the heap frozen now."""
    return _frozen
