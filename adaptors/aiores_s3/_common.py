"""What the ``s3://`` resource manager and file adaptor share: options and the client.

``s3://[bucket][?option=value&...]``, every option optional:

===================  ==========================================================================
``endpoint``         The S3 endpoint (MinIO, Ceph, moto); default: the AWSContext's
                     ``endpoint_url``, else AWS's endpoint for the region.
``region``           The region (default: the AWSContext's, else ``us-east-1``).
``empty``            ``1``: destroying a bucket deletes its objects first. Default: a bucket
                     that is not empty is refused (IncorrectState), never emptied unasked.
``part_size``        MiB per part of a multipart transfer (default 8; at least 5).
``concurrency``      Parts in flight per file (default 4): a transfer holds at most
                     ``part_size * concurrency`` in memory.
``max_connections``  Connections to the endpoint at most (default 50).
``limits``           ``aws`` (default: S3's request rates per prefix) or ``off``.
===================  ==========================================================================
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from aiores import AioresError, FanOutError, IncorrectState, IncorrectURL, NoSuccess
from aiores.adaptor import URL, AdaptorEnv, Bucket
from aiores_ec2 import Api, open_api, target

__all__ = [
    "BUCKETS",
    "MiB",
    "S3Client",
    "S3Options",
    "open_s3",
    "parse_s3_options",
    "s3_cost",
    "together",
]

MiB = 1024 * 1024
T = TypeVar("T")

#: S3's published request rates per prefix: 3500 writes and 5500 reads a second.
BUCKETS = {
    "read": Bucket(capacity=5500, refill=5500),
    "write": Bucket(capacity=3500, refill=3500),
}

KNOWN = frozenset(
    {"endpoint", "region", "empty", "part_size", "concurrency", "max_connections", "limits"}
)


def s3_cost(action: str) -> dict[str, float]:
    """The request bucket an S3 action takes a token from."""
    if action.startswith(("Get", "Head", "List")):
        return {"read": 1}
    return {"write": 1}


@dataclass(frozen=True, slots=True)
class S3Options:
    """The parsed options of an ``s3://`` URL (see the module docstring)."""

    endpoint: str | None = None
    region: str | None = None
    empty: bool = False
    part_size: int = 8 * MiB
    concurrency: int = 4
    max_connections: int = 50
    limits: bool = True

    def query(self) -> tuple[tuple[str, str], ...]:
        """The options that say where a bucket is (for access URLs)."""
        pairs = []
        if self.endpoint:
            pairs.append(("endpoint", self.endpoint))
        if self.region:
            pairs.append(("region", self.region))
        return tuple(pairs)


def _int(url: URL, name: str, value: str, least: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise IncorrectURL(f"{url}: {name} must be an integer, not {value!r}") from None
    if number < least:
        raise IncorrectURL(f"{url}: {name} must be at least {least}, not {number}")
    return number


def parse_s3_options(url: URL) -> S3Options:
    """Validate an ``s3://`` URL's options.

    Raises:
        IncorrectURL: an unknown option or a bad value.
    """
    params = url.params
    unknown = sorted(set(params) - KNOWN)
    if unknown:
        raise IncorrectURL(
            f"{url}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(KNOWN))}"
        )
    if url.user or url.port:
        raise IncorrectURL(f"{url}: write s3://<bucket>[?options] (no user or port)")
    empty = params.get("empty", "0")
    if empty not in ("0", "1"):
        raise IncorrectURL(f"{url}: empty must be 0 or 1, not {empty!r}")
    limits = params.get("limits", "aws")
    if limits not in ("aws", "off"):
        raise IncorrectURL(f"{url}: limits must be 'aws' or 'off', not {limits!r}")
    return S3Options(
        endpoint=params.get("endpoint") or None,
        region=params.get("region") or None,
        empty=empty == "1",
        part_size=_int(url, "part_size", params.get("part_size", "8"), 5) * MiB,
        concurrency=_int(url, "concurrency", params.get("concurrency", "4"), 1),
        max_connections=_int(url, "max_connections", params.get("max_connections", "50"), 1),
        limits=limits == "aws",
    )


def open_s3(url: URL, env: AdaptorEnv, options: S3Options) -> Api:
    """An (unopened) S3 :class:`~aiores_ec2.Api`: the session's shared client for the target."""
    t = target(
        "s3",
        url,
        env,
        region=options.region,
        endpoint=options.endpoint,
        max_connections=options.max_connections,
    )
    if t.region is None:
        # Signing needs a region; S3's global endpoint answers us-east-1.
        t = dataclasses.replace(t, region="us-east-1")
    return open_api(env, t, buckets=BUCKETS, cost=s3_cost, enabled=options.limits)


class S3Client:
    """The session's S3 client, as one ``s3://`` capability object holds it.

    Mixed in before the capability base class: it provides ``open`` and the
    ``api`` accessor; ``aclose`` of the capability calls :meth:`_leave`.
    """

    url: URL
    env: AdaptorEnv
    options: S3Options
    _api: Api | None = None
    _role = "adaptor"

    @property
    def api(self) -> Api:
        if self._api is None:
            raise IncorrectState(f"the {self.url} {self._role} is not open")
        return self._api

    async def open(self) -> None:
        """Join the session's S3 client for this endpoint, region and credentials."""
        api = open_s3(self.url, self.env, self.options)
        await api.open()
        self._api = api

    async def _leave(self) -> None:
        """Leave the session's client (the session closes it, after its adaptors)."""
        api, self._api = self._api, None
        if api is not None:
            await api.close()


async def together(
    calls: Sequence[Callable[[], Coroutine[Any, Any, T]]], *, several: str | None = None
) -> list[T]:
    """Run ``calls`` concurrently and return their results in order; the first
    failure cancels the others (and waits for them to end).

    No ``ExceptionGroup`` leaves: one failure raises that error;
    failures of several calls raise FanOutError carrying each if ``several`` names
    what the calls do (for its message), else the first. A failure that is not an
    aiores error leaves as NoSuccess chained to it. If the caller is being
    cancelled, CancelledError propagates, whatever the calls raised meanwhile.
    """
    # Not a TaskGroup: on Python 3.11 a task group that aborted leaves its parent's
    # cancellation count raised, so a cancellation from outside cannot be told apart.
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(call()) for call in calls]
    try:
        if tasks:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        pending = [t for t in tasks if not t.done()]
        for t in pending:
            t.cancel()
        try:
            if pending:
                await asyncio.wait(pending)
        finally:
            errors = [
                _as_aiores(exc)
                for t in tasks
                if t.done() and not t.cancelled() and (exc := t.exception()) is not None
            ]
    if errors:
        if len(errors) == 1 or several is None:
            raise errors[0] from errors[0].__cause__
        raise FanOutError(f"{several}: {len(errors)} of {len(calls)} failed", errors) from None
    return [t.result() for t in tasks]


def _as_aiores(exc: BaseException) -> AioresError:
    if isinstance(exc, AioresError):
        return exc
    if not isinstance(exc, Exception):
        raise exc  # KeyboardInterrupt, SystemExit: never wrapped
    error = NoSuccess(f"s3:// failed: {exc!r}")
    error.__cause__ = exc
    return error
