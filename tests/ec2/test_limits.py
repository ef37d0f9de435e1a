"""The rate governor on a fake clock: buckets, refill, retries, give-up, cancellation;
a launch refused once is not charged twice."""

from __future__ import annotations

import asyncio
import random

import pytest

import aiores
from aiores import BadParameter
from aiores._limits import Bucket, Governor, RetryPolicy, TokenBucket, Transience
from aiores.testing import FakeClock
from aiores_ec2 import EC2ResourceAdaptor
from aiores_ec2._adaptor import BUCKETS
from aiores_ec2.testing import MotoServer

from .conftest import STEP, aws_context, ec2_url
from .test_acquire import vm_desc

pytestmark = pytest.mark.asyncio


class Throttled(Exception):
    pass


class Broken(Exception):
    pass


def classify(exc: BaseException) -> Transience | None:
    if isinstance(exc, Throttled):
        return Transience.THROTTLED
    if isinstance(exc, ConnectionResetError):
        return Transience.TRANSIENT
    return None


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_bucket_waits_for_refill() -> None:
    clock = FakeClock()
    bucket = TokenBucket(Bucket(capacity=2, refill=1), clock)
    await bucket.take()
    await bucket.take()
    third = asyncio.ensure_future(bucket.take())
    await clock.wait_for_sleepers(1)
    assert not third.done()
    clock.advance(1.0)
    await third
    assert bucket.waited == pytest.approx(1.0)
    # A cost above the capacity takes the whole (full) bucket instead of waiting forever.
    clock.advance(5.0)
    await bucket.take(50)
    assert bucket.tokens == 0


async def test_governor_retries_transient_errors_with_jittered_backoff() -> None:
    clock = FakeClock()
    gov = Governor(
        {"d": Bucket(100, 20)},
        classify=classify,
        retry=RetryPolicy(attempts=4, base=1.0, cap=3.0),
        clock=clock,
        rng=random.Random(1),
        enabled=False,
    )
    failures: list[Exception] = [Throttled(), ConnectionResetError(), Throttled()]

    async def flaky() -> str:
        if failures:
            raise failures.pop(0)
        return "ok"

    call = asyncio.ensure_future(gov.call("Describe", flaky, cost={"d": 1}))
    delays = []
    for _ in range(3):
        await clock.wait_for_sleepers(1)
        delays.append(clock.advance_to_next())
    assert await call == "ok"
    assert gov.calls["Describe"] == 4
    assert gov.retries["Describe"] == 3
    assert gov.throttled["Describe"] == 2
    # Equal jitter: between half and all of min(cap, base * 2**n).
    assert 0.5 <= delays[0] <= 1.0
    assert 1.0 <= delays[1] <= 2.0
    assert 1.5 <= delays[2] <= 3.0


async def test_throttling_empties_the_bucket_for_everyone() -> None:
    clock = FakeClock()
    gov = Governor({"d": Bucket(10, 2)}, classify=classify, clock=clock, rng=random.Random(1))
    throttle = [True]

    async def once_throttled() -> str:
        if throttle:
            throttle.pop()
            raise Throttled()
        return "ok"

    call = asyncio.ensure_future(gov.call("D", once_throttled, cost={"d": 1}))
    await clock.wait_for_sleepers(1)
    assert gov.bucket("d").tokens == 0  # drained: another caller would wait too
    while not call.done():
        clock.advance_to_next()
        await settle()
    assert await call == "ok"


async def test_governor_gives_up_and_raises_the_last_error() -> None:
    clock = FakeClock()
    gov = Governor(
        {"d": Bucket(100, 20)},
        classify=classify,
        retry=RetryPolicy(attempts=2),
        clock=clock,
        enabled=False,
    )

    async def always() -> None:
        raise Throttled()

    call = asyncio.ensure_future(gov.call("X", always, cost={"d": 1}))
    await clock.wait_for_sleepers(1)
    clock.advance(100)
    with pytest.raises(Throttled):
        await call
    assert gov.calls["X"] == 2

    async def permanent() -> None:
        raise Broken()

    with pytest.raises(Broken):
        await gov.call("Y", permanent, cost={"d": 1})
    assert gov.calls["Y"] == 1
    assert gov.retries["Y"] == 0

    stop = True
    with pytest.raises(Throttled):
        await gov.call("Z", always, cost={"d": 1}, give_up=lambda: stop)
    assert gov.calls["Z"] == 1


async def test_governor_cancelled_while_waiting_takes_nothing() -> None:
    clock = FakeClock()
    gov = Governor({"m": Bucket(1, 1)}, classify=classify, clock=clock)

    async def ok() -> int:
        return 1

    assert await gov.call("A", ok, cost={"m": 1}) == 1
    waiting = asyncio.ensure_future(gov.call("A", ok, cost={"m": 1}))
    await clock.wait_for_sleepers(1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    clock.advance(1.0)
    assert await gov.call("A", ok, cost={"m": 1}) == 1
    with pytest.raises(BadParameter, match="no token bucket"):
        await gov.call("A", ok, cost={"nope": 1})
    # A bucket per action, sized like its family, made on first use.
    assert await gov.call("B", ok, cost={"m:B": 1}) == 1
    assert gov.bucket("m:B").spec == Bucket(1, 1)
    assert gov.bucket("m:B") is not gov.bucket("m:C")


async def test_a_launch_refused_for_a_gone_group_is_not_charged_twice(
    moto: MotoServer, state_dir: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A resource bucket of 100 instances (refill 2 a second) on a clock that never
    # moves: had the refused RunInstances kept its 60 tokens, the second one would
    # wait 10 s for the refill, forever here.
    buckets = {**BUCKETS, "instances-launched": Bucket(100, 2)}
    monkeypatch.setattr("aiores_ec2._adaptor.BUCKETS", buckets)
    url = ec2_url(moto)
    async with aiores.Session(contexts=[aws_context()]) as session:
        vm = await session.manager(url).acquire(vm_desc())
        await vm.destroy()
    await moto.reset()  # the key pair and group are gone; the state dir remembers them
    clock = FakeClock()
    async with aiores.Session(contexts=[aws_context()], clock=clock) as session:
        mgr = session.manager(url)
        async with asyncio.timeout(STEP):
            vms = await mgr.acquire_many(vm_desc(), 60)
        adaptor = await session.resource_adaptor(url)
        assert isinstance(adaptor, EC2ResourceAdaptor)
        bucket = adaptor.api.governor.bucket("instances-launched")
        assert bucket.waited == 0.0
        assert clock.now() == 0.0
        assert bucket.tokens == 40  # the 60 launched, once
        async with asyncio.timeout(STEP):
            await mgr.destroy(vms)
    calls = await moto.calls()
    assert calls["RunInstances"] == 2  # refused for the gone group, then launched
