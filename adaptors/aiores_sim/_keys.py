"""The client keys a simulated VM authorizes.

Like a cloud's key pair, the public keys travel with the acquire request and each
VM authorizes exactly those. They are the session's :class:`~aiores.SSHContext`
``key_files`` when it names some, else the aiores-managed key
``<state dir>/keys/id_ed25519``, generated on first use (0600, directory 0700).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import asyncssh

from aiores import AuthenticationFailed, DoesNotExist
from aiores.adaptor import private

__all__ = ["MANAGED_KEY", "authorized_keys", "managed_key"]

#: Where the aiores-managed client key lives, relative to the state directory.
MANAGED_KEY = Path("keys", "id_ed25519")


def managed_key(state_dir: Path) -> Path:
    """Blocking: the aiores-managed ed25519 key, made on first use (0600 and its .pub too;
    directory 0700): :func:`aiores.adaptor.private.managed_key` at ``keys/id_ed25519``.

    Two processes making it at once end with one key. A laxer mode found on the key
    or its directory is tightened.

    Raises:
        PermissionDenied: its directory is not this user's.
    """
    path, _ = private.managed_key(state_dir / MANAGED_KEY)
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
    if key_files:
        files = list(key_files)
        lines = [_public_text(name, passphrase) for name in files]
    else:
        path, public = private.managed_key(state_dir / MANAGED_KEY)
        files, lines = [str(path)], [public]
    return "".join(line + "\n" for line in lines), files
