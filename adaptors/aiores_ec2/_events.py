"""Spot interruption notices from EventBridge: one rule, one queue, one long poll per endpoint.

EC2 also announces a spot interruption as an EventBridge event (source ``aws.ec2``,
detail-type ``EC2 Spot Instance Interruption Warning``, detail ``{"instance-id":
..., "instance-action": "terminate" | "stop" | "hibernate"}``), two minutes before it
takes the instance. With ``interruptions=events``, when an ``ec2://`` manager first
follows a spot instance, the session makes (once per endpoint, region and
credentials, for every manager there: an :class:`EventQueue`):

- an SQS queue ``aiores-spot-<session>-<hash of endpoint, region, credentials>``,
  tagged ``aiores:managed=1`` and ``aiores:session``, whose policy lets
  ``events.amazonaws.com`` send to it from that rule alone, keeping a message five
  minutes at most (a notice older than that is past its deadline anyway);
- an EventBridge rule of the same name and tags on the default bus, whose pattern is
  that source and detail-type, with the queue as its one target.

One task (owned by the session, ``env.spawn``, as the metadata poller) then long-polls
the queue (``ReceiveMessage``, up to 10 messages, ``WaitTimeSeconds`` 20) for as long
as the session lives. Each message naming an instance a manager follows becomes
the very record a notice read from the metadata service makes (:class:`Notices`:
delete-pending, ``max_wait_time`` counting down on the session's clock); a message
for another instance (another program's, in the same account and region) is ignored;
a message that is no such event (not JSON, fields missing) is logged and dropped.
Every message received is deleted. The deadline is the event's ``time`` plus two
minutes (EC2's warning time), as the time of day; ``extra["interruption_time"]``
names that moment.

When the session closes (or the task is cancelled) the target, the rule and the
queue are removed, by name, in a shielded and bounded cleanup of the session. A
setup under way is not cut off mid-call (a call whose answer has not arrived may
still be carried out): it runs in a task of its own, and the removal waits for it
before removing what it made. A program killed outright
leaves them behind: the journal does not record them, so ``aiores gc`` does not
remove them; they are found by their name prefix ``aiores-spot-`` (which names the
session) and tags, and cost nothing while nobody reads the queue.

Costs: one request per 20 s per endpoint and region while the session lives (and one per batch
of messages), whatever the number of spot instances; nothing runs on the instances
and no SSH connection is needed. The metadata path instead makes one SSH command per
spot instance every ``interruption_poll`` seconds.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from aiores import AioresError, NoSuccess
from aiores.adaptor import Bucket, ResourceInfo, concurrency

from ._aws import error_code
from ._spot import ACTIONS, Clock, Notice, Notices, OneTask

__all__ = [
    "DETAIL_TYPE",
    "EVENT_BUCKETS",
    "PREFIX",
    "SQS_BUCKETS",
    "WARNING",
    "EventNotices",
    "EventQueue",
    "event_pattern",
    "parse_event",
    "resource_name",
]

log = logging.getLogger("aiores.ec2")

SOURCE = "aws.ec2"
DETAIL_TYPE = "EC2 Spot Instance Interruption Warning"
#: Seconds between a spot interruption warning and the interruption.
WARNING = 120.0
#: The name prefix of the rules and queues aiores makes.
PREFIX = "aiores-spot-"
#: The target's id on the rule.
TARGET_ID = "aiores-queue"
#: Seconds one ReceiveMessage waits for a message (SQS's most).
LONG_POLL = 20
#: Seconds an unread message is kept (SQS's least is 60).
RETENTION = 300
#: Seconds before a failed setup or receive is tried again (doubling up to ``MAX_BACKOFF``).
BACKOFF = 1.0
MAX_BACKOFF = 60.0
#: EventBridge's control-plane calls (PutRule, PutTargets...) and SQS's calls.
EVENT_BUCKETS: Mapping[str, Bucket] = {"events": Bucket(capacity=50, refill=10)}
SQS_BUCKETS: Mapping[str, Bucket] = {"sqs": Bucket(capacity=1000, refill=500)}
#: Error codes that mean "already gone" when removing.
_GONE = frozenset(
    {
        "ResourceNotFoundException",
        "AWS.SimpleQueueService.NonExistentQueue",
        "QueueDoesNotExist",
        "NonExistentQueue",
    }
)


class Calls(Protocol):
    """What the notices need of an :class:`aiores_ec2.Api`."""

    async def open(self) -> None: ...

    async def call(self, action: str, **params: Any) -> dict[str, Any]: ...


class Cleanup(Protocol):
    """What the notices need of the session's cleanups (``env.cleanups``)."""

    async def run(
        self, fn: Callable[[], Awaitable[None]], *, what: str, timeout: float | None = None
    ) -> None: ...


def resource_name(session_id: str, where: str) -> str:
    """The name of the rule and queue of one session at ``where`` (endpoint, region and
    credentials, as text)."""
    digest = hashlib.sha256(where.encode()).hexdigest()[:8]
    return f"{PREFIX}{session_id}-{digest}"


def event_pattern() -> str:
    """The rule's event pattern: spot interruption warnings of EC2."""
    return json.dumps({"source": [SOURCE], "detail-type": [DETAIL_TYPE]})


def _iso(epoch: float) -> str:
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_event(body: str) -> tuple[str, Notice]:
    """The instance id and notice of a message the rule delivered.

    The notice's time is the event's time plus :data:`WARNING`.

    Raises:
        NoSuccess: the body is no spot interruption warning (not JSON, another
            source or detail-type, a field missing or of the wrong kind).
    """
    try:
        event = json.loads(body)
    except ValueError:
        raise NoSuccess(f"not JSON: {body[:200]!r}") from None
    if not isinstance(event, dict):
        raise NoSuccess(f"not an event: {body[:200]!r}")
    if event.get("source") != SOURCE or event.get("detail-type") != DETAIL_TYPE:
        raise NoSuccess(
            f"not a spot interruption warning: {event.get('source')!r} {event.get('detail-type')!r}"
        )
    detail = event.get("detail")
    if not isinstance(detail, dict):
        raise NoSuccess("the event has no detail")
    instance_id = detail.get("instance-id")
    action = detail.get("instance-action")
    text = event.get("time")
    if not isinstance(instance_id, str) or not instance_id.startswith("i-"):
        raise NoSuccess(f"the event names no instance: {instance_id!r}")
    if action not in ACTIONS:
        raise NoSuccess(f"the event names no action EC2 takes: {action!r}")
    if not isinstance(text, str):
        raise NoSuccess(f"the event has no time: {text!r}")
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise NoSuccess(f"the event's time is no time: {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    at = when.timestamp() + WARNING
    return instance_id, Notice(action=str(action), time=at, text=_iso(at))


def _gone(exc: AioresError) -> bool:
    return (error_code(exc.__cause__ or exc) or "") in _GONE


class EventNotices(Notices):
    """The notices of one manager's spot instances, received through an :class:`EventQueue`.

    Args:
        queue: The session's queue for the endpoint, region and credentials (shared
            by every manager of the session there).
        clock: The session's clock: the seconds left of a notice count down on it.
        publish: Reports a record (the adaptor's ``publish``).
        wall: The time of day (seconds since the epoch) a notice's time is read
            against.
    """

    def __init__(
        self,
        queue: EventQueue,
        *,
        clock: Clock,
        publish: Callable[[ResourceInfo], None],
        wall: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(clock=clock, publish=publish, wall=wall)
        self.queue = queue

    @property
    def running(self) -> bool:
        """Whether the queue's task runs."""
        return self.queue.running

    def _start(self) -> None:
        self.queue.follow(self)

    def take(self, instance_id: str, notice: Notice) -> bool:
        """Record ``notice`` if the instance is one followed here; whether it was."""
        info = self._watched.get(instance_id)
        if info is None:
            return False
        self._noticed(info, notice)
        return True


class EventQueue:
    """An EventBridge rule and the SQS queue it feeds, read by one task for a session.

    One per session and endpoint, region and credentials, shared by the
    :class:`EventNotices` of every manager there (see the module docstring).

    Args:
        events: EventBridge calls (the session's shared client for the endpoint).
        sqs: SQS calls.
        name: The rule's and the queue's name (:func:`resource_name`).
        tags: Their tags.
        cleanups: The session's cleanups: the removal runs there, shielded and bounded.
        clock: The session's clock: a failed call is tried again after a pause on it.
        spawn: Runs the task in the session's task group (``env.spawn``).
        wait: Seconds one ReceiveMessage waits (1 to 20).
    """

    def __init__(
        self,
        *,
        events: Calls,
        sqs: Calls,
        name: str,
        tags: Mapping[str, str],
        cleanups: Cleanup,
        clock: Clock,
        spawn: Callable[[Callable[[], Awaitable[None]], str], object],
        wait: int = LONG_POLL,
    ) -> None:
        self._events = events
        self._sqs = sqs
        self.name = name
        self._tags = dict(tags)
        self._cleanups = cleanups
        self._clock = clock
        self._task = OneTask(spawn, self._loop, "aiores-ec2 spot notices (events)")
        self.wait = wait
        self.queue_url: str | None = None
        #: The setup under way: cancelling the loop leaves it to finish (its calls
        #: may have been carried out), and the removal waits for it first.
        self._setups = concurrency.InFlight[str]("aiores-ec2 spot notice setup")
        self._followers: list[EventNotices] = []
        #: Messages received in all, and those dropped as no notice of ours.
        self.received = 0
        self.dropped = 0

    @property
    def running(self) -> bool:
        """Whether the task runs."""
        return self._task.running

    def follow(self, notices: EventNotices) -> None:
        """Hand ``notices`` the notices of the instances it follows; starts the task."""
        if notices not in self._followers:
            self._followers.append(notices)
        self._task.start()

    # -- setup and removal -----------------------------------------------------------------
    async def setup(self) -> str:
        """Make the rule, the queue and the target (again, if they exist); the queue's URL.

        Raises:
            AioresError: a call was refused (no permission for EventBridge or SQS...).
        """
        await self._events.open()
        await self._sqs.open()
        rule = await self._events.call(
            "PutRule",
            Name=self.name,
            EventPattern=event_pattern(),
            State="ENABLED",
            Description="aiores: EC2 spot interruption warnings for one session",
            Tags=[{"Key": k, "Value": v} for k, v in sorted(self._tags.items())],
        )
        rule_arn = str(rule["RuleArn"])
        queue = await self._sqs.call(
            "CreateQueue",
            QueueName=self.name,
            Attributes={"MessageRetentionPeriod": str(RETENTION)},
            tags=self._tags,
        )
        queue_url = str(queue["QueueUrl"])
        attrs = await self._sqs.call(
            "GetQueueAttributes", QueueUrl=queue_url, AttributeNames=["QueueArn"]
        )
        queue_arn = str(attrs["Attributes"]["QueueArn"])
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "aiores-spot-notices",
                    "Effect": "Allow",
                    "Principal": {"Service": "events.amazonaws.com"},
                    "Action": "sqs:SendMessage",
                    "Resource": queue_arn,
                    "Condition": {"ArnEquals": {"aws:SourceArn": rule_arn}},
                }
            ],
        }
        await self._sqs.call(
            "SetQueueAttributes", QueueUrl=queue_url, Attributes={"Policy": json.dumps(policy)}
        )
        answer = await self._events.call(
            "PutTargets", Rule=self.name, Targets=[{"Id": TARGET_ID, "Arn": queue_arn}]
        )
        if answer.get("FailedEntryCount"):
            raise NoSuccess(f"events PutTargets: {answer.get('FailedEntries')!r}")
        self.queue_url = queue_url
        log.info("ec2: spot notices arrive by EventBridge rule and SQS queue %s", self.name)
        return queue_url

    async def remove(self) -> None:
        """Remove the target, the rule and the queue, by name; what is gone is skipped.

        Raises:
            AioresError: a call was refused (the rest is still tried first).
        """
        await self._setups.take(self.name)  # a setup under way ends first
        failures: list[AioresError] = []

        async def step(service: Calls, action: str, **params: Any) -> dict[str, Any]:
            try:
                return await service.call(action, **params)
            except AioresError as exc:
                if not _gone(exc):
                    failures.append(exc)
                return {}

        await self._events.open()
        await self._sqs.open()
        await step(self._events, "RemoveTargets", Rule=self.name, Ids=[TARGET_ID])
        await step(self._events, "DeleteRule", Name=self.name)
        url = self.queue_url
        if url is None:
            url = (await step(self._sqs, "GetQueueUrl", QueueName=self.name)).get("QueueUrl")
        if url is not None:
            await step(self._sqs, "DeleteQueue", QueueUrl=url)
        self.queue_url = None
        if failures:
            raise failures[0]

    # -- the loop -------------------------------------------------------------------------
    def handle(self, messages: Sequence[Mapping[str, Any]]) -> list[str]:
        """Turn the messages into notices; the receipt handles of them all (to delete).

        Never raises: a message that is no notice is logged and dropped.
        """
        receipts: list[str] = []
        for message in messages:
            self.received += 1
            receipt = message.get("ReceiptHandle")
            if isinstance(receipt, str):
                receipts.append(receipt)
            try:
                instance_id, notice = parse_event(str(message.get("Body", "")))
            except NoSuccess as exc:
                self.dropped += 1
                log.warning("ec2: dropped a message of queue %s: %s", self.name, exc)
                continue
            if not any(notices.take(instance_id, notice) for notices in self._followers):
                self.dropped += 1
                log.debug("ec2: spot notice for %s, not an instance followed here", instance_id)
        return receipts

    async def receive(self) -> None:
        """One long poll of the queue; handles and deletes what it brings."""
        assert self.queue_url is not None
        answer = await self._sqs.call(
            "ReceiveMessage",
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=self.wait,
        )
        receipts = self.handle(answer.get("Messages", []))
        if receipts:
            await self._sqs.call(
                "DeleteMessageBatch",
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(receipts)],
            )

    async def _loop(self) -> None:
        pause = BACKOFF
        try:
            while True:
                try:
                    if self.queue_url is None:
                        await self._setups.run(self.name, self.setup())
                    await self.receive()
                    pause = BACKOFF
                    continue
                except AioresError as exc:
                    if _gone(exc):  # the queue was removed from outside: make it again
                        self.queue_url = None
                    log.warning("ec2: spot notices by events: %s (again in %.0f s)", exc, pause)
                await self._clock.sleep(pause)
                pause = min(pause * 2, MAX_BACKOFF)
        finally:
            await self._cleanups.run(
                self.remove, what=f"removing the spot notice rule and queue {self.name}"
            )
