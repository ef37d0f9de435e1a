"""Parsed, validated backend URLs (``sim://``, ``ssh://user@host:22``, ``slurm+ssh://login``)."""

from __future__ import annotations

import functools
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from . import _validate as check
from ._exceptions import BadParameter, IncorrectURL

__all__ = ["URL", "join_id", "native_id", "same_endpoint", "split_id"]

_ID = re.compile(r"^\[(?P<url>[^\]]+)\]-\[(?P<native>.+)\]$")

_SCHEME = re.compile(r"^[a-z][a-z0-9.\-]*(\+[a-z][a-z0-9.\-]*)*$")


@dataclass(frozen=True, slots=True)
class URL:
    """A backend URL: ``scheme://[user@]host[:port][/path][?query]``.

    Compound schemes read as "adaptor over transport": ``slurm+ssh://login.host``
    has ``adaptor == "slurm"`` and ``transport == "ssh"``.
    """

    scheme: str
    host: str = ""
    user: str | None = None
    port: int | None = None
    path: str = ""
    query: tuple[tuple[str, str], ...] = field(default=())

    @classmethod
    def parse(cls, value: str | URL) -> URL:
        """Parse and validate ``value``; raises :class:`IncorrectURL` saying what is wrong."""
        if isinstance(value, URL):
            return value
        if not isinstance(value, str):
            raise IncorrectURL(f"a URL must be a str, not {type(value).__name__}: {value!r}")
        return _parse(value)

    @property
    def adaptor(self) -> str:
        """The first part of a compound scheme (``slurm`` in ``slurm+ssh``)."""
        return self.scheme.split("+", 1)[0]

    @property
    def transport(self) -> str | None:
        """The rest of a compound scheme (``ssh`` in ``slurm+ssh``), or None."""
        _, sep, rest = self.scheme.partition("+")
        return rest if sep else None

    @property
    def params(self) -> dict[str, str]:
        """Query parameters as a dict (the last value wins)."""
        return dict(self.query)

    def replace(self, **changes: object) -> URL:
        """A copy with some fields changed."""
        fields: dict[str, Any] = {
            "scheme": self.scheme,
            "host": self.host,
            "user": self.user,
            "port": self.port,
            "path": self.path,
            "query": self.query,
        }
        fields.update(changes)
        return URL(**fields)

    def __str__(self) -> str:
        try:
            return _text(self)
        except TypeError:  # a field not hashable (a query made as a list): not kept
            return _format(self)


def _format(url: URL) -> str:
    netloc = ""
    if url.user:
        netloc += urllib.parse.quote(url.user, safe="") + "@"
    host = url.host
    if ":" in host:
        host = f"[{host}]"
    netloc += host
    if url.port is not None:
        netloc += f":{url.port}"
    text = f"{url.scheme}://{netloc}{url.path}"
    if url.query:
        text += "?" + urllib.parse.urlencode(url.query)
    return text


#: ``str(url)``, kept: an endpoint's URL names each of its thousands of objects (their
#: ids, their journal rows), and quoting its query is the costly part.
_text = functools.lru_cache(maxsize=4096)(_format)


#: White space and control characters, for an ASCII text (the usual URL, checked at
#: C speed); :func:`_unfit` is the general rule.
_ASCII_UNFIT = re.compile(r"[\x00-\x20\x7f]")


def _unfit(text: str) -> bool:
    return any(c.isspace() or not c.isprintable() for c in text)


@functools.lru_cache(maxsize=4096)
def _parse(value: str) -> URL:
    """:meth:`URL.parse` of a str; URLs are immutable, so the parsed ones are kept
    (a bounded number: the endpoints and access URLs a program uses again and again).
    """
    text = value
    if _ASCII_UNFIT.search(text) if text.isascii() else _unfit(text):
        raise IncorrectURL(f"{value!r} contains white space or a control character")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise IncorrectURL(f"{value!r} holds a lone surrogate: not a URL") from None
    if "://" not in text:
        raise IncorrectURL(
            f"{value!r} is not a URL: expected scheme://[user@]host[:port], "
            "for example 'local://', 'sim://' or 'ssh://user@host'"
        )
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise IncorrectURL(f"{value!r} is not a valid URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if not _SCHEME.match(scheme):
        raise IncorrectURL(f"{value!r} has an invalid scheme {parts.scheme!r}")
    user = urllib.parse.unquote(parts.username) if parts.username else None
    if parts.password:
        raise IncorrectURL(
            f"{scheme}:// URL carries a password: put credentials in a context "
            "(aiores.SSHContext, aiores.AWSContext), never in a URL"
        )
    query = tuple(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    return URL(
        scheme=scheme,
        host=(parts.hostname or "").lower(),
        user=user,
        port=port,
        path=parts.path,
        query=query,
    )


def join_id(url: str, native_id: str) -> str:
    """An aiores id (SAGA style): ``[sim://]-[vm-12]``, naming the endpoint and the native id."""
    return f"[{url}]-[{native_id}]"


def split_id(value: str) -> tuple[str, str] | None:
    """``(url, native_id)`` of an aiores id, or None if ``value`` is a bare native id."""
    match = _ID.match(value)
    return (match["url"], match["native"]) if match else None


def native_id(value: str, url: URL, kind: str) -> str:
    """The native id in ``value`` (an aiores id or a bare native id) for an object at ``url``.

    Raises:
        BadParameter: ``value`` is not a non-empty str, or names another endpoint.
    """
    if not isinstance(value, str) or not value:
        raise BadParameter(f"a {kind} id must be a non-empty str, not {value!r}")
    check.text(value, f"{kind} id")  # no NUL, no lone surrogate
    parsed = split_id(value)
    if parsed is None:
        return value
    owner, native = parsed
    if not same_endpoint(URL.parse(owner), url):
        raise BadParameter(f"{kind} {value!r} belongs to {owner}, not to {url}")
    return native


def same_endpoint(one: str | URL, other: str | URL) -> bool:
    """Whether two URLs name one endpoint: options in the query (fault injection,
    limits) and the path do not change where an object lives (``[sim://?boot_delay=30]-
    [vm-1]`` is found through ``sim://`` too). A malformed URL names no endpoint."""
    try:
        first, second = URL.parse(one), URL.parse(other)
    except IncorrectURL:
        return False
    return first.replace(path="", query=()) == second.replace(path="", query=())
