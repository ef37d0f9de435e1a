"""Counting the event loop's iterations, for tests of admission per iteration."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


def iteration_counter(
    loop: asyncio.AbstractEventLoop,
) -> tuple[Callable[[], int], Callable[[], None]]:
    """A function giving the loop iteration number, and one to stop counting."""
    count = 0
    handle: asyncio.Handle | None = None

    def tick() -> None:
        nonlocal count, handle
        count += 1
        handle = loop.call_soon(tick)

    tick()

    def stop() -> None:
        assert handle is not None
        handle.cancel()

    return (lambda: count), stop
