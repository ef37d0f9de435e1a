"""Fixtures for the s3:// tests: the moto server tests/ec2 uses (one per test process)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import aioboto3
import pytest
import pytest_asyncio

import aiores
from aiores_ec2.testing import ACCESS_KEY, SECRET_KEY, MotoServer

os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

#: Seconds any one await in these tests may take before the test fails.
STEP = 60.0


@pytest.fixture
def moto() -> MotoServer:
    """The process's moto server, with nothing left from earlier tests."""
    server = MotoServer.shared()
    server.wait_ready()
    server.reset_sync()
    return server


def s3_url(server: MotoServer, bucket: str = "", **options: str) -> str:
    opts = {"endpoint": server.url, **options}
    return f"s3://{bucket}?" + "&".join(f"{k}={v}" for k, v in opts.items())


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiores.Session]:
    context = aiores.AWSContext(access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)
    async with aiores.Session(contexts=[context]) as s:
        yield s


@contextlib.asynccontextmanager
async def raw_s3(server: MotoServer) -> AsyncIterator[Any]:
    """A plain aioboto3 S3 client of ``server``, to check what is really there."""
    boto = aioboto3.Session(
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name="us-east-1"
    )
    async with boto.client("s3", endpoint_url=server.url) as client:
        yield client
    await asyncio.sleep(0.01)  # aiohttp closes its sockets on the next iterations


async def called(server: MotoServer, action: str) -> None:
    """Return once the server has seen ``action`` (it counts a call as it arrives)."""
    async with asyncio.timeout(STEP):
        while not (await server.calls()).get(action):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
