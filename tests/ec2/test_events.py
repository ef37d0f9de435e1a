"""ec2:// spot interruption notices by EventBridge: a rule, an SQS queue, one long poll.

Against moto in server mode, which delivers ``put_events`` entries matching a rule's
pattern to the rule's SQS target. The pool test also uses the stand-in for
cloud-init and sshd of test_spot (commands run as local processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import pytest

import aiores
from aiores import ComputeDescription, ResourceState
from aiores.adaptor import URL, ResourceInfo
from aiores.testing import FakeClock
from aiores_ec2 import parse_options
from aiores_ec2._aws import Api, Target, open_api
from aiores_ec2._events import (
    DETAIL_TYPE,
    EVENT_BUCKETS,
    PREFIX,
    SQS_BUCKETS,
    EventNotices,
    EventQueue,
    parse_event,
    resource_name,
)
from aiores_ec2._spot import Notice
from aiores_ec2.testing import ACCESS_KEY, SECRET_KEY, MotoServer

from .conftest import IMAGE, REGION, STEP, alive, aws_context, ec2_url, raw_client
from .test_spot import _booting

WALL = 2_000_000_000.0


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _event(instance_id: str, at: float, action: str = "terminate") -> dict[str, Any]:
    return {
        "Source": "aws.ec2",
        "DetailType": DETAIL_TYPE,
        "Detail": json.dumps({"instance-id": instance_id, "instance-action": action}),
        "Time": _iso(at),
    }


async def _put(moto: MotoServer, *entries: dict[str, Any]) -> None:
    async with raw_client(moto, "events") as events:
        answer = await events.put_events(Entries=list(entries))
    assert answer["FailedEntryCount"] == 0


async def _left(moto: MotoServer) -> tuple[list[str], list[str], list[Any]]:
    """(aiores rules, their targets, aiores queues) at the server."""
    async with raw_client(moto, "events") as events, raw_client(moto, "sqs") as sqs:
        rules = [r["Name"] for r in (await events.list_rules(NamePrefix=PREFIX))["Rules"]]
        targets = [
            t["Arn"]
            for name in rules
            for t in (await events.list_targets_by_rule(Rule=name))["Targets"]
        ]
        queues = (await sqs.list_queues(QueueNamePrefix=PREFIX)).get("QueueUrls", [])
    return rules, targets, queues


async def _until_made(moto: MotoServer) -> None:
    """Until a rule with its queue as target exists (moto cannot tell us: asked again)."""
    async with asyncio.timeout(STEP):
        while True:
            rules, targets, queues = await _left(moto)
            if rules and targets and queues:
                return
            await asyncio.sleep(0.05)


def _api(moto: MotoServer, session: aiores.Session, service: str) -> Api:
    t = Target(service, REGION, moto.url, ACCESS_KEY, SECRET_KEY)
    buckets = EVENT_BUCKETS if service == "events" else SQS_BUCKETS
    family = next(iter(buckets))
    return open_api(session, t, buckets=buckets, cost=lambda a: {family: 1}, enabled=True)


def _spot(instance_id: str) -> ResourceInfo:
    return ResourceInfo(
        id=instance_id,
        state=ResourceState.ACTIVE,
        state_detail="running",
        rtype="compute",
        extra={"lifecycle": "spot"},
    )


def _notices(
    moto: MotoServer,
    session: aiores.Session,
    clock: FakeClock,
    published: list[ResourceInfo],
    tasks: list[asyncio.Task[None]],
    **kwargs: Any,
) -> EventNotices:
    """One manager's notices (publishing to ``published``), on a queue of their own."""
    queue = EventQueue(
        events=kwargs.pop("events", None) or _api(moto, session, "events"),
        sqs=_api(moto, session, "sqs"),
        name=resource_name(session.id, "test"),
        tags={"aiores:managed": "1", "aiores:session": session.id},
        cleanups=session.cleanups,
        clock=clock,
        spawn=kwargs.pop("spawn", None)
        or (lambda fn, name: tasks.append(asyncio.ensure_future(fn()))),
        **kwargs,
    )
    return EventNotices(queue, clock=clock, publish=published.append, wall=lambda: WALL)


# -- the message, the options ----------------------------------------------------------
def test_parse_event() -> None:
    body = {
        "version": "0",
        "source": "aws.ec2",
        "detail-type": DETAIL_TYPE,
        "time": "2030-01-02T03:04:05Z",
        "region": "us-east-1",
        "detail": {"instance-id": "i-0123", "instance-action": "stop"},
    }
    assert parse_event(json.dumps(body)) == (
        "i-0123",
        Notice("stop", 1893553445.0 + 120, "2030-01-02T03:06:05Z"),
    )
    bad: list[Any] = [
        "not json",
        "[1, 2]",
        {**body, "source": "aws.s3"},
        {**body, "detail-type": "EC2 Instance State-change Notification"},
        {k: v for k, v in body.items() if k != "detail"},
        {**body, "detail": {"instance-action": "terminate"}},
        {**body, "detail": {"instance-id": "i-1", "instance-action": "explode"}},
        {**body, "detail": {"instance-id": 7, "instance-action": "terminate"}},
        {k: v for k, v in body.items() if k != "time"},
        {**body, "time": "soon"},
    ]
    for case in bad:
        text = case if isinstance(case, str) else json.dumps(case)
        with pytest.raises(aiores.NoSuccess):
            parse_event(text)


def test_the_events_option() -> None:
    assert parse_options(URL.parse("ec2://us-east-1?interruptions=events")).interruptions == (
        "events"
    )
    with pytest.raises(aiores.IncorrectURL, match="'metadata', 'events' or 'off'"):
        parse_options(URL.parse("ec2://us-east-1?interruptions=eventbridge"))
    name = resource_name("s-0123456789ab", "ec2://us-east-1?interruptions=events")
    assert name.startswith("aiores-spot-s-0123456789ab-")
    assert len(name) <= 64  # a rule's name; a queue's may have 80


# -- the queue, on the session's clock ---------------------------------------------------
@pytest.mark.asyncio
async def test_a_notice_event_turns_the_record_delete_pending(
    moto: MotoServer, session: aiores.Session, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(1000.0)
    published: list[ResourceInfo] = []
    loops: list[object] = []  # the loop is not run: each receive is made by hand
    notices = _notices(
        moto, session, clock, published, [], wait=1, spawn=lambda fn, name: loops.append(fn)
    )
    async with asyncio.timeout(STEP):
        await notices.queue.setup()
    rules, targets, queues = await _left(moto)
    assert rules == [notices.queue.name]
    assert len(targets) == len(queues) == 1
    assert notices.queue.queue_url == queues[0]
    notices.watch(_spot("i-0000000000000aaaa"))
    assert len(loops) == 1
    async with raw_client(moto, "sqs") as sqs:
        url = queues[0]
        tags = (await sqs.list_queue_tags(QueueUrl=url))["Tags"]
        assert tags == {"aiores:managed": "1", "aiores:session": session.id}
        policy = json.loads(
            (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"]))["Attributes"][
                "Policy"
            ]
        )
        (statement,) = policy["Statement"]
        assert statement["Principal"] == {"Service": "events.amazonaws.com"}
        assert statement["Action"] == "sqs:SendMessage"
        # What is no notice of ours: another instance's, a stranger's messages.
        await _put(moto, _event("i-0000000000000bbbb", WALL))
        await sqs.send_message(QueueUrl=url, MessageBody="not json")
        await sqs.send_message(QueueUrl=url, MessageBody='{"detail": {}}')
    await _put(moto, _event("i-0000000000000aaaa", WALL))  # EC2 acts at WALL + 120
    with caplog.at_level(logging.WARNING, logger="aiores.ec2"):
        async with asyncio.timeout(STEP):
            while notices.queue.received < 4:
                await notices.queue.receive()
    assert notices.queue.dropped == 3
    assert sum("dropped a message" in r.getMessage() for r in caplog.records) == 2
    (record,) = published
    assert record.id == "i-0000000000000aaaa"
    assert record.state is ResourceState.ACTIVE
    assert record.state_detail == "delete-pending"
    assert record.extra["max_wait_time"] == 120.0
    assert record.extra["interruption"] == "terminate"
    assert record.extra["interruption_time"] == _iso(WALL + 120)
    clock.advance(45.0)
    assert notices.update(_spot("i-0000000000000aaaa")).extra["max_wait_time"] == 75.0
    assert notices.watched == frozenset()
    # Every message received was deleted.
    async with raw_client(moto, "sqs") as sqs:
        attrs = (
            await sqs.get_queue_attributes(
                QueueUrl=notices.queue.queue_url,
                AttributeNames=[
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesNotVisible",
                ],
            )
        )["Attributes"]
    assert attrs == {
        "ApproximateNumberOfMessages": "0",
        "ApproximateNumberOfMessagesNotVisible": "0",
    }
    await notices.queue.remove()
    assert await _left(moto) == ([], [], [])
    await notices.queue.remove()  # what is gone is skipped


class _Stall:
    """The EventBridge calls, stalling once ``action`` has been answered, until released."""

    def __init__(self, inner: Api, action: str) -> None:
        self.inner = inner
        self.action = action
        self.reached = asyncio.Event()
        self.release = asyncio.Event()
        #: Calls made while ``action`` stalled.
        self.meanwhile: list[str] = []

    async def open(self) -> None:
        await self.inner.open()

    async def call(self, action: str, **params: Any) -> dict[str, Any]:
        if self.reached.is_set() and not self.release.is_set():
            self.meanwhile.append(action)
            self.release.set()  # never stall a removal that did not wait
        answer = await self.inner.call(action, **params)
        if action == self.action and not self.reached.is_set():
            self.reached.set()
            await self.release.wait()
        return answer


@pytest.mark.asyncio
@pytest.mark.parametrize("where", ["setup", "long poll"])
async def test_cancelling_the_loop_leaves_nothing(
    moto: MotoServer, session: aiores.Session, where: str
) -> None:
    tasks: list[asyncio.Task[None]] = []
    stall = _Stall(_api(moto, session, "events"), "PutRule" if where == "setup" else "-")
    notices = _notices(moto, session, FakeClock(), [], tasks, events=stall)
    notices.watch(_spot("i-0000000000000aaaa"))
    async with asyncio.timeout(STEP):
        if where == "setup":
            await stall.reached.wait()  # the rule is made, the queue not yet
            assert (await _left(moto))[0] == [notices.queue.name]
        else:
            await _until_made(moto)
    tasks[0].cancel()
    if where == "setup":
        # Time for a removal that would not wait for the setup to show itself
        # (no result depends on this pause, only how surely such a bug is seen).
        await asyncio.sleep(0.3)
        assert stall.meanwhile == []  # the removal waits for the setup under way
    stall.release.set()  # the answer arrives: the setup goes on to its end, then removal
    with pytest.raises(asyncio.CancelledError):
        await tasks[0]
    assert not notices.running
    assert await _left(moto) == ([], [], [])


# -- a manager, a pool, a session --------------------------------------------------------
@pytest.mark.asyncio
async def test_a_pool_drains_a_spot_machine_on_an_event_and_requeues_its_work(
    moto: MotoServer,
) -> None:
    async with (
        aiores.Session(contexts=[aws_context()]) as session,
        _booting(moto) as served,
    ):
        url = ec2_url(moto, market="spot", interruptions="events")
        desc = ComputeDescription(image=IMAGE, template="t3.micro")
        events: list[aiores.PoolEvent] = []
        ready = asyncio.Event()
        async with session.pool(url, desc, min=0, max=1, tick=0.2) as pool:

            async def follow() -> None:
                async for event in pool.events():
                    events.append(event)
                    if event.kind == "ready":
                        ready.set()

            follower = asyncio.ensure_future(follow())
            work = asyncio.ensure_future(pool.run("echo start; sleep 5; echo done"))
            async with asyncio.timeout(STEP):
                await ready.wait()  # the first machine is up: the work goes there
                await _until_made(moto)  # and the manager's rule and queue are made
            first = set(served)
            (instance_id,) = first
            # An event for another instance changes nothing; ours, sent 117 s after
            # the event's time, leaves 3 s.
            await _put(moto, _event("i-0000000000000ffff", time.time()))
            await _put(moto, _event(instance_id, time.time() - 117))
            async with asyncio.timeout(STEP * 2):
                result = await work
            assert result.exit_status == 0
            assert result.stdout == "start\ndone\n"
            assert pool.stats().revoked == 1
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
        kinds = [e.kind for e in events]
        assert "requeue" in kinds
        (revoked,) = [e for e in events if e.kind == "revoked"]
        assert revoked.resource is not None
        assert revoked.resource.native_id == instance_id
        assert 0 < float(revoked.detail) <= 3
        releases = [e for e in events if e.kind == "release"]
        assert releases[0].resource is revoked.resource
        assert releases[0].detail == "drained"
        assert len(served) == 2
        assert (await _left(moto))[0]  # the rule lives as long as the session
    # Closing the session removed the target, the rule and the queue.
    assert await _left(moto) == ([], [], [])
    assert await alive(moto) == []


@pytest.mark.asyncio
async def test_no_spot_machine_no_rule(moto: MotoServer) -> None:
    async with aiores.Session(contexts=[aws_context()]) as session:
        mgr = session.manager(ec2_url(moto, interruptions="events"))
        vm = await mgr.acquire(ComputeDescription(image=IMAGE, ready=None))
        async with asyncio.timeout(STEP):
            await vm.wait(ResourceState.ACTIVE)
        await mgr.destroy([vm])
    assert await _left(moto) == ([], [], [])


@pytest.mark.asyncio
async def test_the_managers_of_a_session_share_one_rule_and_queue(moto: MotoServer) -> None:
    async with aiores.Session(contexts=[aws_context()]) as session:
        made: list[tuple[aiores.Manager, aiores.Resource]] = []
        for template in ("t3.micro", "t3.small"):  # two URLs: two managers
            url = ec2_url(moto, market="spot", interruptions="events", template=template)
            mgr = session.manager(url)
            vm = await mgr.acquire(ComputeDescription(image=IMAGE, ready=None))
            async with asyncio.timeout(STEP):
                await vm.wait(ResourceState.ACTIVE)  # followed from now on
            made.append((mgr, vm))
        await _until_made(moto)
        rules, targets, queues = await _left(moto)
        assert (len(rules), len(targets), len(queues)) == (1, 1, 1)
        assert rules[0].startswith(f"{PREFIX}{session.id}-")
        for manager, machine in made:
            await manager.destroy([machine])
    assert await _left(moto) == ([], [], [])


@pytest.mark.asyncio
async def test_the_loop_outlives_bad_messages_and_a_queue_removed_from_outside(
    moto: MotoServer, session: aiores.Session, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(1000.0)
    published: list[ResourceInfo] = []
    got = asyncio.Condition()

    async def note(info: ResourceInfo) -> None:
        async with got:
            published.append(info)
            got.notify_all()

    tasks: list[asyncio.Task[None]] = []
    queue = _notices(moto, session, clock, [], tasks, wait=1).queue
    # Two managers of the session (one endpoint and region) share the queue: each
    # is handed the notices of its own instances.
    notices, other = (
        EventNotices(
            queue,
            clock=clock,
            publish=lambda info: tasks.append(asyncio.ensure_future(note(info))),
            wall=lambda: WALL,
        )
        for _ in range(2)
    )
    notices.watch(_spot("i-0000000000000aaaa"))
    other.watch(_spot("i-0000000000000cccc"))
    assert len(tasks) == 1  # one loop for both
    try:
        async with asyncio.timeout(STEP):
            await _until_made(moto)
        with caplog.at_level(logging.WARNING, logger="aiores.ec2"):
            async with raw_client(moto, "sqs") as sqs:
                assert notices.queue.queue_url is not None
                await sqs.send_message(QueueUrl=notices.queue.queue_url, MessageBody="not json")
                await sqs.send_message(QueueUrl=notices.queue.queue_url, MessageBody="[]")
            await _put(moto, _event("i-0000000000000aaaa", WALL))
            async with got, asyncio.timeout(STEP):
                await got.wait_for(lambda: len(published) == 1)
            # moto delivers in order: the bad ones came first, and changed nothing.
            assert notices.queue.dropped == 2
            assert sum("dropped a message" in r.getMessage() for r in caplog.records) == 2
            # Removed from outside: the next receive fails, the loop waits (on the
            # clock) and makes them again.
            async with raw_client(moto, "sqs") as sqs:
                await sqs.delete_queue(QueueUrl=notices.queue.queue_url)
            async with asyncio.timeout(STEP):
                await clock.wait_for_sleepers()
            assert any("spot notices by events" in r.getMessage() for r in caplog.records)
        clock.advance(1.0)
        async with asyncio.timeout(STEP):
            await _until_made(moto)
            await _put(moto, _event("i-0000000000000cccc", WALL - 60))
            async with got:
                await got.wait_for(lambda: len(published) == 2)
        assert [(r.id, r.extra["max_wait_time"]) for r in published] == [
            ("i-0000000000000aaaa", 120.0),
            ("i-0000000000000cccc", 60.0),
        ]
        assert notices.notice("i-0000000000000cccc") is None
        assert other.notice("i-0000000000000cccc") is not None
        assert notices.running
        assert other.running
    finally:
        tasks[0].cancel()
        with pytest.raises(asyncio.CancelledError):
            await tasks[0]
    assert await _left(moto) == ([], [], [])


@pytest.mark.asyncio
async def test_a_refused_setup_is_logged_and_tried_again_after_a_pause(
    moto: MotoServer, session: aiores.Session, caplog: pytest.LogCaptureFixture
) -> None:
    await moto.set_faults(error={"PutRule": [2, 400, "AccessDeniedException"]})
    clock = FakeClock()
    tasks: list[asyncio.Task[None]] = []
    notices = _notices(moto, session, clock, [], tasks, wait=1)
    try:
        with caplog.at_level(logging.WARNING, logger="aiores.ec2"):
            notices.watch(_spot("i-0000000000000aaaa"))
            async with asyncio.timeout(STEP):
                await clock.wait_for_sleepers()
                assert clock.next_deadline() == 1.0  # the first pause
                clock.advance(1.0)
                await clock.wait_for_sleepers()
                assert clock.next_deadline() == 3.0  # doubled
        refused = [r.getMessage() for r in caplog.records if "AccessDenied" in r.getMessage()]
        assert len(refused) == 2
        assert all("spot notices by events" in m for m in refused)
        assert notices.queue.queue_url is None
        assert await _left(moto) == ([], [], [])
        clock.advance(2.0)  # granted now: made at the third try
        await _until_made(moto)
        calls = await moto.calls()
        assert calls["PutRule"] == 3
        assert calls["CreateQueue"] == 1
    finally:
        tasks[0].cancel()
        with pytest.raises(asyncio.CancelledError):
            await tasks[0]
    assert await _left(moto) == ([], [], [])
