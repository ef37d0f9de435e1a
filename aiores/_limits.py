"""The rate governor: token buckets per action family, retries of transient errors.

A cloud API limits how fast each account may call it (EC2 publishes token buckets per
family of actions: non-mutating describes, mutating calls, and per-resource buckets
such as instances launched). A :class:`Governor` keeps a client inside those limits
instead of finding them by being refused: each call first takes tokens from the
buckets of its family, waiting for the refill when they are empty, and a call the
backend refused for a transient reason (throttling, a 5xx, a reset connection) is
tried again after a jittered exponential backoff, a bounded number of times.

The governor knows no backend: an adaptor tells it which buckets a call costs and
which errors are transient (:data:`Classifier`). Time comes from an injectable
:class:`~aiores._clock.Clock` and randomness from an injectable :class:`random.Random`,
so tests run the backoff without sleeping.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from . import _validate as check
from ._clock import Clock, LoopClock
from ._exceptions import BadParameter

__all__ = [
    "Bucket",
    "Classifier",
    "Governor",
    "RetryPolicy",
    "TokenBucket",
    "Transience",
]

log = logging.getLogger("aiores.limits")

T = TypeVar("T")


class Transience(enum.Enum):
    """How a failed call may be retried."""

    #: The backend said "too fast": back off, and empty the buckets the call used so
    #: that concurrent callers slow down too.
    THROTTLED = "throttled"
    #: A transient failure (5xx, a reset or refused connection, a timeout): back off.
    TRANSIENT = "transient"


#: Says whether an error is worth retrying: a :class:`Transience`, or None (permanent).
Classifier = Callable[[BaseException], Transience | None]


@dataclass(frozen=True, slots=True)
class Bucket:
    """A token bucket's size: at most ``capacity`` tokens, ``refill`` more per second."""

    capacity: float
    refill: float

    def __post_init__(self) -> None:
        check.number(self.capacity, "Bucket.capacity", above=0)
        check.number(self.refill, "Bucket.refill", above=0)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently transient errors are retried.

    ``attempts`` counts every try (the first included). Before retry ``n`` (from 0)
    the governor sleeps a random time between half and all of
    ``min(cap, base * 2**n)`` ("equal jitter": spread, but never zero).
    """

    attempts: int = 8
    base: float = 0.2
    cap: float = 20.0

    def __post_init__(self) -> None:
        check.count(self.attempts, "RetryPolicy.attempts")
        check.number(self.base, "RetryPolicy.base", above=0)
        check.number(self.cap, "RetryPolicy.cap", min=self.base)

    def delay(self, retry: int, rng: random.Random) -> float:
        """Seconds to sleep before retry number ``retry`` (0 for the first retry)."""
        ceiling = min(self.cap, self.base * 2.0 ** min(retry, 32))
        return rng.uniform(ceiling / 2, ceiling)


class TokenBucket:
    """One bucket: callers take tokens, waiting (first come, first served) for the refill.

    It starts full. Taking more than the capacity takes the whole capacity (a call
    that costs more than the bucket holds still goes, once the bucket is full).
    """

    def __init__(self, spec: Bucket, clock: Clock) -> None:
        self.spec = spec
        self._clock = clock
        self._tokens = spec.capacity
        self._stamp: float | None = None
        self._lock = asyncio.Lock()
        #: Set when tokens come back (:meth:`give_back`): the waiter looks again.
        self._returned = asyncio.Event()
        #: Seconds callers waited for tokens, in all (for tests and benchmarks).
        self.waited = 0.0

    def _fill(self) -> None:
        now = self._clock.now()
        if self._stamp is not None:
            gained = (now - self._stamp) * self.spec.refill
            self._tokens = min(self.spec.capacity, self._tokens + gained)
        self._stamp = now

    @property
    def tokens(self) -> float:
        """Tokens in the bucket now."""
        self._fill()
        return self._tokens

    async def take(self, n: float = 1.0) -> None:
        """Take ``n`` tokens, waiting for them if the bucket holds fewer.

        Cancelling it takes nothing (and lets the next caller in).
        """
        n = min(n, self.spec.capacity)
        async with self._lock:
            while True:
                self._fill()
                if self._tokens >= n:
                    self._tokens -= n
                    return
                delay = (n - self._tokens) / self.spec.refill
                started = self._clock.now()
                await self._refill_or_return(delay)
                self.waited += self._clock.now() - started

    async def _refill_or_return(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or less if tokens are given back meanwhile."""
        self._returned.clear()
        sleep = asyncio.ensure_future(self._clock.sleep(delay))
        returned = asyncio.ensure_future(self._returned.wait())
        try:
            await asyncio.wait((sleep, returned), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleep, returned):
                task.cancel()
            await asyncio.gather(sleep, returned, return_exceptions=True)

    def give_back(self, n: float) -> None:
        """Put back ``n`` tokens taken for a call that used none (never above capacity).

        A caller waiting for tokens looks again at once.
        """
        self._fill()
        self._tokens = min(self.spec.capacity, self._tokens + min(n, self.spec.capacity))
        self._returned.set()

    def drain(self) -> None:
        """Empty the bucket (the backend said we are too fast: believe it)."""
        self._fill()
        self._tokens = 0.0


class Governor:
    """Token buckets by family plus retries: every backend call of an endpoint goes through it.

    Args:
        buckets: The bucket sizes by family name (``"describe"``, ``"mutate"``...);
            a cost naming ``family:action`` gets a bucket of that family's size
            for the action alone.
        classify: Which errors are transient (see :data:`Classifier`).
        retry: How transient errors are retried.
        max_in_flight: Calls under way at once at most (the connection pool's size).
        clock: Time source (tests inject a fake one).
        rng: Randomness for the jitter (tests inject a seeded one).
        enabled: False turns the buckets off (retries stay): for local test servers.
    """

    def __init__(
        self,
        buckets: Mapping[str, Bucket],
        *,
        classify: Classifier,
        retry: RetryPolicy | None = None,
        max_in_flight: int = 50,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        enabled: bool = True,
    ) -> None:
        check.count(max_in_flight, "max_in_flight")
        self._clock: Clock = clock or LoopClock()
        self._specs = dict(buckets)
        self._buckets: dict[str, TokenBucket] = {}
        self._classify = classify
        self.retry = retry or RetryPolicy()
        self._rng = rng or random.Random()
        self._slots = asyncio.Semaphore(max_in_flight)
        self.enabled = enabled
        #: Attempts made per action (every try counts: what the backend saw).
        self.calls: collections.Counter[str] = collections.Counter()
        #: Retries made per action.
        self.retries: collections.Counter[str] = collections.Counter()
        #: Calls refused as throttled, per action.
        self.throttled: collections.Counter[str] = collections.Counter()

    def bucket(self, family: str) -> TokenBucket:
        """The bucket named ``family``, made (full) on first use.

        ``"describe:DescribeInstances"`` is a bucket of its own sized like the
        ``"describe"`` family: for backends that count each action apart (EC2 does).

        Raises:
            BadParameter: no such family.
        """
        bucket = self._buckets.get(family)
        if bucket is None:
            spec = self._specs.get(family) or self._specs.get(family.split(":", 1)[0])
            if spec is None:
                raise BadParameter(
                    f"no token bucket {family!r}; there are: {', '.join(sorted(self._specs))}"
                )
            bucket = self._buckets[family] = TokenBucket(spec, self._clock)
        return bucket

    async def _take(self, cost: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        for family, n in cost.items():
            await self.bucket(family).take(n)

    def _give_back(self, once: Mapping[str, float] | None) -> None:
        if self.enabled and once:
            for family, n in once.items():
                self.bucket(family).give_back(n)

    async def call(
        self,
        action: str,
        fn: Callable[[], Awaitable[T]],
        *,
        cost: Mapping[str, float],
        once: Mapping[str, float] | None = None,
        give_up: Callable[[], bool] | None = None,
    ) -> T:
        """Call ``fn()`` within the limits, retrying transient errors.

        Args:
            action: The backend's name for the call (counted in :attr:`calls`).
            fn: Makes one attempt.
            cost: Tokens per family that each attempt takes (request buckets).
            once: Tokens per family taken once, before the first attempt (resource
                buckets such as instances launched). A call that ends refused, by
                a permanent error or by throttling past the retries, used none of
                them: they go back to their buckets, so a caller that tries again
                (a launch with a key pair made anew) does not pay twice. After a
                transient error (5xx, timeout) or a cancellation the backend may
                have acted: they stay spent.
            give_up: Asked before each retry; True stops retrying (the last error
                is raised), for a caller that no longer wants the answer.

        Returns:
            What ``fn()`` returned.

        Raises:
            Exception: The last error of ``fn()``, unchanged, once it is permanent
                or the retries are used up (the caller translates it).

        Cancelling it cancels the attempt under way, or the wait before the next one.
        """
        for name in [*cost, *(once or {})]:
            self.bucket(name)  # an unknown family is a bug: fail before calling
        if once:
            await self._take(once)
        retry = 0
        while True:
            await self._take(cost)
            async with self._slots:
                self.calls[action] += 1
                try:
                    return await fn()
                except Exception as exc:
                    kind = self._classify(exc)
                    if kind is None:
                        self._give_back(once)  # refused: it launched nothing
                        raise
                    if kind is Transience.THROTTLED:
                        self.throttled[action] += 1
                        if self.enabled:
                            for family in cost:
                                self.bucket(family).drain()
                    if retry + 1 >= self.retry.attempts or (give_up is not None and give_up()):
                        if kind is Transience.THROTTLED:
                            self._give_back(once)
                        raise
                    delay = self.retry.delay(retry, self._rng)
                    log.debug(
                        "%s failed (%s), retry %d in %.2f s: %r",
                        action,
                        kind.value,
                        retry + 1,
                        delay,
                        exc,
                    )
            self.retries[action] += 1
            retry += 1
            await self._clock.sleep(delay)
