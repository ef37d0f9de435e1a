"""Checks of arguments at the public entry points, one rule per kind of value.

Every public constructor and method checks what it is given before anything is
allocated, journalled or sent, with these functions, so one kind of value obeys one
rule on every backend and a wrong one fails with :class:`~aiores.BadParameter` whose
message names the field. Each returns the value normalised (a timedelta as seconds,
a sequence as a tuple).

The rules:

- a time limit (``timeout``, ``deadline``): None (no limit) or a finite number of
  seconds >= 0 (0: "now or never"), or a :class:`datetime.timedelta`;
- a duration (``duration``, ``walltime``, ``cleanup_timeout``): a finite number of
  seconds > 0, or a timedelta;
- a count: an int (never a bool) within bounds;
- a flag: True or False (a truthy ``"no"`` is not a flag);
- text: a str without NUL or lone surrogates (no command line, environment or UTF-8
  stream can carry them), non-empty unless said otherwise;
- an environment: a mapping of portable names (ASCII letters, digits and ``_``, not
  starting with a digit) to text;
- a command: non-blank text (a shell command), or a non-empty sequence of text whose
  first item (the program) is not empty;
- a network's range (``cidr``): an IPv4 range in private address space (RFC 1918,
  or loopback for simulated networks), ``/16`` to ``/28``, written without host
  bits; admitted ranges (``ingress``): any ranges, in one spelling.

Adaptors reach this module as ``aiores.adaptor.validate``.
"""

from __future__ import annotations

import datetime
import ipaddress
import math
import os
from collections.abc import Iterable, Mapping, Sequence, Sized
from typing import Any, TypeVar

from ._exceptions import BadParameter
from ._shell import check_text, is_name

__all__ = [
    "MAX_COUNT",
    "address_range",
    "address_ranges",
    "command",
    "count",
    "env",
    "fail",
    "flag",
    "instance",
    "number",
    "parse_number",
    "path",
    "run_arguments",
    "seconds",
    "sized",
    "str_seq",
    "text",
    "timeout",
]

#: The most items one call may create (array jobs, resources): checked before any
#: of them is made.
MAX_COUNT = 1_000_000

T = TypeVar("T")


def _shown(value: object) -> str:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{type(value).__name__} {text}"


def fail(field: str, expected: str, value: object) -> BadParameter:
    """The error for ``field``: ``"<field> must be <expected>, not <type> <value>"``."""
    return BadParameter(f"{field} must be {expected}, not {_shown(value)}")


def flag(value: object, field: str) -> bool:
    """``value`` if it is True or False (not merely truthy)."""
    if not isinstance(value, bool):
        raise fail(field, "True or False", value)
    return value


def number(
    value: object,
    field: str,
    *,
    min: float | None = None,
    max: float | None = None,
    above: float | None = None,
) -> float:
    """``value`` as a finite float (an int or a float, never a bool) within bounds.

    ``min``/``max`` are inclusive bounds, ``above`` an exclusive lower bound.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail(field, "a number", value)
    try:
        result = float(value)
    except OverflowError:
        raise fail(field, "a finite number", value) from None
    if not math.isfinite(result):
        raise fail(field, "a finite number", value)
    if min is not None and result < min:
        raise fail(field, f"a number >= {min:g}", value)
    if above is not None and not result > above:
        raise fail(field, f"a number > {above:g}", value)
    if max is not None and result > max:
        raise fail(field, f"a number <= {max:g}", value)
    return result


def _as_seconds(value: object) -> object:
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    return value


def timeout(value: object, field: str = "timeout") -> float | None:
    """A time limit: None (none), or finite seconds >= 0 (a number or a timedelta)."""
    if value is None:
        return None
    seconds_ = _as_seconds(value)
    if isinstance(seconds_, bool) or not isinstance(seconds_, int | float):
        raise fail(field, "None or a number of seconds >= 0 (or a timedelta)", value)
    try:
        result = float(seconds_)
    except OverflowError:
        result = math.inf
    if not math.isfinite(result) or result < 0:
        raise fail(field, "None or a finite number of seconds >= 0", value)
    return result


def seconds(value: object, field: str, *, zero: bool = False) -> float:
    """A duration: finite seconds > 0 (>= 0 with ``zero``), a number or a timedelta."""
    seconds_ = _as_seconds(value)
    bound = ">= 0" if zero else "> 0"
    if isinstance(seconds_, bool) or not isinstance(seconds_, int | float):
        raise fail(field, f"a number of seconds {bound} (or a timedelta)", value)
    try:
        result = float(seconds_)
    except OverflowError:
        result = math.inf
    if not math.isfinite(result) or result < 0 or (result == 0 and not zero):
        raise fail(field, f"a finite number of seconds {bound}", value)
    return result


def count(value: object, field: str, *, min: int = 1, max: int | None = None) -> int:
    """``value`` if it is an int (never a bool) from ``min`` to ``max`` (inclusive)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(field, _range("an int", min, max), value)
    if value < min or (max is not None and value > max):
        raise fail(field, _range("an int", min, max), value)
    return value


def _range(kind: str, low: int, high: int | None) -> str:
    return f"{kind} >= {low}" if high is None else f"{kind} from {low} to {high}"


def parse_number(value: object, field: str, kind: type[int] | type[float] = float) -> float:
    """A number written as text (a URL's query, a config line): ``int`` or ``float``.

    Numbers given as numbers pass through (a bool does not). The result still needs
    its range checked (:func:`seconds`, :func:`count`).
    """
    if isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            raise fail(field, "an int" if kind is int else "a number", value) from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail(field, "an int" if kind is int else "a number", value)
    if kind is int and not isinstance(value, int):
        raise fail(field, "an int", value)
    return value


def text(value: object, field: str, *, empty: bool = False) -> str:
    """``value`` if it is a str with no NUL or lone surrogate (and not empty unless
    ``empty``)."""
    if not isinstance(value, str) or (not empty and not value):
        raise fail(field, "a str" if empty else "a non-empty str", value)
    return check_text(value, field)


def path(value: object, field: str) -> str:
    """A file system path (str or os.PathLike) as a non-empty str, valid text."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise fail(field, "a path (str or os.PathLike)", value)
    return text(value, field)


def str_seq(
    value: object, field: str, *, empty: bool = True, items_empty: bool = True
) -> tuple[str, ...]:
    """A sequence (or other iterable, not one str) of text, as a tuple.

    ``empty``: whether the sequence may be empty; ``items_empty``: whether an item may.
    """
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise fail(field, "a sequence of str (not one str)", value)
    items = tuple(value)
    if not empty and not items:
        raise BadParameter(f"{field} must not be empty")
    for i, item in enumerate(items):
        text(item, f"{field}[{i}]", empty=items_empty)
    return items


def env(value: object, field: str = "env") -> dict[str, str] | None:
    """An environment: None, or a mapping of portable names to text (a new dict)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise fail(field, "a mapping of names to str", value)
    result: dict[str, str] = {}
    for name, val in value.items():
        if not is_name(name):
            raise BadParameter(
                f"{field}: {name!r} is not a portable variable name (ASCII letters, digits "
                "and _, not starting with a digit)"
            )
        result[name] = text(val, f"{field}[{name!r}]", empty=True)
    return result


def command(value: object, field: str = "command") -> str | tuple[str, ...]:
    """A command: non-blank text (for a shell), or a program and its arguments."""
    if isinstance(value, str):
        if not value.strip():
            raise fail(field, "a non-blank str", value)
        return text(value, field)
    expected = "a str, or a sequence of str: a program and its arguments"
    if isinstance(value, bytes) or not isinstance(value, Sequence) or not value:
        raise fail(field, expected, value)
    argv = str_seq(value, field)
    if not argv[0]:
        raise BadParameter(f"{field}[0] (the program) must not be empty")
    return argv


def sized(value: Iterable[T], field: str, *, max: int = MAX_COUNT) -> list[T]:
    """The items of ``value`` as a list, refusing more than ``max`` before listing them
    where ``value`` knows its length (a ``range(10**9)`` is never materialised)."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise fail(field, "an iterable", value)
    if isinstance(value, Sized) and len(value) > max:
        raise BadParameter(f"{field} holds {len(value)} items; at most {max} are allowed")
    items: list[T] = []
    for item in value:
        items.append(item)
        if len(items) > max:
            raise BadParameter(f"{field} holds more than {max} items")
    return items


def instance(value: object, kinds: type[T] | tuple[type, ...], field: str, what: str) -> Any:
    """``value`` if it is an instance of ``kinds``; ``what`` names them in the error."""
    if not isinstance(value, kinds):
        raise fail(field, what, value)
    return value


def run_arguments(
    cmd: object, stdin: object, environ: object, limit: object, /
) -> tuple[str | tuple[str, ...], bytes | None, dict[str, str] | None, float | None]:
    """The ``command``, ``stdin``, ``env`` and ``timeout`` of a run, checked (the same
    rules for every backend) and normalised (``stdin`` as bytes)."""
    checked = command(cmd)
    if stdin is not None and not isinstance(stdin, bytes | str):
        raise fail("stdin", "bytes, str or None", stdin)
    if isinstance(stdin, str):
        data: bytes | None = text(stdin, "stdin", empty=True).encode()
    else:
        data = stdin
    return checked, data, env(environ), timeout(limit)


#: The sizes of range a network may have (EC2's VPC and subnet limits).
NETWORK_PREFIXES = (16, 28)


def address_range(value: object, field: str) -> str:
    """A network's own range: an IPv4 CIDR in private (or loopback) address space,
    ``/16`` to ``/28``, with no host bits set, as ``ipaddress`` spells it."""
    text(value, field)
    assert isinstance(value, str)
    try:
        net = ipaddress.ip_network(value.strip())
    except ValueError as exc:
        if "host bits set" in str(exc):
            fixed = ipaddress.ip_network(value.strip(), strict=False)
            raise BadParameter(f"{field} {value!r} has host bits set; write {fixed}") from None
        raise fail(field, "an address range such as '10.20.0.0/24'", value) from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise fail(field, "an IPv4 range", value)
    low, high = NETWORK_PREFIXES
    if not low <= net.prefixlen <= high:
        raise BadParameter(
            f"{field} {value!r} is /{net.prefixlen}: a network is /{low} (65,536 addresses) "
            f"to /{high} (16 addresses)"
        )
    if not (net.is_private or net.is_loopback) or net.is_link_local or net.is_multicast:
        raise BadParameter(
            f"{field} {value!r} is not private address space (10.0.0.0/8, 172.16.0.0/12, "
            "192.168.0.0/16, or 127.0.0.0/8 for simulated networks)"
        )
    return str(net)


def address_ranges(value: object, field: str) -> tuple[str, ...]:
    """Ranges admitted from anywhere (a str is one range), in one spelling: host bits
    cleared, duplicates dropped, sorted."""
    items = (value,) if isinstance(value, str) else str_seq(value, field, items_empty=False)
    ranges: set[str] = set()
    for i, item in enumerate(items):
        name = field if isinstance(value, str) else f"{field}[{i}]"
        text(item, name)
        try:
            ranges.add(str(ipaddress.ip_network(str(item).strip(), strict=False)))
        except ValueError:
            raise fail(name, "an address range such as '203.0.113.0/24'", item) from None
    return tuple(sorted(ranges))
