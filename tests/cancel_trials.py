"""Cancelling submits at random points: no job may be left running.

Each trial submits a job (``sleep`` of a marked length) through a session with a
journal and cancels the submit after a delay drawn, from a seeded generator, within
the time a submit takes: before the command reached the host, while the job
directory is being made, between the wrapper's start and its pid being recorded,
after. A submit that returned before its cancel is cancelled as a job. Then every
program of the trials must end (bounded wait), and every submit intent the journal
closed as ``released`` must name only jobs whose program has ended.

Shared by ``tests/ssh/test_cancel.py``, ``tests/sim/test_cancel.py`` and the stress
program ``tests/stress/cancel_submit.py``.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

import aiores
from aiores import JobDescription

__all__ = ["Trials", "cancel_submits", "programs"]

#: Seconds the trials' programs have to end once the trials are over.
SETTLE = 30.0


def programs(mark: str) -> list[int]:
    """Live processes (not zombies) running ``sleep <n>.<mark>``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if (
            len(cmdline) == 2
            and cmdline[0].endswith("sleep")
            and cmdline[1].endswith(f".{mark}")
            and proc.info["status"] != psutil.STATUS_ZOMBIE
        ):
            found.append(proc.pid)
    return found


@dataclass
class Trials:
    """What a run of trials found."""

    trials: int
    seed: int
    #: Submits cancelled while they ran (the rest returned first: their job was cancelled).
    inside: int = 0
    #: The longest submit measured before the trials (the delays are drawn below it).
    span: float = 0.0
    #: Programs still running once the trials had settled: each one a job left running.
    left_running: list[int] = field(default_factory=list)
    #: Journal status of each submit intent.
    statuses: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        return (
            f"{self.trials} trials (seed {self.seed}), {self.inside} cancelled inside submit "
            f"(delays 0-{self.span * 1000:.1f} ms), jobs left running: "
            f"{len(self.left_running)}, intents: {dict(sorted(self.statuses.items()))}"
        )


async def _settled(mark: str, timeout: float) -> list[int]:
    """The trials' programs still running once they ended, or after ``timeout``."""
    deadline = time.monotonic() + timeout
    # Processes on the host: nothing to await.
    while (left := await asyncio.to_thread(programs, mark)) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    return left


async def cancel_submits(
    session: aiores.Session,
    service: aiores.JobService,
    *,
    trials: int,
    seed: int,
    on_trial: Callable[[int], None] | None = None,
) -> Trials:
    """Run ``trials`` cancelled submits on ``service`` (see the module)."""
    assert session.journal is not None
    mark = str(secrets.randbelow(10**9))
    desc = JobDescription(executable="sleep", arguments=[f"600.{mark}"])
    result = Trials(trials=trials, seed=seed)
    # How long a submit takes here, on a warm connection: the delays are drawn within it.
    for i in range(6):
        began = time.monotonic()
        job = await service.submit(desc)
        if i:
            result.span = max(result.span, time.monotonic() - began)
        await job.cancel()
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    for i in range(trials):
        began = time.monotonic()
        task = asyncio.ensure_future(service.submit(desc))
        # The cancellation point is what is drawn: the task is cancelled wherever it is.
        loop.call_later(rng.uniform(0.0, result.span), task.cancel)
        try:
            job = await task
        except asyncio.CancelledError:
            result.inside += 1
            if (current := asyncio.current_task()) is not None and current.cancelling():
                raise
        else:
            # The submit ended before its draw: submits got faster (the machine's load
            # fell), so later draws come from a span closer to what a submit takes now.
            took = time.monotonic() - began
            if took < result.span:
                result.span = (result.span + took) / 2
            await job.cancel()
        if on_trial is not None:
            on_trial(i)
    result.left_running = await _settled(mark, SETTLE)
    for intent in await session.journal.intents():
        if intent.op == "submit":
            result.statuses[intent.status] = result.statuses.get(intent.status, 0) + 1
    return result
