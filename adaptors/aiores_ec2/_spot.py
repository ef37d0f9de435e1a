"""Spot interruption notices, read from each instance's metadata service over SSH.

EC2 takes a spot instance back with a two-minute warning, which it posts in the
instance metadata service (IMDSv2) at ``/latest/meta-data/spot/instance-action``: 404
until EC2 has decided, then ``{"action": "terminate" | "stop" | "hibernate",
"time": "2026-01-02T03:04:05Z"}``. ``DescribeInstances`` says nothing of it.

One :class:`Interruptions` per ``ec2://`` endpoint reads that path on every spot
instance (``lifecycle`` ``spot``) that is up (SSH answered), every
``interruption_poll`` seconds: one task for all of them, owned by the session
(``env.spawn``), started when the first spot instance is watched and ending when
none is left; at most :data:`MAX_READS` reads at once, each one short command over
the instance's pooled SSH connection (a channel, no new handshake)::

    token=$(curl -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' $md/latest/api/token)
    curl -H "X-aws-ec2-metadata-token: $token" $md/latest/meta-data/spot/instance-action

A notice turns into the record a revocation has everywhere in aiores (as sim://'s
``revoke`` fault and CloudLab's delete-pending notices): the instance stays ACTIVE
with ``state_detail`` ``"delete-pending"`` and ``extra["max_wait_time"]``, the seconds
left before the notice's time (shrinking in every later record, on the session's
clock), with ``extra["interruption"]`` (the action) and ``extra["interruption_time"]``
(the notice's time, as EC2 wrote it). A pool drains such a machine, requeues its work
and releases it early. Once EC2 has taken the instance, its state reason
``Server.SpotInstanceTermination`` makes it EXPIRED.

A read that fails (no ``curl``, the connection lost, an answer that is no notice) is
logged and tried again at the next poll: the notice lasts two minutes, the poll is
seconds.

The record itself is kept by :class:`Notices`, which :class:`Interruptions` extends
with the reads over SSH and :class:`aiores_ec2._events.EventNotices` with an
EventBridge rule's queue (``interruptions=events``): one record, whatever brought
the notice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiores import AioresError, IncorrectState, NoSuccess, ResourceState
from aiores.adaptor import CommandRunner, ResourceInfo, concurrency, shell

__all__ = [
    "ACTIONS",
    "DEFAULT_METADATA",
    "MAX_READS",
    "Interruptions",
    "Notice",
    "Notices",
    "OneTask",
    "notice_script",
    "parse_notice",
]

log = logging.getLogger("aiores.ec2")

#: The metadata service's address on an EC2 instance.
DEFAULT_METADATA = "http://169.254.169.254"
#: Reads under way at once at most (each is one SSH channel).
MAX_READS = 50
#: Seconds one read may take (curl itself gives up after 5 per request).
READ_TIMEOUT = 20.0
#: What EC2 does at the notice's time.
ACTIONS = frozenset({"terminate", "stop", "hibernate"})
TOKEN_PATH = "/latest/api/token"
NOTICE_PATH = "/latest/meta-data/spot/instance-action"


class Clock(Protocol):
    """What the poller needs of the session's clock (``env.clock``)."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


@dataclass(frozen=True, slots=True)
class Notice:
    """A spot interruption notice.

    Attributes:
        action: ``"terminate"``, ``"stop"`` or ``"hibernate"``.
        time: When EC2 takes the instance (seconds since the epoch).
        text: The time as EC2 wrote it.
    """

    action: str
    time: float
    text: str


def notice_script(metadata: str) -> str:
    """The command that prints the notice path's body, a newline and its HTTP status.

    It exits 3 if the metadata service gave no token (IMDSv2's ``PUT``).
    """
    values = shell.assign({"md": (metadata.rstrip("/"), "metadata address")})
    return (
        values
        + "token=$(curl -sS -f -m 5 -X PUT"
        + " -H 'X-aws-ec2-metadata-token-ttl-seconds: 300'"
        + f' "$md{TOKEN_PATH}") || exit 3\n'
        + "exec curl -sS -m 5 -w '\\n%{http_code}'"
        + ' -H "X-aws-ec2-metadata-token: $token"'
        + f' "$md{NOTICE_PATH}"\n'
    )


def parse_notice(stdout: str) -> Notice | None:
    """The notice in the output of :func:`notice_script`, or None (404: no notice).

    Raises:
        NoSuccess: the output is neither (another status, not a notice's JSON).
    """
    body, _, status = stdout.rstrip("\n").rpartition("\n")
    status = status.strip()
    if status == "404":
        return None
    if status != "200":
        raise NoSuccess(f"the metadata service answered {status or 'nothing'!r}: {body[:200]!r}")
    try:
        data = json.loads(body)
        action = data["action"]
        text = data["time"]
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise NoSuccess(f"not a spot interruption notice: {body[:200]!r}") from None
    if action not in ACTIONS:
        raise NoSuccess(f"not a spot interruption notice (action {action!r})")
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return Notice(action=action, time=when.timestamp(), text=text)


class OneTask:
    """A task of the session's started on demand, never twice at once.

    Args:
        spawn: Runs a task in the session's task group (``env.spawn``).
        fn: What the task runs.
        name: The task's name.
    """

    def __init__(
        self,
        spawn: Callable[[Callable[[], Awaitable[None]], str], object],
        fn: Callable[[], Awaitable[None]],
        name: str,
    ) -> None:
        self._spawn = spawn
        self._fn = fn
        self._name = name
        self.running = False

    def start(self) -> None:
        """Start the task unless it runs (nothing once the session is closing)."""
        if self.running:
            return
        self.running = True
        try:
            self._spawn(self._run, self._name)
        except IncorrectState:  # the session is closing: nobody follows it any more
            self.running = False

    async def _run(self) -> None:
        try:
            await self._fn()
        finally:
            self.running = False


class Notices:
    """The spot instances of one endpoint and the notices given for them: one record.

    What turns a notice into the delete-pending record, whatever brought it (the
    metadata service read over SSH: :class:`Interruptions`; an EventBridge rule's
    queue: :class:`aiores_ec2._events.EventNotices`). A subclass starts what reads
    the notices (:meth:`_start`) and hands each to :meth:`_noticed`.

    Args:
        clock: The session's clock: the seconds left of a notice count down on it.
        publish: Reports a record (the adaptor's ``publish``).
        wall: The time of day (seconds since the epoch) a notice's time is read
            against.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        publish: Callable[[ResourceInfo], None],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._publish = publish
        self._wall = wall
        #: Spot instances followed, by id: their last record.
        self._watched: dict[str, ResourceInfo] = {}
        #: Notices given, by id: the notice and its deadline on the clock.
        self._notices: dict[str, tuple[Notice, float]] = {}

    @property
    def watched(self) -> frozenset[str]:
        """The ids of the instances followed."""
        return frozenset(self._watched)

    @property
    def running(self) -> bool:
        """Whether the task that reads the notices runs."""
        raise NotImplementedError

    def _followable(self, info: ResourceInfo) -> bool:
        return not info.state.final

    def _start(self) -> None:
        """Start reading notices, unless that runs already."""
        raise NotImplementedError

    def watch(self, info: ResourceInfo) -> None:
        """Follow ``info``'s instance from now on (a spot instance that is up), unless it
        already gave a notice or has ended; starts reading notices if nothing does."""
        if info.id in self._notices or not self._followable(info):
            return
        self._watched[info.id] = info
        self._start()

    def update(self, info: ResourceInfo) -> ResourceInfo:
        """``info`` as reported from now on: with its notice, if one came; an ended
        instance is followed no more."""
        if info.state.final:
            self._watched.pop(info.id, None)
        elif info.id in self._watched:
            self._watched[info.id] = info
        return self.apply(info)

    def forget(self, ids: Iterable[str]) -> None:
        """Follow these instances no more (destroyed)."""
        for instance_id in ids:
            self._watched.pop(instance_id, None)

    def notice(self, instance_id: str) -> Notice | None:
        """The notice given for an instance, if any."""
        found = self._notices.get(instance_id)
        return found[0] if found else None

    def apply(self, info: ResourceInfo) -> ResourceInfo:
        """``info`` with its notice: delete-pending and the seconds left, while ACTIVE."""
        found = self._notices.get(info.id)
        if found is None:
            return info
        notice, deadline = found
        extra: dict[str, Any] = {
            **info.extra,
            "interruption": notice.action,
            "interruption_time": notice.text,
        }
        if info.state is not ResourceState.ACTIVE:
            return dataclasses.replace(info, extra=extra)
        extra["max_wait_time"] = round(max(0.0, deadline - self._clock.now()), 3)
        return dataclasses.replace(info, state_detail="delete-pending", extra=extra)

    def _noticed(self, info: ResourceInfo, notice: Notice) -> None:
        left = notice.time - self._wall()
        self._notices[info.id] = (notice, self._clock.now() + left)
        self._watched.pop(info.id, None)
        log.info(
            "ec2: spot instance %s is to be %sd at %s (%.0f s from now)",
            info.id,
            notice.action,
            notice.text,
            left,
        )
        self._publish(self.apply(info))

    def aclose(self) -> None:
        """Follow nothing more (the session cancels the task)."""
        self._watched.clear()


class Interruptions(Notices):
    """Notices read from each spot instance's metadata service over SSH.

    Args:
        metadata: The metadata service's address, as the instance reaches it.
        interval: Seconds between two reads of one instance.
        clock: The session's clock: the polls sleep on it, and the seconds left of a
            notice count down on it.
        runner: The session's command runner for an access URL.
        publish: Reports a record (the adaptor's ``publish``).
        spawn: Runs the poll task in the session's task group (``env.spawn``).
        wall: The time of day (seconds since the epoch) a notice's time is read
            against.
        reads: Reads under way at once at most.
    """

    def __init__(
        self,
        *,
        metadata: str,
        interval: float,
        clock: Clock,
        runner: Callable[[str], Awaitable[CommandRunner]],
        publish: Callable[[ResourceInfo], None],
        spawn: Callable[[Callable[[], Awaitable[None]], str], object],
        wall: Callable[[], float] = time.time,
        reads: int = MAX_READS,
    ) -> None:
        super().__init__(clock=clock, publish=publish, wall=wall)
        self._task = OneTask(spawn, self._loop, "aiores-ec2 spot notices")
        self.script = notice_script(metadata)
        self.interval = interval
        self._runner = runner
        self._reads = reads
        self.polls = 0

    @property
    def running(self) -> bool:
        """Whether the poll task runs."""
        return self._task.running

    def _followable(self, info: ResourceInfo) -> bool:
        return not info.state.final and info.access is not None

    def _start(self) -> None:
        self._task.start()

    async def _loop(self) -> None:
        while self._watched:
            await self.poll()
            if not self._watched:  # every one gave its notice, ended or was destroyed
                return
            await self._clock.sleep(self.interval)

    async def poll(self) -> Mapping[str, Notice | Exception | None]:
        """Read every watched instance once (at most ``reads`` at once): what each gave."""
        self.polls += 1
        gate = asyncio.Semaphore(self._reads)
        infos = list(self._watched.values())

        async def read(info: ResourceInfo) -> Notice | None:
            async with gate:
                assert info.access is not None
                runner = await self._runner(info.access)
                result = await runner.run(self.script, timeout=READ_TIMEOUT)
            if result.exit_status != 0:
                raise NoSuccess(
                    f"reading the metadata service failed (exit {result.exit_status}): "
                    f"{result.stderr[-300:]!r}"
                )
            notice = parse_notice(result.stdout)
            if notice is not None and info.id in self._watched:
                self._noticed(self._watched[info.id], notice)
            return notice

        outcomes = await concurrency.settle(read(info) for info in infos)
        for info, outcome in zip(infos, outcomes, strict=True):
            if isinstance(outcome, AioresError | OSError):
                log.debug("ec2: no spot notice read from %s: %r", info.id, outcome)
            elif isinstance(outcome, Exception):
                log.warning("ec2: reading the spot notice of %s failed: %r", info.id, outcome)
        return {info.id: outcome for info, outcome in zip(infos, outcomes, strict=True)}
