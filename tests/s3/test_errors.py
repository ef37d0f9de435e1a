"""s3:// errors leave as aiores errors: never a bare ExceptionGroup, OSError or botocore error.

Transfers run parts and files concurrently in task groups; what the group raises is
mapped where it leaves: one failure as its own error, several as FanOutError, and a
cancellation of the caller always as CancelledError.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

import aiores
from aiores import StorageDescription
from aiores_ec2.testing import MotoServer
from aiores_s3 import S3FileAdaptor
from aiores_s3._common import together

from .conftest import STEP, called, s3_url

pytestmark = pytest.mark.asyncio

MiB = 1024 * 1024


def not_a_bare_group(exc: BaseException) -> None:
    assert isinstance(exc, aiores.AioresError), repr(exc)
    if isinstance(exc, BaseExceptionGroup):
        assert isinstance(exc, aiores.FanOutError), repr(exc)


async def bucket_files(
    session: aiores.Session, moto: MotoServer
) -> tuple[aiores.Resource, S3FileAdaptor]:
    bucket = await session.manager(s3_url(moto, empty="1")).acquire(StorageDescription())
    assert bucket.access is not None
    files = await session.file_adaptor(bucket.access)
    assert isinstance(files, S3FileAdaptor)
    return bucket, files


def tree(root: Path, count: int) -> Path:
    root.mkdir()
    for i in range(count):
        (root / f"f{i}").write_text(str(i))
    return root


# -- the mapping itself, with failures whose timing is certain -------------------------
async def test_one_failure_leaves_as_itself() -> None:
    async def ok() -> int:
        await asyncio.sleep(0)
        return 1

    async def fails() -> int:
        await asyncio.sleep(0)
        raise aiores.DoesNotExist("gone")

    assert await together([ok, ok]) == [1, 1]
    with pytest.raises(aiores.DoesNotExist, match="gone") as caught:
        await together([ok, fails, ok], several="putting")
    not_a_bare_group(caught.value)


async def test_several_failures_leave_as_a_fan_out_error_or_the_first() -> None:
    async def fails(n: int) -> None:
        await asyncio.sleep(0)  # both fail in one turn of the loop
        raise aiores.PermissionDenied(f"no {n}")

    calls = [lambda: fails(1), lambda: fails(2)]
    with pytest.raises(aiores.FanOutError, match="putting: 2 of 2 failed") as caught:
        await together(calls, several="putting")
    assert [str(e) for e in caught.value.exceptions] == ["no 1", "no 2"]
    # except* sees through it, as through any exception group.
    matched = False
    try:
        await together(calls, several="putting")
    except* aiores.PermissionDenied:
        matched = True
    assert matched
    with pytest.raises(aiores.PermissionDenied, match="no 1") as first:
        await together(calls)  # the parts of one item: the first error
    not_a_bare_group(first.value)


async def test_a_foreign_error_leaves_as_no_success() -> None:
    async def fails() -> None:
        raise OSError(5, "Input/output error")

    with pytest.raises(aiores.NoSuccess) as caught:
        await together([fails])
    assert isinstance(caught.value.__cause__, OSError)


async def test_cancellation_wins_over_a_failure_in_the_group() -> None:
    started = asyncio.Event()

    async def fails_when_cancelled() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            raise aiores.NoSuccess("cleanup failed") from None

    task = asyncio.ensure_future(together([fails_when_cancelled]))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# -- against moto ---------------------------------------------------------------------
async def test_directory_put_into_a_missing_bucket(
    moto: MotoServer, session: aiores.Session, tmp_path: Path
) -> None:
    src = await asyncio.to_thread(tree, tmp_path / "src", 8)
    files = await session.file_adaptor(s3_url(moto, "no-such-bucket"))
    async with asyncio.timeout(STEP):
        with pytest.raises(aiores.AioresError) as caught:
            await files.put(src, "tree")
    not_a_bare_group(caught.value)
    leaves = (
        caught.value.exceptions if isinstance(caught.value, aiores.FanOutError) else [caught.value]
    )
    assert all(isinstance(e, aiores.DoesNotExist) for e in leaves), leaves


async def test_directory_put_refused_and_a_dangling_link(
    moto: MotoServer, session: aiores.Session, tmp_path: Path
) -> None:
    bucket, files = await bucket_files(session, moto)
    src = await asyncio.to_thread(tree, tmp_path / "src", 3)
    await moto.set_faults(error={"S3:PUT:object": [100, 403, "AccessDenied"]})
    with pytest.raises(aiores.AioresError) as caught:
        await files.put(src, "tree")
    not_a_bare_group(caught.value)
    leaves = (
        caught.value.exceptions if isinstance(caught.value, aiores.FanOutError) else [caught.value]
    )
    assert all(isinstance(e, aiores.PermissionDenied) for e in leaves), leaves
    await moto.set_faults(clear=True)
    os.symlink(tmp_path / "nowhere", src / "dangling")
    with pytest.raises(aiores.DoesNotExist, match="dangling") as missing:
        await files.put(src, "tree")
    not_a_bare_group(missing.value)
    await bucket.destroy()


async def test_multipart_part_refused_raises_its_error_and_aborts(
    moto: MotoServer, session: aiores.Session, tmp_path: Path
) -> None:
    bucket, files = await bucket_files(session, moto)
    big = tmp_path / "big.bin"
    await asyncio.to_thread(big.write_bytes, os.urandom(11 * MiB))  # 2 parts of 8 MiB
    await moto.set_faults(error={"S3:PUT:object:uploadId": [100, 403, "AccessDenied"]})
    async with asyncio.timeout(STEP):
        with pytest.raises(aiores.PermissionDenied) as caught:
            await files.put(big, "big.bin")
    not_a_bare_group(caught.value)
    calls = await moto.calls()
    assert calls["S3:DELETE:object:uploadId"] == 1  # AbortMultipartUpload
    await moto.set_faults(clear=True)
    assert await files.list("") == []
    await bucket.destroy()


async def test_cancelled_directory_put_raises_cancelled_error(
    moto: MotoServer, session: aiores.Session, tmp_path: Path
) -> None:
    bucket, files = await bucket_files(session, moto)
    src = await asyncio.to_thread(tree, tmp_path / "src", 6)
    await moto.set_faults(delay_before={"S3:PUT:object": 0.3})
    put = asyncio.ensure_future(files.put(src, "tree"))
    await called(moto, "S3:PUT:object")
    put.cancel()
    with pytest.raises(asyncio.CancelledError):
        await put
    await bucket.destroy()


async def test_get_into_an_unwritable_place(
    moto: MotoServer, session: aiores.Session, tmp_path: Path
) -> None:
    bucket, files = await bucket_files(session, moto)
    note = tmp_path / "note"
    await asyncio.to_thread(note.write_text, "x")
    await files.put(note, "note")
    blocker = tmp_path / "file"
    await asyncio.to_thread(blocker.write_text, "not a directory")
    with pytest.raises(aiores.BadParameter) as caught:
        await files.get("note", blocker / "sub" / "note")
    not_a_bare_group(caught.value)
    await bucket.destroy()


async def test_destroying_several_missing_or_refused_buckets(
    moto: MotoServer, session: aiores.Session
) -> None:
    mgr = session.manager(s3_url(moto))
    buckets = await mgr.acquire_many(StorageDescription(), 3)
    await moto.set_faults(error={"S3:DELETE:bucket": [100, 403, "AccessDenied"]})
    with pytest.raises(aiores.AioresError) as caught:
        await mgr.destroy(buckets)
    not_a_bare_group(caught.value)
    await moto.set_faults(clear=True)
    await mgr.destroy(buckets)
