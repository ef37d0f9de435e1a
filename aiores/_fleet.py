"""Results of commands run on resources (and, later, tagged fan-out over groups)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._resource import Resource

__all__ = ["RunResult"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """What one command on one resource produced.

    Attributes:
        exit_status: The command's exit code; None if it did not exit normally
            (killed by a signal, connection lost, or ``error`` set).
        stdout: Its standard output, decoded as UTF-8 (undecodable bytes replaced).
        stderr: Its standard error, likewise.
        exit_signal: The signal's name if a signal ended it (``"TERM"``), else None.
        resource: The resource it ran on, where there is one.
        error: The aiores error that kept it from completing, else None.
        elapsed: Seconds from start to end.
    """

    exit_status: int | None
    stdout: str = ""
    stderr: str = ""
    exit_signal: str | None = None
    resource: Resource | None = None
    error: BaseException | None = None
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        """True if the command ran and exited with status 0."""
        return self.error is None and self.exit_status == 0

    def __repr__(self) -> str:
        parts: list[Any] = [f"exit_status={self.exit_status!r}"]
        if self.exit_signal:
            parts.append(f"exit_signal={self.exit_signal!r}")
        if self.error is not None:
            parts.append(f"error={self.error!r}")
        if self.resource is not None:
            parts.append(f"resource={self.resource.id!r}")
        return f"RunResult({', '.join(parts)})"
