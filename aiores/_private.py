"""Private state files, written one way: directories 0700, files 0600, keys made once.

Everything aiores keeps on disk for its user (the journal, keys, host key records,
an adaptor's remembered set-up, the simulated cloud's VMs) is that user's alone,
whatever the umask. These functions block: call them through ``asyncio.to_thread``.

- :func:`private_dir`: a directory only its user can enter, made if missing; one this
  user owns with a laxer mode is tightened; one that is someone else's is refused.
- :func:`private_file`: write a file 0600, replacing the old one atomically.
- :func:`tighten`: make an existing file 0600 if it was laxer.
- :func:`managed_key`: the aiores-managed ed25519 client key (the key a cloud's
  machines authorize when the user named none), made on first use. Two processes
  making it at once end with one key.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

import asyncssh

from ._exceptions import PermissionDenied

__all__ = ["managed_key", "private_dir", "private_file", "tighten"]


def private_dir(path: Path) -> Path:
    """``path`` as a directory only its user can enter (0700), made if missing.

    Raises:
        PermissionDenied: it is not a directory, or not this user's.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if not stat.S_ISDIR(info.st_mode):
        raise PermissionDenied(f"{path} is not a directory")
    if info.st_uid != os.getuid():
        raise PermissionDenied(
            f"{path} is not this user's (uid {info.st_uid}): aiores keeps its keys and "
            "state only in a directory of its own user"
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        path.chmod(0o700)
    return path


def private_file(path: Path, data: str | bytes) -> None:
    """Write ``path`` (0600 whatever the umask), replacing it atomically."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def tighten(path: Path) -> None:
    """Make ``path`` 0600 if it is this user's and its mode lets others in (missing: nothing)."""
    with contextlib.suppress(FileNotFoundError):
        info = path.stat()
        if info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) & 0o077:
            path.chmod(0o600)


def managed_key(path: Path, comment: str = "aiores managed key") -> tuple[Path, str]:
    """(private key file, public key text) of the managed key at ``path``, made on first use.

    The key is ed25519, its file 0600 and its ``.pub`` beside it 0600, its directory
    0700. Two processes making it at once end with one key: each links a temp file
    of its own into place, the loser drops its own and reads the winner's. A laxer
    mode found is tightened.

    Raises:
        PermissionDenied: the key's directory is not this user's.
    """
    private_dir(path.parent)
    pub = path.with_name(path.name + ".pub")
    if not path.exists():
        key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(key.export_private_key())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)  # the loser of a race keeps the winner's key
        finally:
            tmp.unlink(missing_ok=True)
    tighten(path)
    public = asyncssh.read_private_key(path).export_public_key().decode().strip()
    if not pub.exists() or pub.read_text().strip() != public:
        private_file(pub, public + "\n")
    tighten(pub)
    return path, public
