"""The heap frozen while held: after a fleet's bulk wait, until it deprovisions or closes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import threading
import weakref
from collections.abc import Callable, Iterator

import pytest

import aiores
from aiores import ComputeDescription, ResourceState
from aiores import _heap as heap
from aiores.testing import FakeClock, FakePlugin

DESC = ComputeDescription(image="fake-linux", ready=None)


class Holder:
    """Something that holds the heap (kept weakly, so a plain object will not do)."""


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    """Each test starts and ends with nothing frozen and nobody holding the heap."""
    gc.unfreeze()
    thresholds = gc.get_threshold()
    interval = sys.getswitchinterval()
    yield
    sys.setswitchinterval(interval)
    heap._holders.clear()
    heap._frozen = False
    heap._thresholds = None
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_a_hold_freezes_the_live_objects_until_the_last_holder_lets_go() -> None:
    first, second = Holder(), Holder()
    heap.hold(first)
    assert heap.held()
    frozen = gc.get_freeze_count()
    assert frozen > 0
    made = [Holder() for _ in range(1000)]  # tracked objects made after the freeze
    heap.hold(second)  # a second hold freezes what came since, too
    assert gc.get_freeze_count() >= frozen + len(made)
    heap.release(first)
    assert heap.held()
    assert gc.get_freeze_count() > 0
    heap.release(second)
    assert not heap.held()
    assert gc.get_freeze_count() == 0


def test_cyclic_garbage_frozen_under_a_hold_is_reclaimed_once_released() -> None:
    holder = Holder()
    node = Holder()
    node.me = node  # type: ignore[attr-defined]  # a cycle: only the collector frees it
    alive = weakref.ref(node)
    heap.hold(holder)
    del node
    gc.collect()
    assert alive() is not None  # frozen: no collection reaches it
    heap.release(holder)
    gc.collect()
    assert alive() is None


def test_a_program_that_froze_its_heap_itself_is_left_alone() -> None:
    gc.freeze()
    frozen = gc.get_freeze_count()
    holder = Holder()
    heap.hold(holder)
    assert not heap.held()
    assert gc.get_freeze_count() == frozen
    heap.release(holder)
    assert gc.get_freeze_count() == frozen  # not unfrozen under the program's feet


def test_a_holder_that_disappears_counts_no_more() -> None:
    gone, kept = Holder(), Holder()
    heap.hold(gone)
    heap.hold(kept)
    del gone  # never released
    heap.release(kept)
    assert not heap.held()
    assert gc.get_freeze_count() == 0


async def up(fleet: aiores.Fleet, fake: FakePlugin, clock: FakeClock, count: int, tag: str) -> None:
    """``count`` machines tagged ``tag`` provisioned, booted and seen ACTIVE."""
    for vm in await fleet.provision("fake://", DESC, count=count, tags={tag}):
        fake.cloud.set_state(vm.native_id, ResourceState.ACTIVE)
    await waited(fleet, clock, tag)


async def waited(fleet: aiores.Fleet, clock: FakeClock, *tags: str) -> aiores.Group:
    """``fleet.wait(*tags)``, the watcher's clock moved on until it returns."""
    waiting = asyncio.ensure_future(fleet.wait(*tags))
    async with asyncio.timeout(5):
        while not waiting.done():
            clock.advance(8.0)  # the watcher's next look, at its longest interval
            await asyncio.sleep(0.001)
    return await waiting


@pytest.mark.asyncio
async def test_a_fleet_holds_the_heap_after_a_bulk_wait_until_it_deprovisions(
    session: aiores.Session, fake: FakePlugin, clock: FakeClock
) -> None:
    fleet = session.fleet()
    await up(fleet, fake, clock, heap.BULK - 1, "few")
    assert not heap.held()  # fewer than BULK machines: not worth it
    await up(fleet, fake, clock, 1, "one")
    group = await waited(fleet, clock)
    assert len(group.resources) == heap.BULK
    assert heap.held()
    assert gc.get_freeze_count() > 0
    await fleet.deprovision("one")
    assert not heap.held()  # destroyed machines' garbage must be reclaimable
    assert gc.get_freeze_count() == 0
    await waited(fleet, clock)  # BULK - 1 left: no hold
    assert not heap.held()
    await up(fleet, fake, clock, 1, "one")
    await waited(fleet, clock)
    assert heap.held()
    await fleet.aclose()
    assert not heap.held()
    assert fake.cloud.alive() == []


def test_release_owned_lets_go_of_an_owners_holders_and_of_those_gone() -> None:
    owner, other = Holder(), Holder()
    first, second, kept = Holder(), Holder(), Holder()
    heap.hold(first, owner)
    heap.hold(second, owner)
    heap.hold(kept, other)
    heap.release_owned(owner)
    assert heap.held()  # ``other``'s holder still holds it
    heap.release_owned(other)
    assert not heap.held()
    assert gc.get_freeze_count() == 0
    gone = Holder()
    heap.hold(gone)
    del gone  # never released, no owner: the next release_owned finds it gone
    heap.release_owned(owner)
    assert not heap.held()
    assert gc.get_freeze_count() == 0


@pytest.mark.asyncio
async def test_closing_a_session_thaws_the_heap_its_unclosed_fleets_held(
    fake: FakePlugin, clock: FakeClock
) -> None:
    async with aiores.Session(clock=clock, cleanup_timeout=5) as session:
        kept = session.fleet()  # never closed, and still referenced afterwards
        dropped = session.fleet()  # never closed, and dropped before the session closes
        await up(kept, fake, clock, heap.BULK, "kept")
        await up(dropped, fake, clock, heap.BULK, "dropped")
        assert heap.held()
        for vm in await waited(dropped, clock):
            await vm.destroy()
        del dropped, vm
        assert heap.held()  # ``kept`` holds it
    assert not heap.held()
    assert gc.get_freeze_count() == 0
    assert not kept._closed
    assert len(kept.select()) == heap.BULK


def _collecting() -> bool:
    """Whether automatic collections run (the collector on, a first threshold)."""
    return gc.isenabled() and gc.get_threshold()[0] > 0


def _quick() -> bool:
    """Whether the interpreter passes between threads every QUICK_SWITCH seconds."""
    return sys.getswitchinterval() == pytest.approx(heap.QUICK_SWITCH)


@pytest.mark.parametrize(
    ("block", "in_force", "setting"),
    [
        (heap.no_collections, lambda: not _collecting(), gc.get_threshold),
        (heap.quick_switches, _quick, sys.getswitchinterval),
    ],
    ids=["no_collections", "quick_switches"],
)
def test_a_block_holds_while_blocks_run_in_any_thread_until_the_last_ends(
    block: Callable[[], contextlib.AbstractContextManager[None]],
    in_force: Callable[[], bool],
    setting: Callable[[], object],
) -> None:
    found = setting()
    assert not in_force()
    inside = threading.Event()
    leave = threading.Event()
    seen: list[bool] = []

    def parse() -> None:
        with block():
            inside.set()
            leave.wait(10)

    worker = threading.Thread(target=parse)
    worker.start()
    try:
        assert inside.wait(10)
        assert in_force()
        with block():  # a second block, overlapping
            seen.append(in_force())
        assert in_force()  # the worker's block still runs
    finally:
        leave.set()
        worker.join(10)
    assert seen == [True]
    assert not in_force()
    assert setting() == found


def test_no_collections_restores_the_collector_after_an_error() -> None:
    found = gc.get_threshold()
    with pytest.raises(ValueError, match="parse failed"), heap.no_collections():
        raise ValueError("parse failed")
    assert gc.get_threshold() == found
    assert _collecting()


def test_no_collections_leaves_a_collector_the_program_disabled_alone() -> None:
    gc.disable()
    try:
        with heap.no_collections():
            assert not _collecting()
        assert not gc.isenabled()  # not enabled behind the program's back
    finally:
        gc.enable()


def test_a_collector_the_program_disables_during_a_block_stays_disabled() -> None:
    """gc.disable() by the program while a parse runs (in another thread) is its
    choice: the end of the block does not turn the collector back on."""
    try:
        with heap.no_collections():
            gc.disable()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_collector_the_program_enables_during_a_block_stays_enabled() -> None:
    gc.disable()
    try:
        with heap.no_collections():
            gc.enable()
        assert gc.isenabled()
    finally:
        gc.enable()


def test_a_threshold_the_program_sets_during_a_block_is_kept() -> None:
    with heap.no_collections():
        gc.set_threshold(5000, 20, 20)
    assert gc.get_threshold() == (5000, 20, 20)


def test_a_hold_and_a_release_during_a_block_apply_once_it_ends() -> None:
    """The heap held (rarer full collections) and let go while a parse runs: its
    thresholds are those of the hold while it lasts, the program's after."""
    found = gc.get_threshold()
    rarer = (found[0], found[1], found[2] * heap.RARER)
    holder = Holder()
    with heap.no_collections():
        heap.hold(holder)
        assert not _collecting()
    assert gc.get_threshold() == rarer
    with heap.no_collections():
        heap.release(holder)
        assert not _collecting()
    assert gc.get_threshold() == found


def test_a_block_overlapping_a_hold_and_its_release_restores_the_program_thresholds() -> None:
    found = gc.get_threshold()
    holder = Holder()
    heap.hold(holder)
    with heap.no_collections():
        heap.release(holder)
    assert gc.get_threshold() == found
    block = heap.no_collections()
    block.__enter__()
    heap.hold(holder)
    block.__exit__(None, None, None)
    heap.release(holder)
    assert gc.get_threshold() == found


def test_full_collections_are_rarer_while_the_heap_is_held() -> None:
    found = gc.get_threshold()
    holder = Holder()
    heap.hold(holder)
    assert gc.get_threshold() == (found[0], found[1], found[2] * heap.RARER)
    heap.hold(Holder())  # a second hold: no rarer still
    assert gc.get_threshold() == (found[0], found[1], found[2] * heap.RARER)
    heap._holders.clear()
    heap.release(holder)
    assert gc.get_threshold() == found


def test_a_threshold_the_program_set_while_held_is_kept() -> None:
    holder = Holder()
    heap.hold(holder)
    gc.set_threshold(5000, 20, 20)  # the program's own choice, meanwhile
    heap.release(holder)
    assert not heap.held()
    assert gc.get_threshold() == (5000, 20, 20)


def test_no_collection_runs_while_a_block_allocates() -> None:
    def collections() -> int:
        return sum(generation["collections"] for generation in gc.get_stats())

    before = collections()
    with heap.no_collections():
        kept = [[index] for index in range(50 * gc.get_threshold()[1] + 10_000)]
        during = collections()
    assert during == before
    assert len(kept) > 10_000
    del kept
    gc.collect()
    assert collections() > during


def test_quick_switches_restore_the_interval_after_an_error() -> None:
    found = sys.getswitchinterval()
    with pytest.raises(ValueError, match="parse failed"), heap.quick_switches():
        raise ValueError("parse failed")
    assert sys.getswitchinterval() == found


def test_a_shorter_interval_of_the_program_is_left_alone() -> None:
    sys.setswitchinterval(heap.QUICK_SWITCH / 5)
    shorter = sys.getswitchinterval()
    with heap.quick_switches():
        assert sys.getswitchinterval() == shorter
    assert sys.getswitchinterval() == shorter


def test_an_interval_the_program_sets_during_a_block_is_kept() -> None:
    with heap.quick_switches():
        sys.setswitchinterval(0.02)
    assert sys.getswitchinterval() == pytest.approx(0.02)


def test_quick_switches_and_no_collections_overlap_independently() -> None:
    thresholds, interval = gc.get_threshold(), sys.getswitchinterval()
    with heap.quick_switches():
        with heap.no_collections():
            assert gc.get_threshold()[0] == 0
            assert sys.getswitchinterval() == pytest.approx(heap.QUICK_SWITCH)
        assert gc.get_threshold() == thresholds
        assert sys.getswitchinterval() == pytest.approx(heap.QUICK_SWITCH)
    assert sys.getswitchinterval() == interval


@pytest.mark.parametrize("interval", [0.007, 0.0008, 0.025, 0.1, 0.00051])
def test_quick_switches_set_back_exactly_the_interval_they_found(interval: float) -> None:
    sys.setswitchinterval(interval)
    found = sys.getswitchinterval()
    with heap.quick_switches():
        assert _quick()
    assert sys.getswitchinterval() == found
