"""A program killed with SIGKILL while it submits 20 docker:// jobs: what it left is
found by its labels, reaped (the submits never answered) and recovered (those that
were answered) by a second program."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

import aiores

from .podman import IMAGE, Podman

pytestmark = pytest.mark.asyncio

MARK = "1000.171717"
URL = f"docker://?image={IMAGE}&grace=0.2"
CHILD = f"""
import asyncio, aiores

async def main():
    async with aiores.Session() as session:
        js = session.job_service({URL!r})
        print("session", session.id, flush=True)

        async def one():
            await js.submit(aiores.JobDescription(executable="sleep", arguments=[{MARK!r}]))
            print("submitted", flush=True)

        await asyncio.gather(*(one() for _ in range(20)))
        await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_reap_and_recover_after_kill_9_mid_submit(
    podman: Podman, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIORES_STATE_DIR", str(tmp_path))
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, stdout=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None
    try:
        async with asyncio.timeout(60):
            first = (await child.stdout.readline()).decode().split()
            assert first[0] == "session", first
            # Killed as soon as one submit is answered: the others are under way.
            assert (await child.stdout.readline()).decode().strip() == "submitted"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        await child.wait()
    try:
        await _check_reap_and_recover(podman, first[1])
    finally:
        podman.cli("rm", "-af")


async def _settled(podman: Podman) -> list[dict[str, Any]]:
    """The daemon's containers once the requests the killed child had sent are done:
    the same containers in the same states twice in a row, 0.5 s apart (bounded)."""
    listing: list[tuple[str, str]] | None = None
    async with asyncio.timeout(30):
        while True:
            now = await asyncio.to_thread(podman.cli, "ps", "-a", "--format", "json")
            made: list[dict[str, Any]] = json.loads(now.stdout or "[]")
            # Ids and states: a start the child had sent may still be under way.
            ids = sorted((c["Id"], c["State"]) for c in made)
            if ids == listing:
                return made
            listing = ids
            await asyncio.sleep(0.5)  # the daemon gives no event for "no request left"


async def _check_reap_and_recover(podman: Podman, session_id: str) -> None:
    made = await _settled(podman)
    assert made, "the child made no container"
    for container in made:
        labels = container["Labels"]
        assert labels["aiores"] == "1"
        assert labels["aiores.kind"] == "job"
        assert labels["aiores.session"] == session_id
        assert labels["aiores.token"].startswith("t-")
    async with aiores.Session() as session:
        reaped = await session.reap(timeout=30)
        assert not reaped.problems, reaped.problems
        recovered = await session.recover(timeout=30)
        assert not recovered.problems, recovered.problems
        for job in recovered.jobs:
            if not job.state.final:
                await job.cancel()
        # reap sent each leak SIGTERM (SIGKILL after the grace period): wait for that.
        leaked = [await session.job(leak.id) for leak in reaped.leaks]
        for job in [*recovered.jobs, *leaked]:
            assert (await job.wait(timeout=30)).final
        # Every container the child made is ended or gone: no sleep is left.
        running = podman.cli("ps", "-q", "--filter", "label=aiores=1").stdout.split()
        assert running == []
    # Each container is either a leak (its submit never answered: cancelled by reap)
    # or a job the journal knew (reattached by recover).
    accounted = {leak.native_id for leak in reaped.leaks} | {j.native_id for j in recovered.jobs}
    assert {c["Id"] for c in made} <= accounted
    assert reaped.leaks
    assert recovered.jobs
