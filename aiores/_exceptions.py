"""The aiores exception tree.

Every error aiores raises on purpose is an :class:`AioresError`; adaptors translate
their backend's errors (asyncssh, botocore, OS errors) into this tree at the boundary
and chain the original with ``raise ... from exc``. Cancellation is never wrapped.

```
AioresError
├── BadParameter (also ValueError)     a description or argument is wrong
│   └── IncorrectURL                   malformed URL, or no adaptor for its scheme
├── IncorrectState                     the object cannot do that in its state
├── NotSupported                       the backend cannot do that at all
├── DoesNotExist                       no such resource, job, file or template
├── AuthenticationFailed               credentials refused
│   └── HostKeyError                   a host key is unknown or changed
├── PermissionDenied                   authenticated but not allowed
├── Timeout (also TimeoutError)        an operation's deadline passed
├── NoSuccess                          the backend failed for another reason
│   └── ConnectionLost                 a connection broke while in use
└── FanOutError (also ExceptionGroup)  some hosts of a group failed
```
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

__all__ = [
    "AioresError",
    "AuthenticationFailed",
    "BadParameter",
    "ConnectionLost",
    "DoesNotExist",
    "FanOutError",
    "HostKeyError",
    "IncorrectState",
    "IncorrectURL",
    "NoSuccess",
    "NotSupported",
    "PermissionDenied",
    "Timeout",
]


class AioresError(Exception):
    """The root of every error aiores raises on purpose."""


class BadParameter(AioresError, ValueError):
    """An argument or description field is wrong; the message says what to fix."""


class IncorrectURL(BadParameter):
    """A URL is malformed, or no adaptor handles its scheme."""


class IncorrectState(AioresError):
    """The object is in a state where the operation cannot be done (or can never come)."""


class NotSupported(AioresError):
    """The backend behind this object cannot do the operation."""


class DoesNotExist(AioresError):
    """No such resource, job, template, image or file."""


class AuthenticationFailed(AioresError):
    """The backend refused the credentials."""


class HostKeyError(AuthenticationFailed):
    """A server's host key is unknown or differs from the one recorded."""


class PermissionDenied(AioresError):
    """Authenticated, but not allowed to do this."""


class Timeout(AioresError, TimeoutError):
    """An operation did not complete before its deadline.

    Also a builtin :class:`TimeoutError`, so ``except TimeoutError`` catches it.
    """


class NoSuccess(AioresError):
    """The backend failed for a reason none of the other errors describe."""


class ConnectionLost(NoSuccess):
    """A connection to a backend broke while an operation was using it."""


class FanOutError(AioresError, ExceptionGroup):
    """Some members of a group failed; carries every failure, none dropped.

    ``exceptions`` holds one error per failed member; ``results`` (when the fan-out
    produced them) holds every member's result, failed or not.
    """

    results: Sequence[Any]

    def __new__(
        cls, message: str, exceptions: Sequence[Exception], results: Sequence[Any] = ()
    ) -> Self:
        self = super().__new__(cls, message, exceptions)
        self.results = tuple(results)
        return self

    def __init__(
        self, message: str, exceptions: Sequence[Exception], results: Sequence[Any] = ()
    ) -> None:
        super().__init__(message, exceptions)

    def derive(self, excs: Sequence[Exception]) -> FanOutError:  # type: ignore[override]
        return FanOutError(self.message, excs, self.results)
