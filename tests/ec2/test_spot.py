"""ec2:// spot interruption notices: IMDSv2 read over SSH, a delete-pending countdown.

Against moto (the instances), the stand-in for cloud-init and sshd (fake_instance:
commands run as local processes, so the real ``curl`` reads) and a real IMDSv2 server
on loopback (imds.py) named by the URL's ``metadata`` option.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

import aiores
from aiores import ComputeDescription, ResourceState
from aiores.adaptor import URL, ResourceInfo
from aiores.testing import FakeClock
from aiores_ec2 import MANAGED_KEY, parse_options
from aiores_ec2._spot import Interruptions, Notice, notice_script, parse_notice
from aiores_ec2.testing import MotoServer

from .conftest import IMAGE, STEP, alive, cloud_config, ec2_url, raw_client
from .fake_instance import FakeInstance, serve_instance
from .imds import Imds


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


@contextlib.asynccontextmanager
async def _imds() -> AsyncIterator[Imds]:
    async with Imds() as imds:
        yield imds


async def _serve(server: MotoServer, instance_id: str, address: str) -> FakeInstance:
    async with raw_client(server) as client:
        attr = await client.describe_instance_attribute(
            InstanceId=instance_id, Attribute="userData"
        )
    _, config = cloud_config(attr["UserData"]["Value"])
    authorized = (aiores.state_dir() / MANAGED_KEY).with_suffix(".pub").read_text()
    return await serve_instance(address, config, authorized)


@contextlib.asynccontextmanager
async def _booting(server: MotoServer) -> AsyncIterator[dict[str, FakeInstance]]:
    """Stands in for cloud-init: serves SSH on every instance of ``server`` that runs."""
    served: dict[str, FakeInstance] = {}

    async def boot() -> None:
        while True:
            for inst in await alive(server):
                iid = inst["InstanceId"]
                if iid not in served and inst.get("PublicIpAddress"):
                    served[iid] = await _serve(server, iid, inst["PublicIpAddress"])
            await asyncio.sleep(0.1)  # the next instance's boot, not a wait for a result

    task = asyncio.ensure_future(boot())
    try:
        yield served
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for instance in served.values():
            instance.close()
            await instance.wait_closed()


# -- the notice, the command, the options ------------------------------------------------
def test_parse_notice() -> None:
    assert parse_notice("<html>404 Not Found</html>\n404") is None
    notice = parse_notice('{"action": "terminate", "time": "2030-01-02T03:04:05Z"}\n200')
    assert notice == Notice("terminate", 1893553445.0, "2030-01-02T03:04:05Z")
    assert parse_notice('{"action":"stop","time":"2030-01-02T03:04:05Z"}\n200\n') is not None
    for bad in (
        "Unauthorized\n401",
        "",
        '{"action": "explode", "time": "2030-01-02T03:04:05Z"}\n200',
        '{"action": "terminate", "time": "soon"}\n200',
        '["terminate"]\n200',
        "not json\n200",
    ):
        with pytest.raises(aiores.NoSuccess):
            parse_notice(bad)


def test_interruption_options() -> None:
    options = parse_options(URL.parse("ec2://us-east-1"))
    assert (options.interruptions, options.metadata, options.interruption_poll) == (
        "metadata",
        "http://169.254.169.254",
        5.0,
    )
    options = parse_options(
        URL.parse(
            "ec2://us-east-1?interruptions=off&metadata=http://127.0.0.1:8080/"
            "&interruption_poll=0.5"
        )
    )
    assert (options.interruptions, options.metadata, options.interruption_poll) == (
        "off",
        "http://127.0.0.1:8080",
        0.5,
    )
    for bad in (
        "interruptions=events2",
        "metadata=https://127.0.0.1",
        "metadata=http://127.0.0.1:0",
        "metadata=http://127.0.0.1:99999",
        "metadata=http://a b",
        "metadata=http://host/path",
        "metadata=http://169.254.169.254%0A",
        "metadata=http://169.254.169.254/%0A",
        "metadata=http://h%00",
        "metadata=",
        "interruptions=",
        "interruptions=off%00",
        "interruption_poll=0",
        "interruption_poll=nan",
        "interruption_poll=inf",
        "interruption_poll=-1",
    ):
        with pytest.raises(aiores.IncorrectURL, match=bad.split("=")[0]):
            parse_options(URL.parse(f"ec2://us-east-1?{bad}"))


@pytest.mark.asyncio
async def test_the_notice_command_speaks_imdsv2(tmp_path: Any) -> None:
    async with _imds() as imds:
        # Without a token the notice path refuses.
        async with (
            aiohttp.ClientSession() as http,
            http.get(imds.url + "/latest/meta-data/spot/instance-action") as answer,
        ):
            assert answer.status == 401

        async def read() -> Notice | None:
            proc = await asyncio.create_subprocess_exec(
                "/bin/sh",
                "-c",
                notice_script(imds.url),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await proc.communicate()
            assert proc.returncode == 0, err
            return parse_notice(out.decode())

        assert await read() is None
        imds.notice = {"action": "hibernate", "time": "2030-01-02T03:04:05Z"}
        assert await read() == Notice("hibernate", 1893553445.0, "2030-01-02T03:04:05Z")
        assert imds.unauthorized == 1  # the command always took a token first
        assert imds.answered == [401, 404, 200]
        # A metadata address with a quote in it stays one word.
        assert "'http://a'\"'\"'b'" in notice_script("http://a'b")


# -- over SSH, on the session's clock ------------------------------------------------------
async def _spot_vm(
    moto: MotoServer, session: aiores.Session, **options: str
) -> tuple[aiores.Compute, aiores.Manager]:
    mgr = session.manager(ec2_url(moto, market="spot", **options))
    vm = await mgr.acquire(ComputeDescription(image=IMAGE, template="t3.micro"))
    assert isinstance(vm, aiores.Compute)
    return vm, mgr


def _info(vm: aiores.Compute) -> ResourceInfo:
    return ResourceInfo(
        id=vm.native_id,
        state=ResourceState.ACTIVE,
        state_detail="running",
        rtype="compute",
        access=vm.access,
        extra={"lifecycle": "spot"},
    )


@pytest.mark.asyncio
async def test_a_notice_counts_down_on_the_session_clock(
    moto: MotoServer, session: aiores.Session
) -> None:
    async with _imds() as imds, _booting(moto):
        vm, mgr = await _spot_vm(moto, session, interruptions="off")
        async with asyncio.timeout(STEP):
            await vm.wait(ResourceState.ACTIVE)
        clock = FakeClock(1000.0)
        published: list[ResourceInfo] = []
        got = asyncio.Event()

        def publish(info: ResourceInfo) -> None:
            published.append(info)
            got.set()

        tasks: list[asyncio.Task[None]] = []
        poller = Interruptions(
            metadata=imds.url,
            interval=5.0,
            clock=clock,
            runner=session.command_runner,
            publish=publish,
            spawn=lambda fn, name: tasks.append(asyncio.ensure_future(fn())),
            wall=lambda: 2_000_000_000.0,
        )
        poller.watch(_info(vm))
        poller.watch(_info(vm))  # one task for all, however often watched
        assert len(tasks) == 1
        async with asyncio.timeout(STEP):
            await imds.wait_for(1, 404)
            await clock.wait_for_sleepers()
        assert poller.running
        assert not published
        # EC2 decides: 120 s from the (wall) time the poller reads it at.
        imds.notice = {"action": "terminate", "time": _iso(2_000_000_120.0)}
        clock.advance(5.0)
        async with asyncio.timeout(STEP):
            await got.wait()
            await tasks[0]  # nothing left to read: the task ends
        (record,) = published
        assert record.state is ResourceState.ACTIVE
        assert record.state_detail == "delete-pending"
        assert record.extra["max_wait_time"] == 120.0
        assert record.extra["interruption"] == "terminate"
        assert record.extra["interruption_time"] == _iso(2_000_000_120.0)
        assert not poller.running
        assert poller.watched == frozenset()
        assert imds.answered == [404, 200]
        # Every later record carries it, counting down on the clock...
        clock.advance(30.0)
        later = poller.update(_info(vm))
        assert later.state_detail == "delete-pending"
        assert later.extra["max_wait_time"] == 90.0
        clock.advance(200.0)
        assert poller.update(_info(vm)).extra["max_wait_time"] == 0.0
        # ... and is read no more; once gone, it is what EC2 says (EXPIRED).
        poller.watch(_info(vm))
        assert not tasks[1:]
        gone = poller.update(
            ResourceInfo(
                id=vm.native_id,
                state=ResourceState.EXPIRED,
                state_detail="terminated",
                rtype="compute",
            )
        )
        assert gone.state is ResourceState.EXPIRED
        assert gone.state_detail == "terminated"
        assert gone.extra["interruption"] == "terminate"
        await mgr.destroy([vm])


@pytest.mark.asyncio
async def test_cancelling_the_poller_leaves_nothing(
    moto: MotoServer, session: aiores.Session
) -> None:
    async with _imds() as imds, _booting(moto):
        vm, mgr = await _spot_vm(moto, session, interruptions="off")
        async with asyncio.timeout(STEP):
            await vm.wait(ResourceState.ACTIVE)
        imds.delay = 3.0  # a read stays in flight
        tasks: list[asyncio.Task[None]] = []
        poller = Interruptions(
            metadata=imds.url,
            interval=5.0,
            clock=FakeClock(),
            runner=session.command_runner,
            publish=lambda info: pytest.fail("no notice was given"),
            spawn=lambda fn, name: tasks.append(asyncio.ensure_future(fn())),
        )
        poller.watch(_info(vm))
        async with asyncio.timeout(STEP):
            await imds.wait_in_flight()
        tasks[0].cancel()
        with pytest.raises(asyncio.CancelledError):
            await tasks[0]
        assert not poller.running
        # Watched again, it starts a new task (the cancelled one is gone).
        imds.delay = 0.0
        poller.watch(_info(vm))
        assert len(tasks) == 2
        assert poller.running
        tasks[1].cancel()
        with pytest.raises(asyncio.CancelledError):
            await tasks[1]
        await mgr.destroy([vm])


@pytest.mark.asyncio
async def test_a_pool_drains_a_spot_machine_on_notice_and_requeues_its_work(
    moto: MotoServer, session: aiores.Session
) -> None:
    async with _imds() as imds, _booting(moto) as served:
        url = ec2_url(moto, market="spot", metadata=imds.url, interruption_poll="0.2")
        desc = ComputeDescription(image=IMAGE, template="t3.micro")
        events: list[aiores.PoolEvent] = []
        ready = asyncio.Event()
        async with session.pool(url, desc, min=0, max=1, tick=0.2) as pool:

            async def follow() -> None:
                async for event in pool.events():
                    events.append(event)
                    if event.kind == "ready":
                        ready.set()
                    if event.kind == "revoked":
                        imds.notice = None  # the next machine has no notice

            follower = asyncio.ensure_future(follow())
            work = asyncio.ensure_future(pool.run("echo start; sleep 5; echo done"))
            async with asyncio.timeout(STEP):
                await ready.wait()  # the first machine is up: the work goes there
                await imds.wait_for(1, 404)  # and it is read
            first = set(served)
            imds.notice = {"action": "terminate", "time": _iso(time.time() + 3)}
            async with asyncio.timeout(STEP * 2):
                result = await work
            assert result.exit_status == 0
            assert result.stdout == "start\ndone\n"
            stats = pool.stats()
            assert stats.revoked == 1
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        kinds = [e.kind for e in events]
        assert "revoked" in kinds
        assert "requeue" in kinds
        (revoked,) = [e for e in events if e.kind == "revoked"]
        assert revoked.resource is not None
        assert revoked.resource.native_id in first
        assert 0 < float(revoked.detail) <= 3
        # Released early (before EC2 would have taken it), the second ran the work.
        releases = [e for e in events if e.kind == "release"]
        assert releases[0].resource is revoked.resource
        assert releases[0].detail == "drained"
        assert len(served) == 2
        assert await alive(moto) == []
