"""Session.reap() against moto: a launch of 50 instances killed while in flight."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

import aiores
from aiores_ec2.testing import ACCESS_KEY, SECRET_KEY, MotoServer

from .killed import CHILD

REGION = "us-east-1"
IMAGE = "ami-12c6146b"


def _url(server: MotoServer) -> str:
    return f"ec2://{REGION}?endpoint={server.url}&ssh_cidr=127.0.0.1/32&poll=0.2"


def _kill_during_launch(server: MotoServer, url: str) -> None:
    """Start the child; SIGKILL it while moto holds back the answer to RunInstances."""
    env = dict(
        os.environ,
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_EC2_METADATA_DISABLED="true",
    )
    child = subprocess.Popen(
        [sys.executable, str(CHILD), "50", "ec2kill", url, IMAGE, "t2.micro"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    try:
        while server.calls_sync().get("RunInstances", 0) < 1:
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the child never launched"
            time.sleep(0.05)
        time.sleep(1.0)  # moto has made the instances and sleeps before answering
    finally:
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=60)
    assert b"acquired" not in out


@pytest.mark.asyncio
async def test_reap_releases_a_launch_of_50_killed_in_flight() -> None:
    server = MotoServer.shared()
    await asyncio.to_thread(server.wait_ready)
    await server.reset()
    await server.set_faults(delay_after={"RunInstances": 4})
    url = _url(server)
    await asyncio.to_thread(_kill_during_launch, server, url)
    await server.set_faults(clear=True)
    ctx = aiores.AWSContext(access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)
    async with aiores.Session(contexts=[ctx]) as session:
        assert session.journal is not None
        (pending,) = await session.journal.in_flight()
        reaped = await session.reap()
        assert reaped.problems == []
        assert len(reaped.released) == 50
        assert reaped.closed == [pending.token]
        assert await session.journal.in_flight() == []
        left = [r for r in await session.manager(url).list() if not r.state.final]
        assert left == []
