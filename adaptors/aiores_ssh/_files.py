"""SFTP files: put and get files and directory trees, permissions kept, streamed."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import asyncssh

from aiores.adaptor import FileAdaptor, concurrency

from ._base import SSHBase
from ._errors import map_errors
from ._pool import Lease

__all__ = ["SSHFileAdaptor"]

#: Seconds an SFTP channel may take to close before its slot is given back anyway.
_CLOSE_WAIT = 5.0


class SSHFileAdaptor(SSHBase, FileAdaptor):
    """Files on one ``ssh://`` endpoint over SFTP, on the session's pooled connections.

    Paths on the remote side are relative to the login directory unless absolute.
    Copies follow ``scp -rp``: a directory is copied with its tree, modes and times
    are kept, and a destination that is an existing directory receives the source
    inside it. Large files are streamed in blocks with several requests in flight.
    """

    @asynccontextmanager
    async def _sftp(self) -> AsyncIterator[asyncssh.SFTPClient]:
        pool, target = self._endpoint()

        async def opener(conn: asyncssh.SSHClientConnection) -> asyncssh.SFTPClient:
            return await conn.start_sftp_client()

        async def close(lease: Lease, sftp: asyncssh.SFTPClient) -> None:
            sftp.exit()
            # The slot is given back once the channel closed, even if this is cancelled.
            await pool.cleanups.run(
                lambda: _release_when_closed(lease, sftp),
                what=f"closing an SFTP channel to {target.where}",
            )

        lease, sftp = await pool.channel(target, opener, close)
        try:
            yield sftp
        finally:
            await close(lease, sftp)

    async def put(self, local: str | Path, remote: str) -> None:
        """Copy a local file or directory tree to ``remote``.

        Raises:
            DoesNotExist: ``local`` is missing, or the remote parent directory is.
            PermissionDenied: the remote side refuses the write.
            ConnectionLost, NoSuccess, Timeout, AuthenticationFailed: the transfer failed.

        Cancelling it stops the transfer and closes the SFTP channel; what was
        written so far stays on the remote side.
        """
        where = self.target.where
        with map_errors(where, f"putting {os.fspath(local)!r} to {remote!r}"):
            async with self._sftp() as sftp:
                await sftp.put(os.fspath(local), remote, recurse=True, preserve=True)

    async def get(self, remote: str, local: str | Path) -> None:
        """Copy ``remote`` (a file or directory tree) to a local path.

        Raises:
            DoesNotExist: ``remote`` is missing.
            PermissionDenied: reading it, or writing ``local``, is refused.
            ConnectionLost, NoSuccess, Timeout, AuthenticationFailed: the transfer failed.

        Cancelling it stops the transfer; a partly written local file stays.
        """
        where = self.target.where
        with map_errors(where, f"getting {remote!r} to {os.fspath(local)!r}"):
            async with self._sftp() as sftp:
                await sftp.get(remote, os.fspath(local), recurse=True, preserve=True)

    async def list(self, remote: str) -> Sequence[str]:
        """Names in the remote directory ``remote`` (without ``.`` and ``..``), sorted.

        Raises:
            DoesNotExist: no such directory.
            PermissionDenied, ConnectionLost, NoSuccess: listing failed.
        """
        with map_errors(self.target.where, f"listing {remote!r}"):
            async with self._sftp() as sftp:
                names = await sftp.listdir(remote)
        return sorted(name for name in names if name not in (".", ".."))

    async def remove(self, remote: str) -> None:
        """Remove a remote file, or an empty directory.

        Raises:
            DoesNotExist: no such file.
            PermissionDenied, NoSuccess: removing failed (a directory not empty).
        """
        with map_errors(self.target.where, f"removing {remote!r}"):
            async with self._sftp() as sftp:
                if await sftp.isdir(remote):
                    await sftp.rmdir(remote)
                else:
                    await sftp.remove(remote)


async def _release_when_closed(lease: Lease, sftp: asyncssh.SFTPClient) -> None:
    """Give the slot back once the server has closed the SFTP channel (bounded): a slot
    given back earlier could be refused by the server, still counting the channel."""
    try:
        async with concurrency.move_on_after(_CLOSE_WAIT):
            await sftp.wait_closed()
    finally:
        lease.release()
