"""Results of commands: one host's :class:`RunResult`, a group's :class:`GroupResult`."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

from ._exceptions import FanOutError, NoSuccess

if TYPE_CHECKING:
    from ._resource import Resource

__all__ = ["GroupResult", "RunResult"]

#: Characters of a host's standard error quoted in the error of a failed command.
STDERR_QUOTED = 200
#: Failures named in the message of a FanOutError (all of them are in its exceptions).
FAILURES_NAMED = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """What one command (or copy) on one resource produced.

    Attributes:
        exit_status: The command's exit code; None if it did not exit normally
            (killed by a signal, connection lost, or ``error`` set).
        stdout: Its standard output, decoded as UTF-8 (undecodable bytes replaced).
        stderr: Its standard error, likewise.
        exit_signal: The signal's name if a signal ended it (``"TERM"``), else None.
        resource: The resource it ran on, where there is one.
        error: The aiores error that kept it from completing (connection lost,
            timeout, the fan-out's deadline), else None.
        elapsed: Seconds from start to end.
        started: When it started (epoch seconds), where known.
        finished: When it ended (epoch seconds), where known.
    """

    exit_status: int | None
    stdout: str = ""
    stderr: str = ""
    exit_signal: str | None = None
    resource: Resource | None = None
    error: BaseException | None = None
    elapsed: float = 0.0
    started: float | None = None
    finished: float | None = None

    @property
    def ok(self) -> bool:
        """True if the command ran and exited with status 0."""
        return self.error is None and self.exit_status == 0

    @property
    def host(self) -> str:
        """The resource's id, or ``"?"`` for a result of no resource (for messages)."""
        return self.resource.id if self.resource is not None else "?"

    def failure(self) -> Exception | None:
        """The error that says why it is not ok (None if it is ok).

        ``error`` itself when set (a Timeout, ConnectionLost...), else a
        :class:`~aiores.NoSuccess` naming the host and the exit status or signal, with
        the end of its standard error.
        """
        if self.ok:
            return None
        if isinstance(self.error, Exception):
            return self.error
        if self.error is not None:  # not an Exception: cannot sit in an ExceptionGroup
            return NoSuccess(f"{self.host}: {self.error!r}")
        if self.exit_signal is not None:
            what = f"was killed by signal {self.exit_signal}"
        else:
            what = f"exited with status {self.exit_status}"
        tail = self.stderr.strip()[-STDERR_QUOTED:]
        return NoSuccess(f"{self.host}: the command {what}" + (f": {tail}" if tail else ""))

    def __repr__(self) -> str:
        parts: list[Any] = [f"exit_status={self.exit_status!r}"]
        if self.exit_signal:
            parts.append(f"exit_signal={self.exit_signal!r}")
        if self.error is not None:
            parts.append(f"error={self.error!r}")
        if self.resource is not None:
            parts.append(f"resource={self.resource.id!r}")
        return f"RunResult({', '.join(parts)})"


class GroupResult(Sequence[RunResult]):
    """One :class:`RunResult` per resource of a group, in the group's order, none dropped.

    A host that could not run the command at all (connection lost, killed mid-run,
    timed out, past the deadline) has a result with ``error`` set and
    ``exit_status`` None.
    """

    def __init__(self, results: Sequence[RunResult], what: str = "command") -> None:
        self._results = tuple(results)
        self._what = what

    def __repr__(self) -> str:
        failed = len(self.failed)
        return f"<aiores.GroupResult {len(self) - failed} ok, {failed} failed>"

    @overload
    def __getitem__(self, index: int) -> RunResult: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[RunResult]: ...
    def __getitem__(self, index: int | slice) -> RunResult | Sequence[RunResult]:
        return self._results[index]

    def __len__(self) -> int:
        return len(self._results)

    def __iter__(self) -> Iterator[RunResult]:
        return iter(self._results)

    @property
    def ok(self) -> bool:
        """True if every host's command ran and exited 0 (also for an empty group)."""
        return all(r.ok for r in self._results)

    @property
    def failed(self) -> list[RunResult]:
        """The results that are not ok, in the group's order."""
        return [r for r in self._results if not r.ok]

    @property
    def by_resource(self) -> Mapping[Resource, RunResult]:
        """Each resource's result, keyed by the resource object."""
        return {r.resource: r for r in self._results if r.resource is not None}

    def error(self) -> FanOutError | None:
        """A :class:`~aiores.FanOutError` with one exception per failed host, or None.

        The error's ``results`` holds every host's result, failed or not.
        """
        pairs = [(r, exc) for r in self._results if (exc := r.failure()) is not None]
        if not pairs:
            return None
        failures = [exc for _, exc in pairs]
        named = "; ".join(_short(r, exc) for r, exc in pairs[:FAILURES_NAMED])
        left = len(pairs) - FAILURES_NAMED
        more = f"; and {left} more" if left > 0 else ""
        return FanOutError(
            f"{self._what} failed on {len(failures)} of {len(self._results)} hosts: {named}{more}",
            failures,
            self._results,
        )

    def check(self) -> GroupResult:
        """Return self if every host is ok.

        Raises:
            FanOutError: some host failed (one exception per failed host; every
                result in its ``results``).
        """
        error = self.error()
        if error is not None:
            raise error
        return self


def _short(result: RunResult, exc: BaseException) -> str:
    """One failure for a message: the host (unless the error names it) and the error."""
    text = re.sub(r"\s+", " ", str(exc)).strip()[:160]
    if exc is result.error and not text.startswith(result.host):
        return f"{result.host}: {type(exc).__name__}: {text}"
    return f"{type(exc).__name__}: {text}"
