"""Leases of ec2:// instances: a shutdown timer on the instance, its end in a tag.

An instance acquired with ``ComputeDescription(duration=...)`` is launched with
``InstanceInitiatedShutdownBehavior=terminate`` and a cloud-init ``power_state``
(``shutdown`` after ``duration`` rounded up to whole minutes): it terminates itself
at the end of its lease whatever becomes of the program that launched it, and EC2
reports it EXPIRED. The tag ``aiores:expires`` holds the end (ISO 8601, UTC),
and every record of it says so as ``extra["expires_at"]`` (seconds since the epoch).

:func:`renew` re-arms the timer over SSH (``shutdown -c``, then ``shutdown -h +N``,
as root through ``sudo -n`` unless the login user is root), after cloud-init has
finished (its own ``power_state`` would otherwise set the old timer again once it
has), then the adaptor updates the tag. A timer is only as fine as a minute.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping

from aiores import NoSuccess
from aiores.adaptor import CommandRunner, shell

from ._hostkeys import AS_ROOT

__all__ = ["EXPIRES_TAG", "expires_at", "expiry_tag", "lease_minutes", "rearm", "rearm_script"]

#: The tag that holds when an instance's lease ends.
EXPIRES_TAG = "aiores:expires"
#: Seconds re-arming the timer may take on the instance (cloud-init may still run).
REARM_TIMEOUT = 300.0
#: What ``shutdown`` announces on the instance.
MESSAGE = "aiores: the lease has ended"


def lease_minutes(seconds: float) -> int:
    """Whole minutes of a timer that ends no earlier than ``seconds`` from now (>= 1)."""
    return max(1, math.ceil(seconds / 60))


def expiry_tag(ends: float) -> str:
    """The ``aiores:expires`` value of a lease ending at ``ends`` (epoch seconds)."""
    when = datetime.datetime.fromtimestamp(ends, datetime.UTC)
    return when.isoformat(timespec="seconds")


def expires_at(tags: Mapping[str, str]) -> float | None:
    """When the lease of an instance with ``tags`` ends (epoch seconds), or None."""
    text = tags.get(EXPIRES_TAG)
    if not text:
        return None
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def rearm_script(seconds: float) -> str:
    """The script (run as root) that makes the instance shut down ``seconds`` from now
    (rounded up to whole minutes), in place of its earlier timer."""
    values = shell.assign(
        {
            "minutes": (str(lease_minutes(seconds)), "lease minutes"),
            "message": (MESSAGE, "shutdown message"),
        }
    )
    return (
        values
        + "if command -v cloud-init >/dev/null 2>&1; then\n"
        + "  cloud-init status --wait >/dev/null 2>&1 || true\n"
        + "fi\n"
        + "shutdown -c >/dev/null 2>&1 || true\n"
        + 'exec shutdown -h "+$minutes" "$message"\n'
    )


async def rearm(runner: CommandRunner, seconds: float) -> None:
    """Re-arm the instance's shutdown timer over ``runner`` (see the module docstring).

    Raises:
        NoSuccess: the instance refused (no ``sudo -n``, no ``shutdown``).
        Timeout: it took longer than :data:`REARM_TIMEOUT`.
    """
    script = rearm_script(seconds)
    result = await runner.run(AS_ROOT, stdin=script.encode(), timeout=REARM_TIMEOUT)
    if result.exit_status != 0:
        raise NoSuccess(
            f"could not re-arm the lease's shutdown timer (exit {result.exit_status}): "
            f"{result.stderr[-500:]}"
        )
