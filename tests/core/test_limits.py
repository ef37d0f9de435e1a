"""The rate governor's resource buckets: a refused call does not spend them twice.

EC2 counts instances launched (1000, refilled at 2 a second). A launch refused by a
permanent error launched nothing: trying it again (after making a key pair anew)
must not wait for the refill of the instances the refused call was charged for.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from aiores._limits import Bucket, Governor, RetryPolicy, TokenBucket, Transience
from aiores.testing import FakeClock

pytestmark = pytest.mark.asyncio

BUCKETS = {"mutate": Bucket(50, 5), "instances-launched": Bucket(1000, 2)}


class Refused(Exception):
    """A permanent refusal (e.g. InvalidKeyPair.NotFound)."""


class Throttled(Exception):
    pass


class Reset(Exception):
    """A transient failure after which the backend may have acted."""


def classify(exc: BaseException) -> Transience | None:
    if isinstance(exc, Throttled):
        return Transience.THROTTLED
    if isinstance(exc, Reset):
        return Transience.TRANSIENT
    return None


def governor(clock: FakeClock, attempts: int = 8) -> Governor:
    return Governor(
        BUCKETS,
        classify=classify,
        retry=RetryPolicy(attempts=attempts, base=1.0, cap=2.0),
        clock=clock,
        rng=random.Random(3),
    )


async def launch(gov: Governor, n: int, refuse: list[BaseException]) -> int:
    async def run() -> int:
        if refuse:
            raise refuse.pop(0)
        return n

    return await gov.call(
        "RunInstances", run, cost={"mutate:RunInstances": 1}, once={"instances-launched": n}
    )


@pytest.mark.parametrize("n", [10, 520, 1000])
async def test_a_refused_launch_tried_again_waits_no_longer_than_a_first_one(n: int) -> None:
    clock = FakeClock()
    gov = governor(clock)
    with pytest.raises(Refused):
        await launch(gov, n, [Refused()])
    # Tried again at once (a new key pair): no refill wait, no sleep on the clock.
    retry = asyncio.ensure_future(launch(gov, n, []))
    async with asyncio.timeout(5):
        assert await retry == n
    assert clock.now() == 0.0
    assert clock.sleepers == 0
    assert gov.bucket("instances-launched").waited == 0.0
    assert gov.bucket("instances-launched").tokens == 1000 - n
    assert gov.calls["RunInstances"] == 2


async def test_the_launch_that_succeeds_spends_its_instances() -> None:
    clock = FakeClock()
    gov = governor(clock)
    assert await launch(gov, 600, []) == 600
    # 600 more need 200 more tokens than are left: 100 s at 2 a second.
    second = asyncio.ensure_future(launch(gov, 600, []))
    await clock.wait_for_sleepers(1)
    assert clock.next_deadline() == pytest.approx(100.0)
    clock.advance(100.0)
    assert await second == 600
    assert gov.bucket("instances-launched").waited == pytest.approx(100.0)


async def test_throttled_past_the_retries_gives_back_a_transient_failure_does_not() -> None:
    clock = FakeClock()
    gov = governor(clock, attempts=2)

    async def finish(call: asyncio.Future[int]) -> None:
        for _ in range(100):
            for _ in range(20):
                await asyncio.sleep(0)
            if call.done():
                return
            clock.advance(1.0)
        raise AssertionError("the call did not end")

    throttled = asyncio.ensure_future(launch(gov, 400, [Throttled(), Throttled()]))
    await finish(throttled)
    assert isinstance(throttled.exception(), Throttled)
    bucket = gov.bucket("instances-launched")
    # Nothing was launched: the 400 are back (plus what refilled meanwhile, capped).
    assert bucket.tokens == 1000
    start = clock.now()
    broken = asyncio.ensure_future(launch(gov, 400, [Reset(), Reset()]))
    await finish(broken)
    assert isinstance(broken.exception(), Reset)
    # The backend may have launched them: they stay spent (but for the refill meanwhile).
    assert bucket.tokens == pytest.approx(600 + 2 * (clock.now() - start))


async def test_a_refusal_wakes_a_launch_waiting_behind_it() -> None:
    clock = FakeClock()
    gov = governor(clock)
    gate = asyncio.Event()

    async def refused_later() -> int:
        await gate.wait()
        raise Refused()

    first = asyncio.ensure_future(
        gov.call("RunInstances", refused_later, cost={}, once={"instances-launched": 1000})
    )
    await asyncio.sleep(0)
    second = asyncio.ensure_future(launch(gov, 1000, []))
    await clock.wait_for_sleepers(1)  # waiting 500 s for the refill
    gate.set()
    with pytest.raises(Refused):
        await first
    async with asyncio.timeout(5):
        assert await second == 1000  # the tokens came back: it went at once
    assert clock.now() == 0.0
    assert clock.sleepers == 0


async def test_give_back_never_fills_past_the_capacity() -> None:
    clock = FakeClock()
    bucket = TokenBucket(Bucket(capacity=10, refill=1), clock)
    await bucket.take(4)
    bucket.give_back(50)
    assert bucket.tokens == 10
