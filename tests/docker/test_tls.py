"""docker://host:port over TLS: a DockerContext's certificates, and what a bad one says.

A TLS proxy in front of the podman service's socket stands for a daemon on TCP with
``--tlsverify``: it presents a certificate for 127.0.0.1 signed by a test CA and
requires a client certificate signed by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import aiores
from aiores import (
    URL,
    AuthenticationFailed,
    BadParameter,
    ComputeDescription,
    DockerContext,
    JobDescription,
    JobState,
)
from aiores_docker._daemon import Daemon

from .podman import IMAGE, Podman, check_stdin

STEP = 30.0


@dataclass
class Files:
    """PEM files: a CA, a client certificate it signed and the client's key."""

    ca: Path
    cert: Path
    key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, signer = issuer if issuer else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
            critical=False,
        )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(signer, hashes.SHA256())


def _write(where: Path, name: str, *items: x509.Certificate | ec.EllipticCurvePrivateKey) -> Path:
    pem = b""
    for item in items:
        if isinstance(item, x509.Certificate):
            pem += item.public_bytes(serialization.Encoding.PEM)
        else:
            pem += item.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
    path = where / name
    path.write_bytes(pem)
    return path


def _authority(
    where: Path, name: str, file: str
) -> tuple[Path, tuple[str, ec.EllipticCurvePrivateKey]]:
    key = ec.generate_private_key(ec.SECP256R1())
    return _write(where, f"{file}.pem", _certificate(name, key, None, ca=True)), (name, key)


@dataclass
class Pki:
    """The daemon's CA and its files, the client's files, and another CA's."""

    server: Files
    client: Files
    other_ca: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    where = tmp_path_factory.mktemp("pki")
    # ca.pem, cert.pem, key.pem: also a DOCKER_CERT_PATH.
    ca, issuer = _authority(where, "aiores-test-ca", "ca")
    other_ca, _ = _authority(where, "another-ca", "other-ca")
    server_key = ec.generate_private_key(ec.SECP256R1())
    client_key = ec.generate_private_key(ec.SECP256R1())
    server = Files(
        ca,
        _write(where, "server.pem", _certificate("127.0.0.1", server_key, issuer, server=True)),
        _write(where, "server-key.pem", server_key),
    )
    client = Files(
        ca,
        _write(where, "cert.pem", _certificate("client", client_key, issuer)),
        _write(where, "key.pem", client_key),
    )
    return Pki(server, client, other_ca)


class _ServerSide:
    """The server's side of one TLS connection, over asyncio streams (through memory BIOs,
    so that an alert the handshake ends with reaches the client, as from a real daemon)."""

    def __init__(
        self, context: ssl.SSLContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._reader, self._writer = reader, writer

    async def _flush(self) -> None:
        if data := self._outgoing.read():
            self._writer.write(data)
            await self._writer.drain()

    async def _step(self, operation: Callable[[], bytes | None]) -> bytes | None:
        while True:
            try:
                result = operation()
            except ssl.SSLWantReadError:
                await self._flush()
                data = await self._reader.read(65536)
                if not data:
                    return b""
                self._incoming.write(data)
                continue
            except ssl.SSLZeroReturnError:
                return b""
            except ssl.SSLError:
                await self._flush()  # the alert
                raise
            await self._flush()
            return result

    async def handshake(self) -> None:
        await self._step(self._tls.do_handshake)

    async def read(self) -> bytes:
        return await self._step(lambda: self._tls.read(65536)) or b""

    async def write(self, data: bytes) -> None:
        self._tls.write(data)
        await self._flush()

    async def close(self) -> None:
        """Say close_notify (the client reads the end of its stream), then close."""
        with contextlib.suppress(ssl.SSLError):
            self._tls.unwrap()
        with contextlib.suppress(ConnectionError):
            await self._flush()
        self._writer.close()


@contextlib.asynccontextmanager
async def tls_proxy(podman: Podman, files: Files) -> AsyncIterator[int]:
    """A TLS server on 127.0.0.1 (requiring a client certificate) that forwards each
    connection to the podman socket, both ways; yields its port."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    await asyncio.to_thread(context.load_cert_chain, files.cert, files.key)
    await asyncio.to_thread(context.load_verify_locations, files.ca)
    context.verify_mode = ssl.CERT_REQUIRED
    handlers: set[asyncio.Task[None]] = set()

    async def upstream(tls: _ServerSide, daemon: asyncio.StreamWriter) -> None:
        while data := await tls.read():
            daemon.write(data)
            await daemon.drain()
        daemon.write_eof()  # the program's stdin ends; its output still flows

    async def downstream(daemon: asyncio.StreamReader, tls: _ServerSide) -> None:
        while data := await daemon.read(65536):
            await tls.write(data)

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        daemon_w: asyncio.StreamWriter | None = None
        try:
            tls = _ServerSide(context, reader, writer)
            await tls.handshake()
            daemon_r, daemon_w = await asyncio.open_unix_connection(podman.socket)
            # The daemon's end of the connection (an exec's output ended) is the client's.
            up = asyncio.create_task(upstream(tls, daemon_w))
            try:
                await downstream(daemon_r, tls)
                await tls.close()
            finally:
                up.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError, ssl.SSLError):
                    await up
        except (ConnectionError, ssl.SSLError):
            pass  # a refused handshake, or a side that went away
        finally:
            for end in (writer, daemon_w):
                if end is not None:
                    end.close()
            handlers.discard(task)

    server = await asyncio.start_server(forward, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


@pytest.fixture(autouse=True)
def no_docker_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKER_TLS_VERIFY", raising=False)
    monkeypatch.delenv("DOCKER_CERT_PATH", raising=False)


pytestmark = pytest.mark.asyncio


async def test_jobs_and_a_machine_over_tls(podman: Podman, pki: Pki) -> None:
    context = DockerContext(
        scope="127.0.0.1",
        ca_cert=pki.client.ca,
        client_cert=pki.client.cert,
        client_key=pki.client.key,
    )
    async with tls_proxy(podman, pki.server) as port:
        url = f"docker://127.0.0.1:{port}"
        async with aiores.Session(journal=None, contexts=[context]) as session:
            js = session.job_service(f"{url}?image={IMAGE}")
            job = await js.submit(JobDescription(executable="/bin/cat", stdin=b"over tls\n"))
            assert await job.wait(timeout=STEP) is JobState.DONE
            assert job.stdout == "over tls\n"
            await job.reap()
            vm = await session.manager(url).acquire(ComputeDescription(image=IMAGE))
            result = await vm.run("echo $((6 * 7))", timeout=STEP)
            assert (result.exit_status, result.stdout) == (0, "42\n")
            await vm.destroy()
    assert podman.containers() == []


async def test_docker_tls_verify_and_cert_path(
    podman: Podman, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    monkeypatch.setenv("DOCKER_CERT_PATH", str(pki.client.ca.parent))  # ca, cert, key.pem
    async with tls_proxy(podman, pki.server) as port, aiores.Session(journal=None) as session:
        js = session.job_service(f"docker://127.0.0.1:{port}?image={IMAGE}")
        job = await js.submit(JobDescription(executable="/bin/true"))
        assert await job.wait(timeout=STEP) is JobState.DONE
        await job.reap()


async def test_tls_only_where_a_context_or_the_variables_say(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = DockerContext(scope="10.0.0.1", ca_cert=pki.client.ca)
    here = DockerContext(scope="127.0.0.1", ca_cert=pki.client.ca)
    async with aiores.Session(journal=None, contexts=[elsewhere]) as session:
        plain = Daemon.shared(session, URL.parse("docker://127.0.0.1"))
        assert (plain.address, plain.tls) == ("tcp://127.0.0.1:2375", None)
        tls = Daemon.shared(session, URL.parse("docker://10.0.0.1"))
        assert tls.address == "tcp://10.0.0.1:2376"
        assert tls.tls is not None
        assert tls.tls.ca_cert == str(pki.client.ca)
    async with aiores.Session(journal=None, contexts=[here]) as session:
        named = Daemon.shared(session, URL.parse("docker://127.0.0.1:9999"))
        assert named.address == "tcp://127.0.0.1:9999"
        assert named.tls is not None
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    monkeypatch.setenv("DOCKER_CERT_PATH", "/certs")
    async with aiores.Session(journal=None) as session:
        daemon = Daemon.shared(session, URL.parse("docker://127.0.0.1"))
        assert daemon.address == "tcp://127.0.0.1:2376"
        assert daemon.tls is not None
        assert daemon.tls.client_key == "/certs/key.pem"


async def test_a_daemon_that_another_ca_signed_is_refused(podman: Podman, pki: Pki) -> None:
    context = DockerContext(
        ca_cert=pki.other_ca, client_cert=pki.client.cert, client_key=pki.client.key
    )
    async with (
        tls_proxy(podman, pki.server) as port,
        aiores.Session(journal=None, contexts=[context]) as session,
    ):
        js = session.job_service(f"docker://127.0.0.1:{port}?image={IMAGE}")
        with pytest.raises(AuthenticationFailed, match=f"127.0.0.1:{port}") as caught:
            await js.submit(JobDescription(executable="/bin/true"))
    assert "DockerContext.ca_cert" in str(caught.value)


async def test_no_client_certificate_is_refused(podman: Podman, pki: Pki) -> None:
    context = DockerContext(ca_cert=pki.client.ca)
    async with (
        tls_proxy(podman, pki.server) as port,
        aiores.Session(journal=None, contexts=[context]) as session,
    ):
        js = session.job_service(f"docker://127.0.0.1:{port}?image={IMAGE}")
        with pytest.raises(AuthenticationFailed, match="client certificate") as caught:
            await js.submit(JobDescription(executable="/bin/true"))
    assert f"127.0.0.1:{port}" in str(caught.value)


async def test_a_missing_file_names_the_field(pki: Pki, tmp_path: Path) -> None:
    context = DockerContext(ca_cert=pki.client.ca, client_cert=tmp_path / "nowhere.pem")
    async with aiores.Session(journal=None, contexts=[context]) as session:
        js = session.job_service(f"docker://127.0.0.1:1?image={IMAGE}")
        with pytest.raises(BadParameter, match=r"DockerContext\.client_cert .*nowhere\.pem"):
            await js.submit(JobDescription(executable="/bin/true"))


async def test_a_context_checks_its_fields(pki: Pki) -> None:
    with pytest.raises(BadParameter, match=r"DockerContext\.client_key needs"):
        DockerContext(client_key=pki.client.key)
    with pytest.raises(BadParameter, match=r"DockerContext\.ca_cert"):
        DockerContext(ca_cert=5)  # type: ignore[arg-type]
    with pytest.raises(BadParameter, match=r"DockerContext\.verify"):
        DockerContext(verify="no")  # type: ignore[arg-type]
    assert DockerContext(ca_cert=pki.client.ca).ca_cert == str(pki.client.ca)


async def test_repr_shows_no_key_material(pki: Pki) -> None:
    context = DockerContext(
        ca_cert=pki.client.ca, client_cert=pki.client.cert, client_key=pki.client.key
    )
    key = await asyncio.to_thread(pki.client.key.read_text)
    shown = repr(context)
    assert str(pki.client.key) in shown  # a path, not what the file holds
    assert key.splitlines()[1] not in shown
    assert "PRIVATE" not in shown


async def test_a_command_reads_its_stdin_over_tls(podman: Podman, pki: Pki) -> None:
    """The input ends with TLS's close_notify: the command sees its end, its output
    still comes back (a few bytes, 1 MiB echoed while it is written, none)."""
    context = DockerContext(
        scope="127.0.0.1",
        ca_cert=pki.client.ca,
        client_cert=pki.client.cert,
        client_key=pki.client.key,
    )
    async with (
        tls_proxy(podman, pki.server) as port,
        aiores.Session(journal=None, contexts=[context]) as session,
    ):
        vm = await session.manager(f"docker://127.0.0.1:{port}").acquire(
            ComputeDescription(image=IMAGE)
        )
        try:
            await check_stdin(vm)
        finally:
            await vm.destroy()
    assert podman.containers() == []
