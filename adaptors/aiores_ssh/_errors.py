"""Translate asyncssh and OS errors into the aiores tree at the adaptor boundary.

Every coroutine of this package that touches asyncssh runs its work inside
:func:`map_errors`, so no asyncssh exception reaches a user. Cancellation passes
through untouched (``CancelledError`` is a ``BaseException`` and is never caught
here); aiores errors raised inside pass through as they are.

```
asyncssh / OS error                      aiores error
HostKeyNotVerifiable                     HostKeyError (host:port and fingerprint)
PermissionDenied (auth), KeyEncryption   AuthenticationFailed
TimeoutError (connect, process)          Timeout
ConnectionRefusedError, OSError          NoSuccess naming host:port
ConnectionLost, other DisconnectError    ConnectionLost
ChannelOpenError                         NoSuccess (the server refused a channel)
SFTPNoSuchFile, FileNotFoundError        DoesNotExist
SFTPPermissionDenied, PermissionError    PermissionDenied
any other asyncssh.Error                 NoSuccess
```
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

import asyncssh

from aiores import (
    AioresError,
    AuthenticationFailed,
    ConnectionLost,
    DoesNotExist,
    HostKeyError,
    NoSuccess,
    PermissionDenied,
    Timeout,
)

__all__ = ["map_errors", "translate"]


def translate(exc: BaseException, where: str, what: str = "") -> BaseException:
    """The aiores error for ``exc`` raised while doing ``what`` at ``where`` (host:port).

    Returns ``exc`` itself when it is already an aiores error or not an error aiores
    maps (``CancelledError``, ``KeyboardInterrupt``); the caller chains the result.
    """
    if isinstance(exc, AioresError) or not isinstance(exc, Exception):
        return exc
    doing = f" ({what})" if what else ""
    reason = _reason(exc)
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return HostKeyError(f"host key of {where} not trusted{doing}: {reason}")
    if isinstance(exc, (asyncssh.PermissionDenied, asyncssh.KeyEncryptionError)):
        return AuthenticationFailed(f"authentication to {where} refused{doing}: {reason}")
    if isinstance(exc, asyncssh.KeyImportError):
        return AuthenticationFailed(f"cannot load an SSH key for {where}{doing}: {reason}")
    if isinstance(exc, TimeoutError):  # asyncio.TimeoutError and asyncssh.TimeoutError
        return Timeout(f"{where} did not answer in time{doing}")
    if isinstance(exc, asyncssh.ChannelOpenError):
        return NoSuccess(f"{where} refused to open a channel{doing}: {reason}")
    if isinstance(exc, asyncssh.DisconnectError):
        return ConnectionLost(f"connection to {where} lost{doing}: {reason}")
    if isinstance(exc, asyncssh.SFTPNoSuchFile):
        return DoesNotExist(f"no such file on {where}{doing}: {reason}")
    if isinstance(exc, asyncssh.SFTPPermissionDenied):
        return PermissionDenied(f"permission denied on {where}{doing}: {reason}")
    if isinstance(exc, asyncssh.Error):
        return NoSuccess(f"{where} failed{doing}: {reason}")
    if isinstance(exc, FileNotFoundError):
        return DoesNotExist(f"no such local file{doing}: {reason}")
    if isinstance(exc, PermissionError):
        return PermissionDenied(f"permission denied{doing}: {reason}")
    if isinstance(exc, ConnectionRefusedError):
        return NoSuccess(f"connection to {where} refused{doing}")
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return ConnectionLost(f"connection to {where} lost{doing}: {reason}")
    if isinstance(exc, OSError):
        if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return NoSuccess(f"{where} is unreachable{doing}: {reason}")
        return NoSuccess(f"cannot reach {where}{doing}: {reason}")
    return exc


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncssh.Error):
        return exc.reason or type(exc).__name__
    text = str(exc)
    return text or type(exc).__name__


@contextmanager
def map_errors(where: str, what: str = "") -> Iterator[None]:
    """Re-raise asyncssh and OS errors inside the block as aiores errors.

    Args:
        where: ``host:port`` of the peer, named in every message.
        what: A few words on the operation, for the message.
    """
    try:
        yield
    except AioresError:
        raise
    except Exception as exc:
        mapped = translate(exc, where, what)
        if mapped is exc:
            raise
        raise mapped from exc
