"""The client keys a simulated VM authorizes.

Like a cloud's key pair, the public keys travel with the acquire request and each
VM authorizes exactly those. They are the session's :class:`~aiores.SSHContext`
``key_files`` when it names some, else the aiores-managed key
``<state dir>/keys/id_ed25519``, generated on first use (0600, directory 0700).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Sequence
from pathlib import Path

import asyncssh

from aiores import AuthenticationFailed, DoesNotExist

from ._protocol import private_dir

__all__ = ["MANAGED_KEY", "authorized_keys", "managed_key"]

#: Where the aiores-managed client key lives, relative to the state directory.
MANAGED_KEY = Path("keys", "id_ed25519")


def managed_key(state_dir: Path) -> Path:
    """Blocking: the aiores-managed ed25519 key, made on first use (0600 and its .pub too;
    directory 0700).

    Two processes making it at once end with one key: each writes a private temp
    file and links it into place; the loser drops its own. A laxer mode found on the
    key or its directory is tightened.

    Raises:
        PermissionDenied: its directory is not this user's.
    """
    path = state_dir / MANAGED_KEY
    private_dir(path.parent)
    if path.exists():
        for name in (path, path.with_name(path.name + ".pub")):
            with contextlib.suppress(FileNotFoundError):
                if stat.S_IMODE(name.stat().st_mode) & 0o077:
                    name.chmod(0o600)  # state files only their user reads
        return path
    key = asyncssh.generate_private_key("ssh-ed25519", comment="aiores managed key")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(key.export_private_key())
        pub_tmp = tmp.with_name(tmp.name + ".pub")
        pub_fd = os.open(pub_tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(pub_fd, "wb") as handle:
            handle.write(key.export_public_key())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pub_tmp.unlink()
            return path  # another process made it first
        pub_tmp.replace(path.with_name(path.name + ".pub"))
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


def _public_text(key_file: str, passphrase: str | None) -> str:
    pub = Path(key_file + ".pub")
    try:
        return asyncssh.import_public_key(pub.read_bytes()).export_public_key().decode().strip()
    except FileNotFoundError:
        pass
    except (asyncssh.KeyImportError, ValueError):
        pass  # an unreadable .pub: derive it from the private key instead
    try:
        key = asyncssh.read_private_key(key_file, passphrase)
    except FileNotFoundError:
        raise DoesNotExist(f"SSH key file {key_file!r} does not exist") from None
    except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError, ValueError) as exc:
        raise AuthenticationFailed(f"cannot load SSH key {key_file!r}: {exc}") from None
    return key.export_public_key().decode().strip()


def authorized_keys(
    state_dir: Path, key_files: Sequence[str] | None, passphrase: str | None = None
) -> tuple[str, list[str]]:
    """Blocking: (authorized_keys text, the private key files that match it).

    Raises:
        DoesNotExist: a named key file is missing.
        AuthenticationFailed: a named key cannot be read.
    """
    files = list(key_files) if key_files else [str(managed_key(state_dir))]
    lines = [_public_text(name, passphrase) for name in files]
    return "".join(line + "\n" for line in lines), files
