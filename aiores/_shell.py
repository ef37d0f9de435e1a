"""Text for a POSIX shell, built one way.

Every value that reaches a shell (a remote login shell, a wrapper script, a local
``/bin/sh -c``) is quoted here, once, at the point where the script uses it:

- a value becomes one shell word with :func:`quote`, or a shell variable with
  :func:`assign` (``name='value'`` lines at the top of a script), and the script's
  own text then refers to it only as ``"$name"``. A value is never spliced into a
  string that is itself inside quotes (``echo "... {value}"``): there, a quoted word
  is no longer one word, and ``$(...)`` or backticks in it run.
- a program and its arguments become a command line with :func:`join`.

What no quoting can carry is refused with :class:`~aiores.BadParameter` naming the
field: a NUL (a shell word cannot hold one) and a lone surrogate (it has no UTF-8
bytes to send).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping

from ._exceptions import BadParameter

__all__ = ["assign", "check_text", "is_name", "join", "quote"]

#: A name every POSIX shell takes for a variable (str.isalnum() would let "²" pass).
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)


def check_text(value: str, what: str) -> str:
    """``value`` if a shell (and UTF-8) can carry it; BadParameter naming ``what`` if not."""
    if not isinstance(value, str):
        raise BadParameter(f"{what} must be a str, not {type(value).__name__} {value!r}")
    if "\0" in value:
        raise BadParameter(f"{what} holds a NUL character, which no command line can carry")
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise BadParameter(
            f"{what} holds a character that is not valid Unicode text "
            f"({value[exc.start : exc.end]!r}; a lone surrogate)"
        ) from None
    return value


def quote(value: str, what: str) -> str:
    """``value`` as one shell word, for a place where the shell reads words unquoted."""
    return shlex.quote(check_text(value, what))


def join(argv: Iterable[str], what: str) -> str:
    """A command line that runs ``argv`` as it is (each item one word)."""
    return " ".join(quote(arg, what) for arg in argv)


def is_name(name: str) -> bool:
    """Whether ``name`` is a portable shell variable name."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def assign(values: Mapping[str, tuple[str, str]]) -> str:
    """``name=value`` lines setting shell variables, from ``{name: (value, field)}``.

    The script that follows refers to each as ``"$name"`` (in double quotes, so it is
    neither split nor globbed); ``field`` names the value in an error.
    """
    lines = []
    for name, (value, what) in values.items():
        if not is_name(name):
            raise BadParameter(f"not a valid shell variable name: {name!r}")
        lines.append(f"{name}={quote(value, what)}\n")
    return "".join(lines)
