"""Files of one bucket (``s3://<bucket>``): put, get, list, remove; streamed.

A remote path is an object key (a leading ``/`` is dropped); a "directory" is a key
prefix ending in ``/``. Files up to ``part_size`` go in one PutObject; larger ones by
multipart upload, ``concurrency`` parts in flight, each read from disk in a worker
thread: a transfer holds at most ``part_size * concurrency`` bytes in memory, never
the whole file. A failed or cancelled multipart upload is aborted (one of the
session's cleanups: shielded from the cancellation, bounded, waited for when the
session closes), so no parts are left billed. Downloads stream the object in 1 MiB
chunks into a temporary file beside the target, renamed into place once complete (a
cancelled download leaves no partial file).

Errors: S3's are mapped by the shared client; this machine's file errors become
DoesNotExist, PermissionDenied, BadParameter or NoSuccess naming the path. Parts and
files go up concurrently, and never leave as an ``ExceptionGroup``: a failed multipart
upload raises its first error; a directory put in which one file failed raises that
file's error, and one in which several failed raises :class:`~aiores.FanOutError`
carrying each (``except* DoesNotExist`` still matches it). Cancelling a transfer
always raises ``CancelledError``, whatever its parts raised meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from aiores import (
    AioresError,
    BadParameter,
    DoesNotExist,
    IncorrectURL,
    NoSuccess,
    PermissionDenied,
)
from aiores.adaptor import URL, AdaptorEnv, FileAdaptor
from aiores_ec2 import aws_errors

from ._common import MiB, S3Client, parse_s3_options, together

__all__ = ["S3FileAdaptor"]

#: The most parts one multipart upload may have (S3's limit).
MAX_PARTS = 10_000
#: Bytes read from a download stream at a time.
CHUNK = MiB
#: Seconds an abort of a failed multipart upload may take.
ABORT_TIMEOUT = 30.0


def _key(remote: str) -> str:
    key = remote.lstrip("/")
    if not key:
        raise BadParameter("an s3:// path must name an object key, not the bucket root")
    return key


class S3FileAdaptor(S3Client, FileAdaptor):
    """Objects of one bucket (see the module docstring)."""

    _role = "file adaptor"

    def __init__(self, url: URL, env: AdaptorEnv) -> None:
        super().__init__(url, env)
        if not url.host:
            raise IncorrectURL(f"{url}: name the bucket: s3://<bucket>")
        self.bucket = url.host
        self.options = parse_s3_options(url)

    async def aclose(self) -> None:
        """Leave the client (the session finishes aborts under way before it closes us)."""
        await self._leave()

    # -- put ----------------------------------------------------------------------------
    async def put(self, local: str | Path, remote: str) -> None:
        """Upload a file to key ``remote`` (under it, keeping its name, if ``remote``
        ends with ``/``), or a directory's files under prefix ``remote``.

        Raises:
            DoesNotExist: ``local`` does not exist, or the bucket does not.
            AioresError: S3 refused (transient failures were retried first).

        Cancelling it aborts a multipart upload under way.
        """
        path = Path(local)
        is_dir = await asyncio.to_thread(path.is_dir)
        if not is_dir:
            # "runs/" names a prefix: the file keeps its name under it.
            key = remote + path.name if remote.endswith("/") else remote
            await self._put_file(path, _key(key))
            return
        with _local_errors(f"read the directory {str(path)!r}"):
            files = await asyncio.to_thread(_walk, path)
        prefix = remote.strip("/")
        slots = asyncio.Semaphore(self.options.concurrency)

        async def one(rel: str) -> None:
            async with slots:
                key = f"{prefix}/{rel}" if prefix else rel
                await self._put_file(path / rel, key)

        await together(
            [functools.partial(one, rel) for rel in files],
            several=f"putting {str(path)!r} to s3://{self.bucket}/{prefix}",
        )

    async def _put_file(self, path: Path, key: str) -> None:
        try:
            fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
        except FileNotFoundError:
            raise DoesNotExist(f"no local file {str(path)!r}") from None
        except OSError as exc:
            raise _local_error(f"read {str(path)!r}", exc) from exc
        try:
            with _local_errors(f"read {str(path)!r}"):
                size = (await asyncio.to_thread(os.fstat, fd)).st_size
            if size <= self.options.part_size:
                with _local_errors(f"read {str(path)!r}"):
                    body = await asyncio.to_thread(os.pread, fd, size, 0)
                await self.api.call("PutObject", Bucket=self.bucket, Key=key, Body=body)
            else:
                await self._multipart(fd, size, key)
        finally:
            await asyncio.to_thread(os.close, fd)

    async def _multipart(self, fd: int, size: int, key: str) -> None:
        part_size = max(self.options.part_size, math.ceil(size / MAX_PARTS))
        parts = math.ceil(size / part_size)
        answer = await self.api.call("CreateMultipartUpload", Bucket=self.bucket, Key=key)
        upload_id = answer["UploadId"]
        slots = asyncio.Semaphore(self.options.concurrency)
        etags: dict[int, str] = {}

        async def one(number: int) -> None:
            async with slots:
                offset = (number - 1) * part_size
                with _local_errors(f"read part {number} of {key!r}"):
                    length = min(part_size, size - offset)
                    body = await asyncio.to_thread(os.pread, fd, length, offset)
                done = await self.api.call(
                    "UploadPart",
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=body,
                )
                etags[number] = done["ETag"]

        try:
            await together([functools.partial(one, n) for n in range(1, parts + 1)])
            await self.api.call(
                "CompleteMultipartUpload",
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={
                    "Parts": [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
                },
            )
        except BaseException:
            await self._abort(key, upload_id)
            raise

    async def _abort(self, key: str, upload_id: str) -> None:
        """Abort an upload: one of the session's cleanups (runs to its end or bound
        whatever cancels the caller; the session waits for it; a failure is logged)."""

        api = self.api

        async def abort() -> None:
            with contextlib.suppress(DoesNotExist):  # aborted or completed already
                await api.call(
                    "AbortMultipartUpload", Bucket=self.bucket, Key=key, UploadId=upload_id
                )

        await self.env.cleanups.run(
            abort,
            what=f"aborting the multipart upload of s3://{self.bucket}/{key}",
            timeout=ABORT_TIMEOUT,
        )

    # -- get ----------------------------------------------------------------------------
    async def get(self, remote: str, local: str | Path) -> None:
        """Download key ``remote`` (or every key under prefix ``remote/``) to ``local``.

        A file lands at ``local``, or inside it if ``local`` is a directory; a prefix
        lands as a directory tree at ``local``.

        Raises:
            DoesNotExist: no such key or prefix, or no such bucket.

        Cancelling it leaves no partial file.
        """
        target = Path(local)
        if not remote.endswith("/"):
            try:
                await self._get_file(_key(remote), target)
                return
            except DoesNotExist:
                pass  # perhaps a prefix
        prefix = remote.strip("/") + "/"
        keys = [k for k in await self._keys(prefix) if not k.endswith("/")]
        if not keys:
            raise DoesNotExist(f"no object or prefix {remote!r} in s3://{self.bucket}")
        for key in keys:
            await self._get_file(key, target / key[len(prefix) :], into_dir=False)

    async def _get_file(self, key: str, target: Path, *, into_dir: bool = True) -> None:
        if into_dir and await asyncio.to_thread(target.is_dir):
            target = target / key.rsplit("/", 1)[-1]
        answer = await self.api.call("GetObject", Bucket=self.bucket, Key=key)
        body = answer["Body"]
        tmp = target.with_name(f".{target.name}.aiores-{secrets.token_hex(4)}")
        try:
            with _local_errors(f"write {str(target)!r}"):
                await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
                handle = await asyncio.to_thread(open, tmp, "wb")
        except BaseException:
            body.close()
            raise
        try:
            try:
                with aws_errors("s3", "GetObject"), _local_errors(f"write {str(target)!r}"):
                    while chunk := await body.read(CHUNK):
                        await asyncio.to_thread(handle.write, chunk)
            finally:
                body.close()
                with _local_errors(f"write {str(target)!r}"):
                    await asyncio.to_thread(handle.close)
            with _local_errors(f"write {str(target)!r}"):
                await asyncio.to_thread(os.replace, tmp, target)
        except BaseException:
            await asyncio.to_thread(_unlink, tmp)
            raise

    # -- list, remove -------------------------------------------------------------------
    async def _keys(self, prefix: str, delimiter: str | None = None) -> list[str]:
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            params["Delimiter"] = delimiter
        names: list[str] = []
        while True:
            page = await self.api.call("ListObjectsV2", **params)
            names.extend(o["Key"] for o in page.get("Contents", []))
            names.extend(p["Prefix"] for p in page.get("CommonPrefixes", []))
            if not page.get("IsTruncated"):
                return names
            params["ContinuationToken"] = page["NextContinuationToken"]

    async def list(self, remote: str) -> Sequence[str]:
        """Names under prefix ``remote`` (one level; sub-prefixes end with ``/``)."""
        prefix = remote.strip("/")
        prefix = prefix + "/" if prefix else ""
        return sorted(k[len(prefix) :] for k in await self._keys(prefix, "/"))

    async def remove(self, remote: str) -> None:
        """Delete key ``remote`` (deleting a key that is not there is no error)."""
        await self.api.call("DeleteObject", Bucket=self.bucket, Key=_key(remote))


def _local_error(action: str, exc: OSError) -> AioresError:
    """The aiores error for an OSError of this machine's files."""
    text = f"cannot {action}: {exc.strerror or exc}"
    if isinstance(exc, FileNotFoundError):
        return DoesNotExist(text)
    if isinstance(exc, PermissionError):
        return PermissionDenied(text)
    if isinstance(exc, IsADirectoryError | NotADirectoryError | FileExistsError):
        return BadParameter(text)
    return NoSuccess(text)


@contextlib.contextmanager
def _local_errors(action: str) -> Iterator[None]:
    """Map OSErrors of this machine's files inside to aiores errors."""
    try:
        yield
    except OSError as exc:
        raise _local_error(action, exc) from exc


def _walk_error(exc: OSError) -> None:
    raise exc


def _walk(root: Path) -> list[str]:
    """Blocking: the files under ``root``, relative, with ``/`` separators.

    Raises:
        OSError: a directory under it cannot be read (never skipped silently).
    """
    found = []
    for base, _, files in os.walk(root, onerror=_walk_error):
        for name in files:
            found.append(os.path.relpath(os.path.join(base, name), root).replace(os.sep, "/"))
    return sorted(found)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
