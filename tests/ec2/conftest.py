"""Fixtures for the ec2:// tests: moto servers on loopback, each in its own process.

One moto server per test session (``moto``), reset before every test; a second one
with moto's validation of images, instance types and key pairs turned on
(``moto_validating``), started only if a test asks for it. Every test opens its
sessions with dummy credentials for the endpoint; nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import aioboto3
import pytest
import pytest_asyncio

import aiores
from aiores_ec2.testing import ACCESS_KEY, SECRET_KEY, MotoServer

__all__ = [
    "REGION",
    "alive",
    "cloud_config",
    "ec2_url",
    "raw_client",
]

REGION = "us-east-1"
#: An AMI moto knows (validation on or off).
IMAGE = "ami-12c6146b"
#: Seconds any one await in these tests may take before the test fails.
STEP = 30.0

# Never reach for instance metadata (169.254.169.254) when credentials are missing.
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="session")
def moto_servers() -> tuple[MotoServer, MotoServer]:
    """Two servers, launched at once (each takes seconds to import moto): plain, validating.

    Shared with tests/s3 and stopped when the test process exits.
    """
    return MotoServer.shared(), MotoServer.shared(validation=True)


@pytest.fixture
def moto(moto_servers: tuple[MotoServer, MotoServer]) -> MotoServer:
    """The session's moto server, with no resources, faults or counts left from before."""
    server = moto_servers[0]
    server.wait_ready()
    server.reset_sync()
    return server


@pytest.fixture
def moto_validating(moto_servers: tuple[MotoServer, MotoServer]) -> MotoServer:
    """A moto server that validates images, instance types and key pairs."""
    server = moto_servers[1]
    server.wait_ready()
    server.reset_sync()
    return server


def ec2_url(server: MotoServer, **options: str) -> str:
    """An ec2:// URL for ``server``: SSH admitted from 127.0.0.1 only, quick polling."""
    opts = {"endpoint": server.url, "ssh_cidr": "127.0.0.1/32", "poll": "0.2", **options}
    return f"ec2://{REGION}?" + "&".join(f"{k}={v}" for k, v in opts.items())


def aws_context() -> aiores.AWSContext:
    return aiores.AWSContext(access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiores.Session]:
    async with aiores.Session(contexts=[aws_context()]) as s:
        yield s


@contextlib.asynccontextmanager
async def raw_client(server: MotoServer, service: str = "ec2") -> AsyncIterator[Any]:
    """A plain aioboto3 client of ``server``, to check what is really there."""
    boto = aioboto3.Session(
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=REGION
    )
    async with boto.client(service, endpoint_url=server.url) as client:
        yield client
    await asyncio.sleep(0.01)  # aiohttp closes its sockets on the next iterations


async def alive(server: MotoServer) -> list[dict[str, Any]]:
    """Every instance of the server that is not terminated (nor shutting down)."""
    async with raw_client(server) as client:
        answer = await client.describe_instances(
            Filters=[
                {
                    "Name": "instance-state-name",
                    "Values": ["pending", "running", "stopping", "stopped"],
                }
            ]
        )
    return [i for r in answer["Reservations"] for i in r["Instances"]]


def cloud_config(user_data_b64: str) -> tuple[list[str], dict[str, Any]]:
    """(the MIME part types, aiores's cloud-config) of an instance's user data."""
    message = email.message_from_bytes(base64.b64decode(user_data_b64))
    types: list[str] = []
    ours: dict[str, Any] = {}
    for part in message.walk():
        if part.is_multipart():
            continue
        types.append(part.get_content_type())
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        text = payload.decode()
        if text.startswith("#cloud-config\n{"):
            ours = json.loads(text.split("\n", 1)[1])
    return types, ours
