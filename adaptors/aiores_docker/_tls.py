"""TLS to a Docker daemon over TCP: which certificates, and the ``ssl.SSLContext`` of them.

A daemon at ``tcp://host:port`` is reached with TLS when an :class:`aiores.DockerContext`
applies to its host, else when ``DOCKER_TLS_VERIFY=1`` (the certificates ``ca.pem``,
``cert.pem`` and ``key.pem`` in ``$DOCKER_CERT_PATH``, default ``~/.docker``, as the
docker command reads them); else over plain TCP. :func:`ssl_context` reads the files and
blocks: the daemon's client calls it in a thread.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from aiores import AuthenticationFailed, BadParameter, DockerContext
from aiores.adaptor import AdaptorEnv

__all__ = ["TLS", "handshake_error", "ssl_context", "tls_for"]

#: What a PEM file must hold to be a certificate, a private key.
_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
_PRIVATE_KEY = b"PRIVATE KEY-----"


@dataclass(frozen=True)
class TLS:
    """The TLS settings of one daemon, and where they came from (for error messages)."""

    source: str  # "DockerContext" or "DOCKER_CERT_PATH"
    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    verify: bool = True

    def field(self, name: str) -> str:
        """How a user names the setting ``name`` (``DockerContext.ca_cert``...)."""
        path = getattr(self, name)
        if self.source == "DockerContext":
            return f"DockerContext.{name} ({path})"
        return f"DOCKER_CERT_PATH's {Path(path).name} ({path})"

    @property
    def authority(self) -> str:
        """The certificate authority a daemon's certificate is verified against."""
        if self.ca_cert is None:
            return "the system's trusted certificate authorities"
        return self.field("ca_cert")


def tls_for(env: AdaptorEnv, host: str) -> TLS | None:
    """The TLS settings for the daemon at ``host`` over TCP (None: plain TCP)."""
    ctx = env.context(DockerContext, host) if host else None
    if ctx is not None:
        return TLS(
            "DockerContext",
            ca_cert=_path(ctx.ca_cert),
            client_cert=_path(ctx.client_cert),
            client_key=_path(ctx.client_key),
            verify=ctx.verify,
        )
    if os.environ.get("DOCKER_TLS_VERIFY", "") == "1":
        where = Path(os.environ.get("DOCKER_CERT_PATH") or Path.home() / ".docker")
        return TLS(
            "DOCKER_CERT_PATH",
            str(where / "ca.pem"),
            str(where / "cert.pem"),
            str(where / "key.pem"),
        )
    return None


def _path(value: str | os.PathLike[str] | None) -> str | None:
    return None if value is None else os.fspath(value)


def _read(tls: TLS, name: str) -> bytes:
    path = getattr(tls, name)
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise BadParameter(f"{tls.field(name)} cannot be read: {exc.strerror or exc}") from exc


def ssl_context(tls: TLS) -> ssl.SSLContext:
    """An ``ssl.SSLContext`` for a client of the daemon (reads the files: blocks).

    Raises:
        BadParameter: a file cannot be read, or holds no certificate (or key), or the
            key is not the certificate's; the message names the setting.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if tls.ca_cert is not None:
        pem = _read(tls, "ca_cert")
        try:
            context.load_verify_locations(cadata=pem.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError) as exc:
            raise BadParameter(f"{tls.field('ca_cert')} holds no PEM certificate: {exc}") from exc
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.client_cert is not None:
        cert = _read(tls, "client_cert")
        if _CERTIFICATE not in cert:
            raise BadParameter(f"{tls.field('client_cert')} holds no PEM certificate")
        key_field = "client_key" if tls.client_key is not None else "client_cert"
        key = _read(tls, key_field) if key_field == "client_key" else cert
        if _PRIVATE_KEY not in key:
            raise BadParameter(f"{tls.field(key_field)} holds no PEM private key")
        try:
            # A password that is never right: an encrypted key fails here rather than
            # prompting on the terminal.
            context.load_cert_chain(tls.client_cert, tls.client_key, password=_no_password)
        except (ssl.SSLError, ValueError, TypeError) as exc:
            raise BadParameter(
                f"{tls.field(key_field)} is not the (unencrypted) private key of "
                f"{tls.field('client_cert')}: {exc}"
            ) from exc
        except OSError as exc:  # removed between the reads and the load
            raise BadParameter(f"{tls.field('client_cert')} cannot be read: {exc}") from exc
    return context


def _no_password() -> bytes:
    raise TypeError("the private key is encrypted")


def handshake_error(
    exc: BaseException, tls: TLS, address: str, what: str
) -> AuthenticationFailed | None:
    """The aiores error for a TLS failure ``exc`` with the daemon at ``address``.

    A daemon whose certificate does not verify, or that refuses (or missed) the client
    certificate, is an AuthenticationFailed naming the daemon and the setting.
    """
    reason = _ssl_reason(exc)
    if reason is None:
        return None
    if "CERTIFICATE_VERIFY_FAILED" in reason or "certificate verify failed" in reason:
        return AuthenticationFailed(
            f"{what}: the Docker daemon at {address} did not prove itself: its certificate "
            f"does not verify against {tls.authority} ({reason})"
        )
    if "WRONG_VERSION_NUMBER" in reason or "wrong version number" in reason:
        return AuthenticationFailed(
            f"{what}: the Docker daemon at {address} does not speak TLS there (plain TCP? "
            f"then no DockerContext or DOCKER_TLS_VERIFY for it): {reason}"
        )
    if tls.client_cert is None:
        mine = "it asked for a client certificate and none was given (DockerContext.client_cert)"
    else:
        mine = f"it refused the client certificate {tls.field('client_cert')}"
    return AuthenticationFailed(
        f"{what}: the Docker daemon at {address} ended the TLS handshake: {mine} ({reason})"
    )


def _ssl_reason(exc: BaseException | None) -> str | None:
    """What the TLS failure in ``exc``'s chain says (None: no TLS failure there)."""
    for _ in range(8):
        if exc is None:
            return None
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            return str(exc.certificate_error)
        if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, ssl.SSLError):
            exc = exc.os_error
        if isinstance(exc, ssl.SSLError):
            return str(getattr(exc, "reason", None) or exc)
        exc = exc.__cause__ or exc.__context__
    return None
