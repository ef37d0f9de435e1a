"""Host key verification and the one shared asyncssh options object per context.

asyncssh re-reads known_hosts, ssh_config and key files for every connection when it
is given paths; here they are read once per :class:`~aiores.SSHContext` (off the event
loop) into one :class:`asyncssh.SSHClientConnectionOptions` that every connection of
the session reuses.

Host keys are always verified, every one by :meth:`HostKeyPolicy.decide`. For a
machine whose backend published its host keys (``AdaptorEnv.pinned_host_keys``: a VM
aiores booted) those keys alone count. Elsewhere trusted keys come from the context's
known_hosts files (default ``~/.ssh/known_hosts``) plus the keys pinned in
``SSHContext.host_keys``. A key that is unknown, or differs from the one recorded,
fails the connection with :class:`~aiores.HostKeyError` naming ``host:port`` and the
offered fingerprint. With ``trust_on_first_use`` an unknown key (never a changed one)
is accepted and appended to the first known_hosts file of the context.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import asyncssh
from asyncssh.public_key import get_default_certificate_algs

from aiores import BadParameter, SSHContext

from ._errors import map_errors

__all__ = ["CIPHERS", "HostKeyPolicy", "SSHClient", "build_options", "host_pattern"]


def host_pattern(host: str, port: int) -> str:
    """How known_hosts names ``host`` at ``port`` (``[host]:port`` unless port 22)."""
    return host if port == 22 else f"[{host}]:{port}"


def _pin_patterns(spec: str) -> str:
    """known_hosts patterns for a ``host_keys`` entry: ``host:port`` or ``host`` (any port)."""
    host, sep, port = spec.rpartition(":")
    if sep and port.isdigit() and host and ":" not in host:
        return host_pattern(host, int(port))
    return f"{spec},[{spec}]:*"


@dataclass(eq=False)
class HostKeyPolicy:
    """What one context trusts; every key a server offers is judged by :meth:`decide`.

    asyncssh is never given the trusted keys themselves (it would accept any of them
    without asking): :meth:`match` hands it only certificate authorities and revoked
    keys, so each plain host key reaches ``validate_host_public_key``.
    """

    #: The context's known_hosts files plus its pinned ``host_keys``.
    known_hosts: asyncssh.SSHKnownHosts
    trust_on_first_use: bool
    record_file: Path | None
    files: tuple[str, ...]
    #: Keys a resource adaptor vouched for, by (host, port): authoritative for them.
    pinned: Callable[[str, int | None], tuple[str, ...]] = lambda host, port: ()
    accepted: dict[tuple[str, int], asyncssh.SSHKey] = field(default_factory=dict)
    _unrecorded: list[str] = field(default_factory=list)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: known_hosts lookups (it never changes) and parsed published keys, by text.
    _matches: dict[tuple[str, str, int | None], Any] = field(default_factory=dict)
    _keys: dict[str, asyncssh.SSHKey | None] = field(default_factory=dict)

    def _vouched(self, host: str, addr: str, port: int) -> list[asyncssh.SSHKey]:
        texts = self.pinned(host, port) or (self.pinned(addr, port) if addr else ())
        keys = []
        for text in texts:
            if text not in self._keys:
                self._keys[text] = _import(text)
            if (key := self._keys[text]) is not None:
                keys.append(key)
        return keys

    def _match(self, host: str, addr: str, port: int | None) -> Any:
        """known_hosts' answer for ``host`` (port None: 22), remembered."""
        found = self._matches.get((host, addr, port))
        if found is None:
            found = self._matches[(host, addr, port)] = self.known_hosts.match(host, addr, port)
        return found

    def _recorded(self, host: str, addr: str, port: int) -> Sequence[asyncssh.SSHKey]:
        keys: Sequence[asyncssh.SSHKey] = self._match(host, addr, None if port == 22 else port)[0]
        return keys

    def decide(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> str | None:
        """None to accept ``key`` for ``host:port``, else why it is refused.

        In order: keys the machine's backend published (authoritative: a match is
        accepted, anything else refused), then the context's pinned keys and
        known_hosts (a match is accepted, another recorded key means the key
        changed), then keys accepted on first use in this session; only a host with
        no key on record at all is trusted on first use, and only when asked.
        """
        vouched = self._vouched(host, addr, port)
        if vouched:
            # The backend that made this machine published its key: nothing else
            # counts, neither a known_hosts entry left by an earlier machine at a
            # reused address nor trust on first use.
            if key in vouched:
                return None
            return (
                f"it offered {_fingerprint(key)}, which is not the key its backend published "
                "for it (possibly a machine-in-the-middle, or another machine on a "
                "reused address)"
            )
        recorded = self._recorded(host, addr, port)
        if key in recorded:
            return None
        if recorded:
            return (
                f"it offered {_fingerprint(key)}, which differs from its key in "
                f"{self._where()} (the host key changed: possibly a machine-in-the-middle; "
                "if the change is expected, update the known_hosts entry or the pinned key)"
            )
        seen = self.accepted.get((host, port))
        if seen is not None:
            if seen == key:
                return None
            return (
                f"it offered {_fingerprint(key)}, but a different key was accepted on first use "
                "earlier in this session (the host key changed)"
            )
        if self.trust_on_first_use:
            self.accepted[(host, port)] = key
            line = f"{host_pattern(host, port)} {key.export_public_key('openssh').decode()}"
            self._unrecorded.append(line.strip())
            return None
        return (
            f"it offered {_fingerprint(key)}, which is not in {self._where()}; add it to a "
            "known_hosts file, pin it in SSHContext.host_keys, or set "
            "SSHContext(trust_on_first_use=True)"
        )

    def match(self, host: str, addr: str, port: int | None) -> Sequence[str]:
        """asyncssh's known_hosts lookup: no trusted host keys (each goes to
        :meth:`decide`), only certificate authorities and revocations from known_hosts,
        and nothing for a machine whose backend published its keys."""
        if self._vouched(host, addr, port or 22):
            return cast(Sequence[str], ((),) * 7)
        _, ca_keys, revoked, certs, revoked_certs, _, _ = self._match(host, addr, port)
        # (X.509 subject patterns are left out: asyncssh would parse them again.)
        return cast(Sequence[str], ((), ca_keys, revoked, certs, revoked_certs, (), ()))

    def host_key_algs(self, host: str, port: int) -> list[str] | None:
        """The host key algorithms to ask ``host:port`` for: those of the keys
        :meth:`decide` would accept (as asyncssh does when it holds known_hosts, so a
        server with several host keys shows the one on record), or None for any."""
        # Before connecting the address is known only if the host is one; the same
        # lookup then serves decide() and match() for this connection.
        addr = host if _is_address(host) else ""
        keys = self._vouched(host, addr, port)
        ca_keys: Sequence[asyncssh.SSHKey] = ()
        if not keys:
            found = self._match(host, addr, None if port == 22 else port)
            keys, ca_keys = list(found[0]), found[1]
            seen = self.accepted.get((host, port))
            if seen is not None:
                keys.append(seen)
        if not keys:
            return None
        algs = [alg.decode() for alg in get_default_certificate_algs()] if ca_keys else []
        for key in keys:
            algs.extend(alg.decode() for alg in key.sig_algorithms if alg.decode() not in algs)
        return algs

    def _where(self) -> str:
        if not self.files:
            return "the keys pinned in SSHContext.host_keys"
        return f"known_hosts ({', '.join(self.files)}) or the keys pinned in SSHContext.host_keys"

    async def flush(self) -> None:
        """Append keys accepted on first use to the known_hosts file (0600)."""
        if not self._unrecorded or self.record_file is None:
            return
        async with self._lock:
            lines, self._unrecorded = self._unrecorded, []
            if lines:
                try:
                    await asyncio.to_thread(_append, self.record_file, lines)
                except BaseException:
                    self._unrecorded[:0] = lines  # tried again by the next connect
                    raise


@functools.lru_cache(maxsize=4096)
def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _fingerprint(key: asyncssh.SSHKey) -> str:
    return f"{key.get_algorithm()} {key.get_fingerprint('sha256')}"


def _import(text: str) -> asyncssh.SSHKey | None:
    try:
        return asyncssh.import_public_key(text)
    except (asyncssh.KeyImportError, ValueError):
        return None


def _append(path: Path, lines: Sequence[str]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as handle:
        for line in lines:
            handle.write(line + "\n")


class SSHClient(asyncssh.SSHClient):
    """One connection's client callbacks: host key decisions and loss notification."""

    def __init__(self, policy: HostKeyPolicy) -> None:
        self._policy = policy
        self.refusal: str | None = None
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        self.refusal = self._policy.decide(host, addr, port, key)
        return self.refusal is None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


def _read_known_hosts(files: Sequence[str], pins: dict[str, Sequence[str]]) -> str:
    chunks: list[str] = []
    for name in files:
        try:
            chunks.append(Path(name).read_text())
        except (FileNotFoundError, NotADirectoryError):  # no such file (yet)
            continue
    for spec, keys in pins.items():
        patterns = _pin_patterns(spec)
        for text in keys:
            try:
                asyncssh.import_public_key(text)
            except (asyncssh.KeyImportError, ValueError) as exc:
                raise BadParameter(
                    f"SSHContext.host_keys[{spec!r}] holds a key that cannot be read: {exc}"
                ) from exc
            chunks.append(f"{patterns} {text.strip()}")
    return "\n".join(chunks) + "\n"


#: Ciphers in the order the client offers them when no ssh_config names its own:
#: AES-GCM first (AES instructions in every x86-64 and ARMv8 server CPU make it about
#: 8x cheaper per packet in asyncssh than chacha20-poly1305, which sets up a new
#: cipher context twice per packet), then asyncssh's defaults. The server picks the
#: first of these it also allows.
CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)


def _default_known_hosts() -> str:
    return str(Path("~", ".ssh", "known_hosts").expanduser())  # no I/O: a name only


async def build_options(
    ctx: SSHContext,
    pinned: Callable[[str, int | None], tuple[str, ...]] = lambda host, port: (),
) -> tuple[asyncssh.SSHClientConnectionOptions, HostKeyPolicy]:
    """Read keys, known_hosts and config once for ``ctx`` (in a worker thread).

    Raises:
        BadParameter: a pinned host key cannot be read.
        AuthenticationFailed: a key file cannot be loaded (wrong passphrase, bad format).
        DoesNotExist: a named key or config file is missing.
    """
    files = (_default_known_hosts(),) if ctx.known_hosts is None else tuple(ctx.known_hosts)
    text = await asyncio.to_thread(_read_known_hosts, files, dict(ctx.host_keys))
    policy = HostKeyPolicy(
        known_hosts=asyncssh.import_known_hosts(text),
        trust_on_first_use=ctx.trust_on_first_use,
        record_file=Path(files[0]) if files else None,
        files=files,
        pinned=pinned,
    )
    # An ssh_config of the context's decides its ciphers (explicit arguments would
    # override it); without one, the cheapest first.
    ciphers: dict[str, Any] = {} if ctx.config else {"encryption_algs": list(CIPHERS)}
    with map_errors("local", "loading SSH keys and configuration"):
        options = await asyncssh.SSHClientConnectionOptions.construct(
            **ciphers,
            known_hosts=policy.match,
            client_keys=list(ctx.key_files) if ctx.key_files is not None else (),
            passphrase=ctx.passphrase,
            config=list(ctx.config) if ctx.config is not None else (),
            connect_timeout=ctx.connect_timeout,
            login_timeout=ctx.login_timeout,
            keepalive_interval=ctx.keepalive_interval,
            keepalive_count_max=3,
        )
    return options, policy
