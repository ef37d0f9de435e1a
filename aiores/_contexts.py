"""Credential contexts (SAGA-style): held by a Session, read by adaptors.

Unset fields fall back to the usual defaults: the SSH agent, ``~/.ssh`` keys and
``~/.ssh/known_hosts`` for SSH; the standard credential chain for AWS. Secrets are
never shown in ``repr``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ._exceptions import BadParameter

__all__ = ["AWSContext", "Context", "SSHContext"]


@dataclass(frozen=True, kw_only=True)
class Context:
    """Base of all contexts. ``scope`` limits it to URLs whose host matches (None: all)."""

    scope: str | None = None

    def applies_to(self, host: str) -> bool:
        """True if this context is meant for ``host``."""
        return self.scope is None or self.scope == host


def _paths(owner: str, name: str, value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        value = (value,)
    if not isinstance(value, Sequence):
        raise BadParameter(f"{owner}.{name} must be a path or a sequence of paths, not {value!r}")
    return tuple(os.fspath(v) for v in value)


@dataclass(frozen=True, kw_only=True)
class SSHContext(Context):
    """How to reach machines over SSH.

    Args:
        user: Login name (default: the URL's user, else the local user).
        key_files: Private key files (default: the agent and ``~/.ssh/id_*``).
        passphrase: Passphrase for encrypted key files.
        known_hosts: known_hosts file(s) (default ``~/.ssh/known_hosts``).
        host_keys: Pinned host keys, ``{"host:port" or "host": [public key text]}``.
        trust_on_first_use: Accept and record an unknown host key (off by default).
        connect_timeout: Seconds to open the TCP connection and finish the handshake.
        login_timeout: Seconds for authentication.
        keepalive_interval: Seconds between keepalives on idle connections.
        jump_host: ``[user@]host[:port]`` to tunnel through.
        config: ssh_config file(s) to read (default ``~/.ssh/config`` where present).
        max_sessions: Channels per connection (OpenSSH MaxSessions default: 10).
        max_startups: New handshakes in flight per host (below OpenSSH MaxStartups 10).
    """

    user: str | None = None
    key_files: Sequence[str] | None = None
    passphrase: str | None = field(default=None, repr=False)
    known_hosts: Sequence[str] | None = None
    host_keys: Mapping[str, Sequence[str]] = field(default_factory=dict)
    trust_on_first_use: bool = False
    connect_timeout: float = 30.0
    login_timeout: float = 30.0
    keepalive_interval: float = 30.0
    jump_host: str | None = None
    config: Sequence[str] | None = None
    max_sessions: int = 10
    max_startups: int = 8

    def __post_init__(self) -> None:
        owner = type(self).__name__
        object.__setattr__(self, "key_files", _paths(owner, "key_files", self.key_files))
        object.__setattr__(self, "known_hosts", _paths(owner, "known_hosts", self.known_hosts))
        object.__setattr__(self, "config", _paths(owner, "config", self.config))
        for name in ("connect_timeout", "login_timeout", "keepalive_interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise BadParameter(f"{owner}.{name} must be a positive number, not {value!r}")
        for name in ("max_sessions", "max_startups"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BadParameter(f"{owner}.{name} must be an int >= 1, not {value!r}")


@dataclass(frozen=True, kw_only=True)
class AWSContext(Context):
    """How to reach AWS or an EC2/S3-compatible endpoint.

    Unset fields fall back to the standard AWS credential chain (environment,
    shared config and credentials files, instance metadata).
    """

    region: str | None = None
    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    profile: str | None = None
