"""Files on this host: the ``local://`` file adaptor (copies, in a worker thread).

``put`` and ``get`` follow the ``scp -r``/SFTP convention, as the SSH adaptor does: when
the destination is an existing directory the source is copied into it under its own
name; otherwise it is copied to the destination path. Directories are copied
recursively; files keep their permission bits and times, symbolic links stay links.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from aiores import (
    AioresError,
    BadParameter,
    DoesNotExist,
    IncorrectState,
    NoSuccess,
    PermissionDenied,
)
from aiores.adaptor import URL, AdaptorEnv, FileAdaptor

from ._options import parse_options

__all__ = ["LocalFileAdaptor"]


@contextlib.contextmanager
def _os_errors(action: str) -> Iterator[None]:
    """Map OSErrors to the aiores tree, naming the path involved."""
    try:
        yield
    except shutil.Error as exc:  # copytree gathers per-file errors
        raise NoSuccess(f"cannot {action}: {exc}") from exc
    except OSError as exc:
        where = f"{exc.filename!r}: " if exc.filename else ""
        error: type[AioresError]
        if isinstance(exc, FileNotFoundError):
            error = DoesNotExist
        elif isinstance(exc, PermissionError):
            error = PermissionDenied
        elif isinstance(exc, NotADirectoryError | IsADirectoryError | FileExistsError):
            error = BadParameter
        elif exc.errno == errno.ENOTEMPTY:
            error = IncorrectState
        else:
            error = NoSuccess
        raise error(f"cannot {action}: {where}{exc.strerror or exc}") from exc


def _copy(source: str, target: str) -> None:
    """Blocking: copy a file or directory tree, scp-style."""
    if not os.path.lexists(source):
        raise FileNotFoundError(2, "No such file or directory", source)
    if os.path.isdir(target):
        target = os.path.join(target, os.path.basename(os.path.normpath(source)))
    if os.path.isdir(source) and not os.path.islink(source):
        shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)
    else:
        shutil.copy2(source, target, follow_symlinks=False)


def _remove(path: str) -> None:
    """Blocking: remove a file, a link or an empty directory."""
    if os.path.isdir(path) and not os.path.islink(path):
        os.rmdir(path)
    else:
        os.unlink(path)


class LocalFileAdaptor(FileAdaptor):
    """Copies, lists and removes files on this host; paths are local paths."""

    def __init__(self, url: URL, env: AdaptorEnv) -> None:
        super().__init__(url, env)
        parse_options(url)

    async def put(self, local: str | Path, remote: str) -> None:
        """Copy the file or directory ``local`` to ``remote`` (into it if it is a directory).

        Raises:
            DoesNotExist: ``local`` (or the destination's parent) does not exist.
            PermissionDenied: a file cannot be read or written.
            NoSuccess: some files of a directory could not be copied (all are named).

        Cancelling it returns at once; the copy already under way in its worker thread
        runs to its end.
        """
        with _os_errors(f"copy {os.fspath(local)!r} to {remote!r}"):
            await asyncio.to_thread(_copy, os.fspath(local), remote)

    async def get(self, remote: str, local: str | Path) -> None:
        """Copy the file or directory ``remote`` to ``local`` (into it if it is a directory).

        Raises and cancellation: as :meth:`put`.
        """
        with _os_errors(f"copy {remote!r} to {os.fspath(local)!r}"):
            await asyncio.to_thread(_copy, remote, os.fspath(local))

    async def list(self, remote: str) -> Sequence[str]:
        """The sorted names in the directory ``remote``.

        Raises:
            DoesNotExist: it does not exist.
            BadParameter: it is not a directory.
            PermissionDenied: it cannot be read.
        """
        with _os_errors(f"list {remote!r}"):
            return sorted(await asyncio.to_thread(os.listdir, remote))

    async def remove(self, remote: str) -> None:
        """Remove the file, link or empty directory ``remote``.

        Raises:
            DoesNotExist: it does not exist.
            IncorrectState: it is a directory that is not empty.
            PermissionDenied: it cannot be removed.
        """
        with _os_errors(f"remove {remote!r}"):
            await asyncio.to_thread(_remove, remote)
