"""Acquire requests under way, per idempotency token: never cut off mid-air.

An acquire's request (``RunInstances`` for ``ec2://``, the ``CreateBucket`` calls of
``s3://``) runs in a task of its own. Cancelling the acquire stops only its waiting:
the request goes on, and the adaptor's ``find`` (the core's cleanup of a cancelled
acquire) waits for its answer, which names what it made even before the backend's
listings show it. The task is not a cleanup: its result and its error are the
acquire's, awaited by the acquire, by ``find`` and by the adaptor closing. So it is
owned by the adaptor, not by the session's cleanups (which run cleanups to a bound
and log their failures instead of returning them).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, Generic, TypeVar

__all__ = ["InFlight", "result_of"]

T = TypeVar("T")


class InFlight(Generic[T]):
    """The acquire requests of one adaptor under way, by token (see the module doc)."""

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
