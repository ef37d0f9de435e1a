"""Credential contexts (SAGA-style): held by a Session, read by adaptors.

Unset fields fall back to the usual defaults: the SSH agent, ``~/.ssh`` keys and
``~/.ssh/known_hosts`` for SSH; the standard credential chain for AWS; the
``DOCKER_TLS_VERIFY``/``DOCKER_CERT_PATH`` variables for Docker. Secrets are never
shown in ``repr``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from . import _validate as check
from ._exceptions import BadParameter

#: Fields whose value an error message must not show.
_SECRETS = frozenset({"passphrase", "secret_access_key", "session_token"})

__all__ = ["AWSContext", "Context", "DockerContext", "SSHContext"]


@dataclass(frozen=True, kw_only=True)
class Context:
    """Base of all contexts. ``scope`` limits it to URLs whose host matches (None: all)."""

    scope: str | None = None

    def __post_init__(self) -> None:
        _opt_text(self, "scope")

    def applies_to(self, host: str) -> bool:
        """True if this context is meant for ``host``."""
        return self.scope is None or self.scope == host


def _field(ctx: Context, name: str) -> str:
    return f"{type(ctx).__name__}.{name}"


def _opt_text(ctx: Context, name: str) -> None:
    value = getattr(ctx, name)
    if value is None:
        return
    if name in _SECRETS:
        if not isinstance(value, str):
            raise BadParameter(f"{_field(ctx, name)} must be a str, not {type(value).__name__}")
        check.text(value, _field(ctx, name), empty=True)
    else:
        check.text(value, _field(ctx, name))


def _paths(ctx: Context, name: str) -> None:
    value = getattr(ctx, name)
    if value is None:
        return
    if isinstance(value, (str, os.PathLike)):
        value = (value,)
    if not isinstance(value, Sequence):
        raise check.fail(_field(ctx, name), "a path or a sequence of paths", value)
    paths = tuple(check.path(v, f"{_field(ctx, name)}[{i}]") for i, v in enumerate(value))
    object.__setattr__(ctx, name, paths)


def _host_keys(ctx: Context, value: object) -> dict[str, tuple[str, ...]]:
    where = _field(ctx, "host_keys")
    if not isinstance(value, Mapping):
        raise check.fail(where, "a mapping of host to public keys", value)
    keys: dict[str, tuple[str, ...]] = {}
    for host, texts in value.items():
        check.text(host, f"{where} key")
        if isinstance(texts, str):
            texts = (texts,)
        keys[host] = check.str_seq(texts, f"{where}[{host!r}]", items_empty=False)
    return keys


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
        super().__post_init__()
        _set = object.__setattr__
        for name in ("user", "passphrase", "jump_host"):
            _opt_text(self, name)
        for name in ("key_files", "known_hosts", "config"):
            _paths(self, name)
        _set(self, "host_keys", _host_keys(self, self.host_keys))
        check.flag(self.trust_on_first_use, _field(self, "trust_on_first_use"))
        for name in ("connect_timeout", "login_timeout", "keepalive_interval"):
            _set(self, name, check.seconds(getattr(self, name), _field(self, name)))
        for name in ("max_sessions", "max_startups"):
            check.count(getattr(self, name), _field(self, name))


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

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in (
            "region",
            "endpoint_url",
            "access_key_id",
            "secret_access_key",
            "session_token",
            "profile",
        ):
            _opt_text(self, name)


def _opt_path(ctx: Context, name: str) -> None:
    value = getattr(ctx, name)
    if value is not None:
        object.__setattr__(ctx, name, check.path(value, _field(ctx, name)))


@dataclass(frozen=True, kw_only=True)
class DockerContext(Context):
    """How to reach a Docker daemon over TCP with TLS (``docker://host[:port]``).

    A DockerContext that applies to a URL's host makes ``docker://host[:port]`` use TLS
    (port 2376 unless the URL names one); without one, the ``DOCKER_TLS_VERIFY=1`` and
    ``DOCKER_CERT_PATH`` variables do (``ca.pem``, ``cert.pem`` and ``key.pem`` there),
    and without those the daemon is reached over plain TCP (port 2375). The files are
    read when the session first talks to the daemon (in a thread); the context holds
    only their paths.

    Args:
        scope: The daemon's host this context is for (None: every ``docker://host``).
        ca_cert: PEM file of the certificate authority the daemon's certificate must
            chain to (default: the system's trusted authorities).
        client_cert: PEM file of the client certificate the daemon asks for (it may also
            hold the private key).
        client_key: PEM file of that certificate's private key (not encrypted).
        verify: Verify the daemon's certificate and host name (True by default;
            False accepts any daemon, as ``docker --tls`` without ``--tlsverify`` does).

    Raises:
        BadParameter: A field of the wrong type, or a ``client_key`` without a
            ``client_cert``. A file that cannot be read or holds no certificate (or
            key) raises BadParameter naming the field when the session first talks to
            the daemon; a daemon whose certificate does not verify, or that refuses the
            client certificate, raises AuthenticationFailed.
    """

    ca_cert: str | os.PathLike[str] | None = None
    client_cert: str | os.PathLike[str] | None = None
    client_key: str | os.PathLike[str] | None = None
    verify: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("ca_cert", "client_cert", "client_key"):
            _opt_path(self, name)
        check.flag(self.verify, _field(self, "verify"))
        if self.client_key is not None and self.client_cert is None:
            raise BadParameter(
                f"{_field(self, 'client_key')} needs {_field(self, 'client_cert')}: "
                "the certificate the key belongs to"
            )
