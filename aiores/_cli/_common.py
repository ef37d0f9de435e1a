"""What the ``aiores`` subcommands share: consoles, running a coroutine, JSON, selection.

Every subcommand runs one coroutine with :func:`run`: an aiores error becomes a red
message and exit status 1; Ctrl-C cancels the coroutine (which cleans up and says what
it released and what it kept) and the command exits with status 130.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import click
from rich.console import Console

from .._exceptions import AioresError
from .._recover import Problem, Recovered
from .._resource import Compute, Resource
from .._session import Session

__all__ = [
    "EXIT_INTERRUPTED",
    "console",
    "emit_json",
    "err",
    "host_label",
    "resource_json",
    "run",
    "select",
    "show_problems",
]

T = TypeVar("T")

#: The exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells use.
EXIT_INTERRUPTED = 130

console = Console(highlight=False, markup=False)
err = Console(stderr=True, highlight=False, markup=False)


def run(fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn()`` on a fresh event loop; map errors and Ctrl-C to exit statuses."""

    async def main() -> T:
        return await fn()

    try:
        return asyncio.run(main())
    except AioresError as exc:
        err.print(f"aiores: {type(exc).__name__}: {exc}", style="red")
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("aiores: interrupted", style="yellow")
        sys.exit(EXIT_INTERRUPTED)


def emit_json(data: Any) -> None:
    """Print ``data`` as JSON on standard output (for scripts)."""
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def host_label(resource: Resource | None) -> str:
    """A short name for a machine in per-host output: its native id."""
    return resource.native_id if resource is not None else "?"


def resource_json(resource: Resource, row: dict[str, Any] | None = None) -> dict[str, Any]:
    """One resource as a JSON object (``row``: its journal record, for age and session)."""
    created = row.get("created") if row else None
    return {
        "id": resource.id,
        "native_id": resource.native_id,
        "url": str(resource.manager.url),
        "type": resource.rtype,
        "state": resource.state.name,
        "detail": resource.state_detail,
        "access": resource.access,
        "public_address": resource.public_address,
        "private_address": resource.private_address,
        "tags": sorted(resource.tags),
        "created": created,
        "age": None if created is None else round(time.time() - created, 1),
        "session": row.get("session") if row else None,
    }


def select(found: Recovered, tags: Iterable[str], ids: Sequence[str] = ()) -> list[Resource]:
    """The recovered resources carrying all ``tags`` (and named by ``ids``, if any)."""
    wanted = frozenset(tags)
    chosen = [r for r in found.resources if wanted <= r.tags]
    if ids:
        named = set(ids)
        chosen = [r for r in chosen if r.id in named or r.native_id in named]
    return chosen


def machines(found: Recovered, tags: Iterable[str]) -> list[Compute]:
    """The recovered machines (Compute resources) carrying all ``tags``."""
    return [r for r in select(found, tags) if isinstance(r, Compute)]


def show_problems(problems: Sequence[Problem]) -> None:
    """Say on standard error what recovery could not reach."""
    for problem in problems:
        err.print(f"aiores: {problem}", style="yellow")


#: Seconds each endpoint may take to answer a command's recovery.
RECOVER_TIMEOUT = 20.0


async def recovered(session: Session) -> Recovered:
    """``session.recover()``, its problems said on standard error."""
    found = await session.recover(timeout=RECOVER_TIMEOUT)
    show_problems(found.problems)
    return found
