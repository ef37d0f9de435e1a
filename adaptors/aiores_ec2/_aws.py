"""aioboto3 clients shared per session, called through the rate governor, errors mapped.

One client per (service, endpoint, region, credentials) per session, whatever the
number of adaptors (managers, buckets) that use it: a client owns a connection pool
(``max_pool_connections``, whose default of 10 would serialise a fan-out) and is
costly to make (botocore builds a method per operation from a multi-megabyte model).
It is made off the event loop the first time, opened by the first adaptor that needs
it, kept by the session (:meth:`~aiores.adaptor.AdaptorEnv.shared`) and closed by it
when it closes, after its adaptors.

Every call goes through an :class:`~aiores.adaptor.Governor` and leaves as an aiores
error: no botocore exception ever reaches a user. The message names the AWS error
code (``ec2 RunInstances: InvalidAMIID.NotFound: ...``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import urllib.parse
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aioboto3
import aiohttp
import botocore
import botocore.exceptions
from aiobotocore.config import AioConfig
from aiobotocore.httpsession import AIOHTTPSession
from botocore.config import Config
from botocore.httpsession import create_urllib3_context, get_cert_path

from aiores import (
    AioresError,
    AuthenticationFailed,
    AWSContext,
    BadParameter,
    ConnectionLost,
    DoesNotExist,
    IncorrectState,
    IncorrectURL,
    NoSuccess,
    NotSupported,
    PermissionDenied,
)
from aiores.adaptor import URL, AdaptorEnv, Bucket, Governor, RetryPolicy, Transience

from ._parsing import botocore_session

__all__ = [
    "Api",
    "Target",
    "aws_errors",
    "classify",
    "error_code",
    "open_api",
    "target",
    "translate",
]

#: Codes that mean "too fast": back off and empty the buckets.
THROTTLE_CODES = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "SlowDown",
        "EC2ThrottledException",
        "BandwidthLimitExceeded",
    }
)
#: Codes of transient server-side failures (any 5xx is transient too).
TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "Unavailable",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
    }
)

_BY_CODE: Mapping[str, type[AioresError]] = {
    "UnauthorizedOperation": PermissionDenied,
    "AccessDenied": PermissionDenied,
    "AccessDeniedException": PermissionDenied,
    "AllAccessDisabled": PermissionDenied,
    "Forbidden": PermissionDenied,
    "OptInRequired": PermissionDenied,
    "AuthFailure": AuthenticationFailed,
    "InvalidClientTokenId": AuthenticationFailed,
    "InvalidAccessKeyId": AuthenticationFailed,
    "SignatureDoesNotMatch": AuthenticationFailed,
    "ExpiredToken": AuthenticationFailed,
    "RequestExpired": AuthenticationFailed,
    "UnrecognizedClientException": AuthenticationFailed,
    "IncorrectState": IncorrectState,
    "IncorrectInstanceState": IncorrectState,
    "BucketNotEmpty": IncorrectState,
    "NoSuchBucket": DoesNotExist,
    "NoSuchKey": DoesNotExist,
    "NoSuchUpload": DoesNotExist,
    "NotFound": DoesNotExist,
    "404": DoesNotExist,
    "InsufficientInstanceCapacity": NoSuccess,
    "InstanceLimitExceeded": NoSuccess,
    "VcpuLimitExceeded": NoSuccess,
    "MaxSpotInstanceCountExceeded": NoSuccess,
    "Unsupported": NotSupported,
    "UnsupportedOperation": NotSupported,
    "NotImplemented": NotSupported,
    "BucketAlreadyExists": BadParameter,
    "MissingParameter": BadParameter,
    "ValidationError": BadParameter,
}


def error_code(exc: BaseException) -> str | None:
    """The AWS error code of a botocore ClientError (None for anything else)."""
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code", "")) or None
    return None


def _status(exc: botocore.exceptions.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def classify(exc: BaseException) -> Transience | None:
    """Whether a botocore/aiohttp error is worth retrying (the governor's classifier)."""
    if isinstance(exc, botocore.exceptions.ClientError):
        code = error_code(exc) or ""
        if code in THROTTLE_CODES:
            return Transience.THROTTLED
        if code in TRANSIENT_CODES or _status(exc) >= 500:
            return Transience.TRANSIENT
        return None
    if isinstance(
        exc,
        (
            botocore.exceptions.ConnectionError,
            botocore.exceptions.HTTPClientError,
            botocore.exceptions.IncompleteReadError,
            ConnectionError,  # the builtin: reset, refused, aborted
        ),
    ):
        return Transience.TRANSIENT
    return None


def translate(service: str, action: str, exc: BaseException) -> AioresError:
    """The aiores error for a botocore error, its message naming the AWS code."""
    if isinstance(exc, AioresError):
        return exc
    if isinstance(exc, botocore.exceptions.ClientError):
        code = error_code(exc) or "Unknown"
        message = exc.response.get("Error", {}).get("Message", "") or str(exc)
        text = f"{service} {action}: {code}: {message}"
        if code in THROTTLE_CODES:
            return NoSuccess(text + " (still refused after the retries)")
        kind: type[AioresError] | None = _BY_CODE.get(code)
        if kind is None:
            if code.endswith((".NotFound", "NotFound")):
                kind = DoesNotExist
            elif code.endswith(".Malformed") or code.startswith("Invalid"):
                kind = BadParameter
            elif _status(exc) == 403:
                kind = PermissionDenied
            elif _status(exc) == 404:
                kind = DoesNotExist
            else:
                kind = NoSuccess
        return kind(text)
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return AuthenticationFailed(
            f"{service} {action}: no AWS credentials: give an aiores.AWSContext or set up "
            "the AWS credential chain (environment, ~/.aws/credentials, instance role)"
        )
    if isinstance(exc, botocore.exceptions.PartialCredentialsError):
        return AuthenticationFailed(f"{service} {action}: incomplete AWS credentials: {exc}")
    if isinstance(exc, botocore.exceptions.ParamValidationError):
        return BadParameter(f"{service} {action}: {exc}")
    if classify(exc) is not None or isinstance(exc, OSError):
        return ConnectionLost(f"{service} {action}: cannot reach the endpoint: {exc}")
    return NoSuccess(f"{service} {action} failed: {exc!r}")


@contextlib.contextmanager
def aws_errors(service: str, action: str) -> Iterator[None]:
    """Translate botocore, aiohttp and OS errors raised inside into aiores errors.

    Cancellation passes through untouched.
    """
    try:
        yield
    except AioresError:
        raise
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError) as exc:
        raise translate(service, action, exc) from exc
    except Exception as exc:
        # aiohttp's own errors (a payload cut short...) are transport failures too.
        if type(exc).__module__.startswith("aiohttp"):
            raise ConnectionLost(f"{service} {action}: {exc!r}") from exc
        raise


# -- where a client goes ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Target:
    """What one shared client is for: service, endpoint, region and credentials."""

    service: str
    region: str | None
    endpoint_url: str | None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    profile: str | None = None
    max_connections: int = 50


def _endpoint_url(url: URL, value: str) -> str:
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise IncorrectURL(f"{url.scheme}:// endpoint must be an http(s) URL, not {value!r}")
    return value


def target(
    service: str,
    url: URL,
    env: AdaptorEnv,
    *,
    region: str | None,
    endpoint: str | None,
    max_connections: int,
) -> Target:
    """The client target for ``url``: its options first, then the session's AWSContext.

    The context is the session's first :class:`~aiores.AWSContext` whose scope is
    None or the URL's host; unset fields fall back to the standard AWS chain.
    """
    ctx = env.context(AWSContext, url.host)
    endpoint = endpoint or (ctx.endpoint_url if ctx is not None else None)
    return Target(
        service=service,
        region=region or (ctx.region if ctx is not None else None),
        endpoint_url=_endpoint_url(url, endpoint) if endpoint else None,
        access_key_id=ctx.access_key_id if ctx is not None else None,
        secret_access_key=ctx.secret_access_key if ctx is not None else None,
        session_token=ctx.session_token if ctx is not None else None,
        profile=ctx.profile if ctx is not None else None,
        max_connections=max_connections,
    )


# -- shared clients -----------------------------------------------------------------------
class _Client:
    """The session's client for one target: opened by the first adaptor that needs it,
    closed by the session when it closes, after its adaptors (``aclose``)."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.client: Any = None
        self.stack: contextlib.AsyncExitStack | None = None

    async def open(self, t: Target) -> None:
        """Make the client unless it is open.

        Raises:
            AuthenticationFailed: the named profile does not exist.
            NoSuccess: the client cannot be made.
        """
        async with self.lock:
            if self.client is not None:
                return
            with aws_errors(t.service, "connect"):
                cache = _boto_cache(t)
                boto = cache.get(t)
                if boto is None:
                    try:
                        boto = await asyncio.to_thread(_prepare, t)
                    except botocore.exceptions.ProfileNotFound as exc:
                        raise AuthenticationFailed(str(exc)) from exc
                    cache[t] = boto
                stack = contextlib.AsyncExitStack()
                self.client = await stack.enter_async_context(_client_context(boto, t))
                self.stack = stack

    async def aclose(self) -> None:
        """Close the client (its connections); the session calls it once, last."""
        async with self.lock:
            stack, self.stack, self.client = self.stack, None, None
            if stack is not None:
                await stack.aclose()
                # aiohttp closes its sockets on the next loop iterations: let it, so
                # that no transport outlives a loop that ends right after.
                await asyncio.sleep(0.01)


# aioboto3 sessions per target: credentials and the client classes botocore built from
# the service model (half a second of CPU each). They hold no connection and no state
# of an aiores session, so they are kept per process, not per session: every session
# of the process makes its clients from them in milliseconds. With static keys one
# serves every event loop; credentials from the chain may refresh under a lock bound
# to one loop, so those are kept per loop (and go with it).
_BOTO_STATIC: dict[Target, Any] = {}
_BOTO_PER_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Target, Any]] = (
    weakref.WeakKeyDictionary()
)


def _boto_cache(t: Target) -> dict[Target, Any]:
    if t.access_key_id and t.secret_access_key:
        return _BOTO_STATIC
    return _BOTO_PER_LOOP.setdefault(asyncio.get_running_loop(), {})


#: TLS client contexts with a CA bundle loaded, by the bundle's path: made once per
#: process, in a worker thread (:func:`_prepare`).
_TLS: dict[str, ssl.SSLContext] = {}


def _tls_context(verify: bool | str) -> None:
    """Blocking: make the TLS context of ``verify``'s CA bundle, unless it is made."""
    path = get_cert_path(verify)
    if path and path not in _TLS:
        context = create_urllib3_context()
        context.load_verify_locations(path, None, None)
        _TLS[path] = context


class _HTTPSession(AIOHTTPSession):  # type: ignore[misc]  # untyped base
    """aiobotocore's HTTP session, its TLS context made beforehand.

    aiobotocore makes a client's connection pool at its first request, on the loop
    thread, and with it a TLS context into which it loads the CA bundle: 18-25 ms of
    CPU, one loop iteration per client. The context of the bundle the session uses
    is made once per process in :func:`_prepare`'s worker thread; the pool uses it
    (a context serves any number of connections, threads and loops). A bundle not
    made beforehand, a proxy or a client certificate: aiobotocore's own way.
    """

    def _create_connector(self, proxy_url: str | None) -> Any:
        verify = getattr(self, "_verify", None)
        context = _TLS.get(get_cert_path(verify)) if verify else None
        if context is None or proxy_url or getattr(self, "_cert_file", None) is not None:
            return super()._create_connector(proxy_url)
        return aiohttp.TCPConnector(
            limit=self._max_pool_connections, ssl=context, **self._connector_args
        )


def _config(t: Target) -> Config:
    # Retries are the governor's (counted and limited there), not botocore's.
    # S3-compatible endpoints (moto, MinIO...) want path-style bucket addressing.
    s3 = {"addressing_style": "path"} if t.service == "s3" and t.endpoint_url else None
    return AioConfig(
        http_session_cls=_HTTPSession,
        max_pool_connections=t.max_connections,
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=30,
        read_timeout=120,
        s3=s3,
    )


def _client_context(boto: Any, t: Target) -> Any:
    return boto.client(
        t.service, region_name=t.region, endpoint_url=t.endpoint_url, config=_config(t)
    )


def _prepare(t: Target) -> Any:
    """Blocking: an aioboto3 session whose client class for ``t.service`` is built.

    The first client of a service reads its model (megabytes of JSON for EC2) and
    builds a method per operation, half a second of CPU: done here, in a worker
    thread with an event loop of its own, so that the session's loop makes the real
    client from the cache in milliseconds.
    """
    boto = aioboto3.Session(
        botocore_session=botocore_session(),  # large answers parsed off the loop
        aws_access_key_id=t.access_key_id,
        aws_secret_access_key=t.secret_access_key,
        aws_session_token=t.session_token,
        profile_name=t.profile,
        region_name=t.region,
    )

    async def warm() -> None:
        async with _client_context(boto, t) as client:
            # The CA bundle this session's clients verify with (its ca_bundle
            # setting, REQUESTS_CA_BUNDLE, or botocore's own): its TLS context made
            # here, off the loop (see _HTTPSession).
            http = getattr(getattr(client, "_endpoint", None), "http_session", None)
            verify = getattr(http, "_verify", None)
            if verify:
                # A bundle that cannot be read fails the first request, as it would
                # without this: aiobotocore's own way, with its own error.
                with contextlib.suppress(OSError, ssl.SSLError):
                    _tls_context(verify)
        await asyncio.sleep(0.01)  # let aiohttp's sockets close before the loop ends

    # Not in debug mode: this loop's one long step is the point, not a blocked loop.
    asyncio.run(warm(), debug=False)
    return boto


class Api:
    """One service's calls for one adaptor: shared client, governor, error mapping."""

    def __init__(
        self,
        env: AdaptorEnv,
        t: Target,
        governor: Governor,
        cost: Callable[[str], Mapping[str, float]],
    ) -> None:
        self.env = env
        self.target = t
        self.governor = governor
        self._cost = cost
        self._client: _Client | None = None

    @property
    def client(self) -> Any:
        """The aiobotocore client (open only between :meth:`open` and :meth:`close`)."""
        if self._client is None or self._client.client is None:
            raise IncorrectState(f"the {self.target.service} client is not open")
        return self._client.client

    async def open(self) -> None:
        """Open (or join) the session's client for this target.

        Raises:
            AuthenticationFailed: the named profile does not exist.
            NoSuccess: the client cannot be made.
        """
        if self._client is not None:
            return
        shared = self.env.shared((_Client, self.target), _Client)
        await shared.open(self.target)
        self._client = shared

    async def close(self) -> None:
        """Leave the session's client (the session closes it, after its adaptors)."""
        self._client = None

    async def call(
        self,
        action: str,
        *,
        once: Mapping[str, float] | None = None,
        give_up: Callable[[], bool] | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """Make one API call (``action`` as AWS names it: ``"DescribeInstances"``).

        Retries transient errors through the governor, then raises the aiores error.

        Raises:
            AioresError: the most specific one for the AWS error code.

        Cancelling it cancels the request under way (the backend may still act on it).
        """
        method = getattr(self.client, botocore.xform_name(action))

        async def attempt() -> dict[str, Any]:
            result: dict[str, Any] = await method(**params)
            return result

        with aws_errors(self.target.service, action):
            return await self.governor.call(
                action, attempt, cost=self._cost(action), once=once, give_up=give_up
            )


def open_api(
    env: AdaptorEnv,
    t: Target,
    *,
    buckets: Mapping[str, Bucket],
    cost: Callable[[str], Mapping[str, float]],
    enabled: bool,
    retry: RetryPolicy | None = None,
) -> Api:
    """An :class:`Api` whose governor has ``buckets`` (not opened yet)."""
    governor = Governor(
        buckets,
        classify=classify,
        retry=retry,
        max_in_flight=t.max_connections,
        clock=env.clock,
        enabled=enabled,
    )
    return Api(env, t, governor, cost)


_ID_LIST = re.compile(r"'([^']*)'")


def ids_in_message(message: str) -> list[str]:
    """The ids an EC2 ``*.NotFound`` message names (``The instance IDs 'i-1, i-2' ...``)."""
    found: list[str] = []
    for quoted in _ID_LIST.findall(message):
        found.extend(part.strip() for part in quoted.split(",") if part.strip())
    return found
