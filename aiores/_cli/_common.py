"""What the ``aiores`` subcommands share: consoles, running a coroutine, JSON, selection.

Every subcommand runs one coroutine with :func:`run`. Exit statuses, for every command:

- 0: done;
- 1: the operation failed (a backend's error, a host that failed, a timeout, an id
  nobody knows);
- 2: bad input (:class:`~aiores.BadParameter`, as click's own usage errors): nothing
  was acquired, submitted or changed;
- 130: Ctrl-C, which cancels the coroutine (it cleans up and says what it released and
  what it kept).

An aiores error reaching a command, from its coroutine or from building its
arguments, is one line on standard error (:func:`fail`, which the ``aiores`` group
also applies to every command): never a traceback.

Every option and argument is checked (:func:`check_tags`, :func:`check_name`,
:func:`check_url`, :func:`check_ids` and :mod:`aiores._validate`) before anything is
acquired, submitted or looked up, so bad input exits 2 having done nothing.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import unicodedata
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console

from .. import _validate as validate
from .._exceptions import AioresError, BadParameter
from .._recover import Problem, Recovered
from .._registry import registry
from .._resource import Compute, Resource
from .._session import Session
from .._url import URL, split_id

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "MAX_NAME",
    "check_ids",
    "check_name",
    "check_tags",
    "check_url",
    "console",
    "emit_json",
    "err",
    "fail",
    "host_label",
    "resource_json",
    "run",
    "select",
    "show_problems",
]

T = TypeVar("T")

#: The exit status of a command whose operation failed.
EXIT_FAILED = 1
#: The exit status of a command given bad input (as click's usage errors): nothing done.
EXIT_BAD_INPUT = 2
#: The exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells use.
EXIT_INTERRUPTED = 130

console = Console(highlight=False, markup=False)
err = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)


def run(fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn()`` on a fresh event loop; map errors and Ctrl-C to exit statuses."""

    async def main() -> T:
        return await fn()

    try:
        return asyncio.run(main())
    except AioresError as exc:
        fail(exc)
    except KeyboardInterrupt:
        err.print("aiores: interrupted", style="yellow")
        sys.exit(EXIT_INTERRUPTED)


def fail(exc: AioresError) -> NoReturn:
    """Say ``exc`` in one line on standard error; exit 2 for bad input, else 1."""
    message = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    err.print(f"aiores: {type(exc).__name__}: {message}", style="red", soft_wrap=True)
    sys.exit(EXIT_BAD_INPUT if isinstance(exc, BadParameter) else EXIT_FAILED)


#: The longest image or template name a command accepts, in characters (cloud image
#: ids and names, even an Azure gallery image's resource id, stay well below it).
MAX_NAME = 1024


def _has_control(value: str) -> bool:
    """Whether ``value`` holds a control character (which a terminal does not show)."""
    return any(unicodedata.category(c) == "Cc" for c in value)


def check_tags(tags: Iterable[str], field: str = "--tag") -> tuple[str, ...]:
    """Tags given on the command line: each non-empty, without white space, commas or
    control characters (tags are shown comma-separated, one machine a line)."""
    checked = tuple(tags)
    for tag in checked:
        validate.text(tag, field)
        if _has_control(tag) or any(c.isspace() or c == "," for c in tag):
            raise validate.fail(
                field, "a tag without white space, commas or control characters", tag
            )
    return checked


def check_name(value: str | None, field: str) -> str | None:
    """An image or template name: None (the backend's default), or non-empty text of
    at most :data:`MAX_NAME` characters without control characters."""
    if value is None:
        return None
    name = validate.text(value, field)
    if len(name) > MAX_NAME:
        raise BadParameter(f"{field} is {len(name)} characters long; at most {MAX_NAME} are")
    if _has_control(name):
        raise validate.fail(field, "a name without control characters", name)
    return name


def check_url(value: str, field: str = "URL") -> str:
    """``value`` if it is a URL whose scheme an adaptor handles (or ``any://``).

    Raises:
        IncorrectURL: a malformed URL, or no adaptor for its scheme (the message lists
            the known ones).
    """
    validate.text(value, field)
    parsed = URL.parse(value)
    if parsed.scheme != "any":
        registry.plugin_for(parsed)
    return value


def check_ids(ids: Iterable[str], kind: str, example: str) -> tuple[str, ...]:
    """Ids like ``example`` (``[url]-[native id]``): text without control characters,
    whose URL an adaptor handles."""
    checked = tuple(ids)
    for value in checked:
        validate.text(value, f"{kind} id")
        parts = split_id(value)
        if parts is None:
            raise BadParameter(f"{value!r} is not a {kind} id like {example!r}")
        if _has_control(value):
            raise validate.fail(f"{kind} id", "an id without control characters", value)
        check_url(parts[0], f"the URL of {kind} id {value!r}")
    return checked


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
