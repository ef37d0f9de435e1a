"""ec2:// under faults: pending instances, throttling, 5xx, cancellation, refused launches."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import aiores
from aiores import ComputeDescription, ResourceState
from aiores_ec2 import EC2ResourceAdaptor
from aiores_ec2.testing import MotoServer

from .conftest import IMAGE, STEP, alive, aws_context, ec2_url

pytestmark = pytest.mark.asyncio

DESC = ComputeDescription(image=IMAGE, template="t3.micro", ready=None)


async def adaptor_of(session: aiores.Session, url: str) -> EC2ResourceAdaptor:
    adaptor = await session.resource_adaptor(url)
    assert isinstance(adaptor, EC2ResourceAdaptor)
    return adaptor


async def test_pending_and_throttling_end_active_with_bounded_retries(
    moto: MotoServer, session: aiores.Session
) -> None:
    await moto.set_faults(
        pending=1.0,
        throttle={"RunInstances": 2, "DescribeInstances": 2, "TerminateInstances": 1},
        error={"DescribeInstances": [1, 500, "InternalError"]},
    )
    url = ec2_url(moto)
    mgr = session.manager(url)
    vms = await mgr.acquire_many(DESC, 20)
    async with asyncio.timeout(STEP):
        await asyncio.gather(*(vm.wait(ResourceState.ACTIVE) for vm in vms))
    assert {vm.state_detail for vm in vms} == {"running"}
    await mgr.destroy(vms)
    calls = await moto.calls()
    assert calls["RunInstances"] == 3  # two throttled, then launched: once
    assert calls["TerminateInstances"] == 2
    governor = (await adaptor_of(session, url)).api.governor
    assert governor.throttled["RunInstances"] == 2
    assert governor.retries["RunInstances"] == 2
    # The describes the watcher saw fail were retried by the governor, not counted twice.
    assert governor.retries["DescribeInstances"] == 3
    assert await alive(moto) == []


async def test_throttling_that_persists_is_a_clear_error(
    moto: MotoServer, session: aiores.Session
) -> None:
    await moto.set_faults(throttle={"RunInstances": 100})
    url = ec2_url(moto)
    adaptor = await adaptor_of(session, url)
    # A patient policy would take minutes: make it quick for the test.
    adaptor.api.governor.retry = aiores._limits.RetryPolicy(attempts=3, base=0.01, cap=0.02)
    with pytest.raises(aiores.NoSuccess, match="RequestLimitExceeded"):
        await session.manager(url).acquire(DESC)
    assert (await moto.calls())["RunInstances"] == 3
    assert await alive(moto) == []


async def wait_for_call(moto: MotoServer, action: str) -> None:
    async with asyncio.timeout(STEP):
        # The server is another process: its counts can only be polled.
        while not (await moto.calls()).get(action):  # noqa: ASYNC110
            await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    ("point", "faults", "after"),
    [
        ("during set-up", {"delay_before": {"ImportKeyPair": 0.5}}, "ImportKeyPair"),
        ("in flight", {"delay_before": {"RunInstances": 0.5}}, "RunInstances"),
        ("answered, answer on its way", {"delay_after": {"RunInstances": 0.5}}, "RunInstances"),
        ("between retries", {"throttle": {"RunInstances": 1}}, "RunInstances"),
        ("right away", {}, None),
    ],
)
async def test_cancelled_acquire_leaves_nothing_running(
    moto: MotoServer,
    session: aiores.Session,
    point: str,
    faults: dict[str, Any],
    after: str | None,
) -> None:
    await moto.set_faults(**faults)
    mgr = session.manager(ec2_url(moto))
    acquire = asyncio.ensure_future(mgr.acquire_many(DESC, 5))
    if after is not None:
        await wait_for_call(moto, after)
        await asyncio.sleep(0.05)
    else:
        await asyncio.sleep(0)
    acquire.cancel()
    with pytest.raises(asyncio.CancelledError):
        await acquire
    # The cleanup ran (shielded) before the cancellation reached us.
    assert await alive(moto) == [], point


async def test_crash_between_call_and_answer_is_found_by_token(
    moto: MotoServer, session: aiores.Session
) -> None:
    """Another process finds (by the token tag) what a launch made before its caller died."""
    url = ec2_url(moto)
    adaptor = await adaptor_of(session, url)
    launched = await adaptor.acquire(DESC, 5, "t-crashed0000000001")
    async with aiores.Session(contexts=[aws_context()]) as other:
        found = await (await adaptor_of(other, url)).find("t-crashed0000000001")
        assert sorted(i.id for i in found) == sorted(i.id for i in launched)
        await (await adaptor_of(other, url)).destroy([i.id for i in found])
    assert await alive(moto) == []


async def test_refused_launches_name_the_aws_code(moto_validating: MotoServer) -> None:
    async with aiores.Session(contexts=[aws_context()]) as session:
        mgr = session.manager(ec2_url(moto_validating))
        image = IMAGE  # one of moto's own AMIs
        with pytest.raises(aiores.DoesNotExist, match=r"InvalidAMIID\.NotFound"):
            await mgr.acquire(DESC.replace(image="ami-0000000000000dead"))
        with pytest.raises(aiores.DoesNotExist, match=r"InvalidInstanceType\.NotFound"):
            await mgr.acquire(DESC.replace(image=image, template="x9.enormous"))
        keyless = session.manager(ec2_url(moto_validating, key_name="no-such-key"))
        with pytest.raises(aiores.DoesNotExist, match=r"InvalidKeyPair\.NotFound"):
            await keyless.acquire(DESC.replace(image=image))
        with pytest.raises(aiores.BadParameter, match=r"needs ComputeDescription\.image"):
            await mgr.acquire(ComputeDescription(ready=None))
        with pytest.raises(aiores.BadParameter, match="user_data must start"):
            await mgr.acquire(DESC.replace(image=image, user_data="hello"))
        vm = await mgr.acquire(DESC.replace(image=image))
        await vm.destroy()
    assert await alive(moto_validating) == []


async def test_bad_urls_and_credentials(moto: MotoServer) -> None:
    async with aiores.Session(contexts=[aws_context()]) as session:
        with pytest.raises(aiores.IncorrectURL, match="unknown option"):
            session.manager(ec2_url(moto, colour="blue"))
        with pytest.raises(aiores.IncorrectURL, match="ssh_cidr"):
            session.manager(ec2_url(moto, ssh_cidr="everyone"))
        with pytest.raises(aiores.NotSupported, match="s3://"):
            await session.manager(ec2_url(moto)).acquire(aiores.StorageDescription())
    async with aiores.Session() as session:
        with pytest.raises(aiores.IncorrectURL, match="region"):
            await session.manager(f"ec2://?endpoint={moto.url}").list()
