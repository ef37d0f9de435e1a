"""What a ``local://`` URL may say: no host but this one, and a few query options."""

from __future__ import annotations

from aiores import BadParameter, IncorrectURL
from aiores.adaptor import URL, validate

__all__ = ["DEFAULT_GRACE", "LocalOptions", "check_grace", "check_max_running", "parse_options"]

#: Seconds between SIGTERM and SIGKILL when a job or command is stopped.
DEFAULT_GRACE = 5.0

_KNOWN = ("grace", "max_running")


class LocalOptions:
    """The options of one ``local://`` endpoint.

    Attributes:
        grace: Seconds between SIGTERM and SIGKILL (``?grace=0.5``).
        max_running: Most jobs running at once, or None for no limit
            (``?max_running=4``); the others wait QUEUED.
    """

    __slots__ = ("grace", "max_running")

    def __init__(self, grace: float, max_running: int | None) -> None:
        self.grace = grace
        self.max_running = max_running


def check_grace(value: object, where: str = "grace") -> float:
    """``value`` (a number, or its text) as a grace period: finite seconds >= 0."""
    return validate.seconds(validate.parse_number(value, where), where, zero=True)


def check_max_running(value: object, where: str = "max_running") -> int | None:
    """``value`` (an int, or its text) as a job limit (>= 1), or None for no limit."""
    if value is None:
        return None
    return validate.count(validate.parse_number(value, where, int), where)


def parse_options(url: URL) -> LocalOptions:
    """Check that ``url`` names this host and read its options.

    Raises:
        IncorrectURL: the URL names another host, a user, a port or a path, or an
            unknown or malformed option.
    """
    if url.host not in ("", "localhost") or url.user or url.port is not None:
        raise IncorrectURL(
            f"{str(url)!r}: local:// runs on this host only; write 'local://' "
            "(use ssh://user@host for another machine)"
        )
    if url.path not in ("", "/"):
        raise IncorrectURL(f"{str(url)!r}: local:// takes no path; write 'local://'")
    params = url.params
    unknown = sorted(set(params) - set(_KNOWN))
    if unknown:
        raise IncorrectURL(
            f"{str(url)!r}: unknown option(s) {', '.join(unknown)}; local:// knows "
            + ", ".join(_KNOWN)
        )
    try:
        grace = check_grace(params.get("grace", DEFAULT_GRACE), "local://?grace")
        max_running = check_max_running(params.get("max_running"), "local://?max_running")
    except BadParameter as exc:
        raise IncorrectURL(f"{str(url)!r}: {exc}") from None
    return LocalOptions(grace, max_running)
