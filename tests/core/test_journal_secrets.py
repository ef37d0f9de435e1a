"""What the journal keeps of a secret: nothing. Its files are the user's alone."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import aiores
from aiores import ComputeDescription, JobDescription
from aiores._journal import read_journal
from aiores.testing import FakePlugin

SECRET = "s3cr3t-marker-7c1e"


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _modes(directory: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir() if p.is_file()}


def _bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name))


@pytest.mark.asyncio
@pytest.mark.usefixtures("umask_022")
async def test_journal_files_are_0600_in_a_0755_state_dir(
    fake: FakePlugin, state_dir: Path
) -> None:
    await asyncio.to_thread(state_dir.mkdir)
    os.chmod(state_dir, 0o755)
    async with aiores.Session() as session:
        await session.job_service("fake://").submit(JobDescription(executable="/bin/true"))
        assert session.journal is not None
        await session.journal.flush()
        modes = await asyncio.to_thread(_modes, state_dir)
    assert {"journal.sqlite", "journal.sqlite-wal", "journal.sqlite-shm"} <= set(modes)
    assert set(modes.values()) == {0o600}, modes
    assert set((await asyncio.to_thread(_modes, state_dir)).values()) == {0o600}


@pytest.mark.asyncio
@pytest.mark.usefixtures("umask_022")
async def test_a_journal_left_readable_by_others_is_tightened(
    fake: FakePlugin, tmp_path: Path
) -> None:
    path = tmp_path / "j.sqlite"
    async with aiores.Session(journal=path):
        pass
    for name in ("j.sqlite", "j.sqlite-wal", "j.sqlite-shm"):
        (tmp_path / name).touch()
        os.chmod(tmp_path / name, 0o644)
    async with aiores.Session(journal=path):
        modes = await asyncio.to_thread(_modes, tmp_path)
    assert set(modes.values()) == {0o600}, modes


@pytest.mark.asyncio
async def test_environment_values_stdin_and_user_data_are_not_journalled(
    fake: FakePlugin, tmp_path: Path
) -> None:
    path = tmp_path / "j.sqlite"
    desc = JobDescription(
        executable="/bin/true",
        arguments=["visible-argument"],
        environment={"API_TOKEN": SECRET, "OTHER_NAME": "2" + SECRET},
        stdin=f"password={SECRET}\n",
    )
    async with aiores.Session(journal=path) as session:
        service = session.job_service("fake://")
        job = await service.submit(desc)
        await service.submit_array(desc, count=2)
        await session.manager("fake://").acquire(
            ComputeDescription(image="fake-linux", user_data=f"#!/bin/sh\necho {SECRET}\n")
        )
        assert session.journal is not None
        await session.journal.flush()
        while_open = await asyncio.to_thread(_bytes, path)
        (intent, *_) = await session.journal.intents()
        (row, *_) = await session.journal.objects("job")
    after = await asyncio.to_thread(_bytes, path)
    for data in (while_open, after):
        assert SECRET.encode() not in data
        assert b"API_TOKEN" in data
        assert b"OTHER_NAME" in data
        assert b"visible-argument" in data
    assert intent.payload["environment"] == {"API_TOKEN": None, "OTHER_NAME": None}
    assert intent.payload["stdin"] is None
    assert job.description is desc  # the object in this process keeps what it was given
    assert row["id"] == job.id

    def stored() -> list[str]:
        with read_journal(path) as db:
            return [p for (p,) in db.execute("SELECT payload FROM intents")]

    payloads = await asyncio.to_thread(stored)
    assert all(SECRET not in p for p in payloads)
    assert any('"user_data": null' in p for p in payloads)
