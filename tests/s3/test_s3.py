"""s3:// against moto: buckets as resources, streamed multipart transfers, cancellation."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

import aiores
from aiores import ResourceState, StorageDescription
from aiores_ec2.testing import ACCESS_KEY, SECRET_KEY, MotoServer
from aiores_s3 import S3FileAdaptor, S3ResourceAdaptor

from .conftest import STEP, called, raw_s3, s3_url

pytestmark = pytest.mark.asyncio

MiB = 1024 * 1024


def make_file(path: Path, size: int) -> str:
    """Blocking: a file of ``size`` pseudo-random bytes; returns its sha256."""
    digest = hashlib.sha256()
    block = os.urandom(MiB)
    with path.open("wb") as handle:
        left = size
        while left:
            chunk = block[: min(MiB, left)]
            handle.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


async def files_of(session: aiores.Session, access: str | None) -> S3FileAdaptor:
    assert access is not None
    files = await session.file_adaptor(access)
    assert isinstance(files, S3FileAdaptor)
    return files


async def test_bucket_lifecycle_and_round_trip_with_a_50_mb_file(
    moto: MotoServer, session: aiores.Session, tmp_path: Path
) -> None:
    mgr = session.manager(s3_url(moto))
    bucket = await mgr.acquire(StorageDescription(tags={"results"}))
    assert bucket.rtype == "storage"
    assert bucket.state is ResourceState.ACTIVE
    assert bucket.tags == {"results"}
    assert bucket.native_id.startswith("aiores-t-")
    assert bucket.access is not None
    assert aiores.URL.parse(bucket.access).host == bucket.native_id
    assert aiores.URL.parse(bucket.access).params == {"endpoint": moto.url}
    files = await files_of(session, bucket.access)
    big = tmp_path / "big.bin"
    small = tmp_path / "small.txt"
    digest = await asyncio.to_thread(make_file, big, 50 * MiB)
    await asyncio.to_thread(small.write_text, "hello\n")
    async with asyncio.timeout(STEP):
        await files.put(big, "runs/1/big.bin")
        await files.put(small, "/runs/")
    calls = await moto.calls()
    # 50 MiB in 8 MiB parts: 7 parts in one multipart upload; the small file in one PUT.
    assert calls["S3:PUT:object:uploadId"] == 7
    assert calls["S3:POST:object:uploads"] == 1
    assert calls["S3:PUT:object"] == 1
    assert await files.list("runs") == ["1/", "small.txt"]
    back = tmp_path / "back"
    await asyncio.to_thread(back.mkdir)
    async with asyncio.timeout(STEP):
        await files.get("runs/1/big.bin", back)
        await files.get("runs", tmp_path / "tree")
    assert await asyncio.to_thread(sha256, back / "big.bin") == digest
    assert (tmp_path / "tree" / "small.txt").read_text() == "hello\n"
    assert (tmp_path / "tree" / "1" / "big.bin").stat().st_size == 50 * MiB
    with pytest.raises(aiores.DoesNotExist):
        await files.get("nothing/here", tmp_path / "x")
    # Not empty: refused, never emptied unasked.
    with pytest.raises(aiores.IncorrectState, match="not empty"):
        await bucket.destroy()
    await files.remove("runs/1/big.bin")
    await files.remove("runs/small.txt")
    await bucket.destroy()
    assert bucket.state is ResourceState.CANCELED


async def test_many_buckets_one_list_per_tick_and_empty_option(
    moto: MotoServer, session: aiores.Session, tmp_path: Path
) -> None:
    url = s3_url(moto, empty="1")
    mgr = session.manager(url)
    buckets = await mgr.acquire_many(StorageDescription(tags={"a"}), 5)
    named = await mgr.acquire(StorageDescription(name="aiores-named-bucket"))
    assert named.native_id == "aiores-named-bucket"
    with pytest.raises(aiores.IncorrectState, match="exists already"):
        await mgr.acquire(StorageDescription(name="aiores-named-bucket"))
    listed = await mgr.list(tags="a")
    assert sorted(b.native_id for b in listed) == sorted(b.native_id for b in buckets)
    adaptor = await session.resource_adaptor(url)
    assert isinstance(adaptor, S3ResourceAdaptor)
    await moto.reset_calls()
    described = await adaptor.describe([b.native_id for b in buckets] + ["nope"])
    assert set(described) == {b.native_id for b in buckets}
    assert (await moto.calls()) == {"S3:GET:service": 1}
    files = await files_of(session, named.access)
    note = tmp_path / "note"
    await asyncio.to_thread(note.write_text, "x")
    await files.put(note, "a/b/note")
    await mgr.destroy([*buckets, named])  # empty=1: emptied first
    assert await mgr.list() == []


async def test_cancelled_upload_is_aborted(
    moto: MotoServer, session: aiores.Session, tmp_path: Path
) -> None:
    mgr = session.manager(s3_url(moto, empty="1"))
    bucket = await mgr.acquire(StorageDescription())
    files = await files_of(session, bucket.access)
    big = tmp_path / "big.bin"
    await asyncio.to_thread(make_file, big, 20 * MiB)
    await moto.set_faults(delay_before={"S3:PUT:object:uploadId": 0.5})
    put = asyncio.ensure_future(files.put(big, "big.bin"))
    await called(moto, "S3:PUT:object:uploadId")
    put.cancel()
    with pytest.raises(asyncio.CancelledError):
        await put
    calls = await moto.calls()
    assert calls["S3:DELETE:object:uploadId"] == 1  # AbortMultipartUpload
    assert await files.list("") == []
    await bucket.destroy()


async def test_an_abort_runs_on_through_a_second_cancel_and_the_session_waits_for_it(
    moto: MotoServer, tmp_path: Path
) -> None:
    context = aiores.AWSContext(access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)
    session = aiores.Session(contexts=[context])
    async with session:
        bucket = await session.manager(s3_url(moto)).acquire(StorageDescription())
        files = await files_of(session, bucket.access)
        big = tmp_path / "big.bin"
        await asyncio.to_thread(make_file, big, 9 * MiB)  # 2 parts
        await moto.set_faults(
            delay_before={"S3:PUT:object:uploadId": 0.3, "S3:DELETE:object:uploadId": 0.5}
        )
        put = asyncio.ensure_future(files.put(big, "big.bin"))
        await called(moto, "S3:PUT:object:uploadId")
        put.cancel()
        # The abort is under way (the server holds it 0.5 s): cancel the put again.
        await called(moto, "S3:DELETE:object:uploadId")
        put.cancel()
        async with asyncio.timeout(STEP):
            with pytest.raises(asyncio.CancelledError):
                await put
    # Closing the session waited for the abort, which the second cancel did not cut off.
    assert (await moto.calls())["S3:DELETE:object:uploadId"] == 1
    async with raw_s3(moto) as client:
        uploads = await client.list_multipart_uploads(Bucket=bucket.native_id)
    assert uploads.get("Uploads", []) == []


async def test_adaptors_of_a_session_share_one_client_closed_with_the_session(
    moto: MotoServer,
) -> None:
    context = aiores.AWSContext(access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)
    async with aiores.Session(contexts=[context]) as other:
        async with aiores.Session(contexts=[context]) as session:
            bucket = await session.manager(s3_url(moto, empty="1")).acquire(StorageDescription())
            buckets = await session.resource_adaptor(s3_url(moto, empty="1"))
            files = await files_of(session, bucket.access)
            assert isinstance(buckets, S3ResourceAdaptor)
            client = files.api.client
            assert buckets.api.client is client  # one client for the endpoint
            elsewhere = await files_of(other, bucket.access)
            assert elsewhere.api.client is not client  # each session its own
            connections = http_sessions(client)
            assert connections
            assert not any(c.closed for c in connections)
        # The session closed its adaptors, then the client (its connections).
        with pytest.raises(aiores.IncorrectState):
            files.api  # noqa: B018
        assert all(c.closed for c in connections)
        # The other session's client is still open.
        assert await elsewhere.list("") == []
        mgr = other.manager(s3_url(moto))
        await mgr.destroy(await mgr.list())


def http_sessions(client: Any) -> list[Any]:
    """The aiohttp sessions (connection pools) an aiobotocore client holds open."""
    return list(client._endpoint.http_session._sessions.values())


async def test_cancelled_acquire_leaves_no_bucket(
    moto: MotoServer, session: aiores.Session
) -> None:
    await moto.set_faults(delay_after={"S3:PUT:bucket": 0.5})
    mgr = session.manager(s3_url(moto))
    acquire = asyncio.ensure_future(mgr.acquire_many(StorageDescription(), 3))
    await called(moto, "S3:PUT:bucket")
    acquire.cancel()
    with pytest.raises(asyncio.CancelledError):
        await acquire
    assert await mgr.list() == []


async def test_slow_down_and_5xx_are_retried(
    moto: MotoServer, session: aiores.Session, tmp_path: Path
) -> None:
    mgr = session.manager(s3_url(moto, empty="1"))
    bucket = await mgr.acquire(StorageDescription())
    files = await files_of(session, bucket.access)
    data = tmp_path / "data.bin"
    digest = await asyncio.to_thread(make_file, data, 12 * MiB)
    await moto.set_faults(
        error={
            "S3:PUT:object:uploadId": [2, 503, "SlowDown"],
            "S3:GET:object": [1, 500, "InternalError"],
        }
    )
    async with asyncio.timeout(STEP):
        await files.put(data, "data.bin")
        await files.get("data.bin", tmp_path / "back.bin")
    assert await asyncio.to_thread(sha256, tmp_path / "back.bin") == digest
    calls = await moto.calls()
    assert calls["S3:PUT:object:uploadId"] == 4  # 2 parts, 2 refused and tried again
    await bucket.destroy()
