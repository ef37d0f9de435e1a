"""SSHFileAdaptor: SFTP put/get of trees with modes kept, and a large streamed file."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import shutil
import stat
from pathlib import Path

import pytest

import aiores

from .conftest import Adaptors
from .servers import Sshd


def _make_tree(root: Path) -> dict[str, tuple[bytes, int]]:
    files = {
        "run.sh": (b"#!/bin/sh\necho hi\n", 0o755),
        "data/a.txt": (b"alpha\n", 0o644),
        "data/secret": (b"s3cret\n", 0o600),
        "data/deep/b.bin": (bytes(range(256)) * 10, 0o640),
    }
    for name, (content, mode) in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        os.chmod(path, mode)
    os.chmod(root / "data" / "deep", 0o750)
    return files


def _read_tree(root: Path) -> dict[str, tuple[bytes, int]]:
    found = {}
    for path in root.rglob("*"):
        if path.is_file():
            found[str(path.relative_to(root))] = (
                path.read_bytes(),
                stat.S_IMODE(path.stat().st_mode),
            )
    return found


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.asyncio
async def test_put_and_get_a_tree_with_modes(
    adaptors: Adaptors, sshd: Sshd, tmp_path: Path, test_home: Path
) -> None:
    files = await make_tree(tmp_path)
    remote = f"tree-{secrets.token_hex(4)}"
    fs = await adaptors.files(sshd.url())
    await fs.put(tmp_path / "src", remote)  # relative to the login directory
    assert await asyncio.to_thread(_read_tree, test_home / remote) == files
    assert stat.S_IMODE((test_home / remote / "data" / "deep").stat().st_mode) == 0o750
    assert await fs.list(remote) == ["data", "run.sh"]

    await fs.get(remote, tmp_path / "back")
    assert await asyncio.to_thread(_read_tree, tmp_path / "back") == files

    await fs.remove(f"{remote}/run.sh")
    assert await fs.list(remote) == ["data"]
    with pytest.raises(aiores.DoesNotExist):
        await fs.get(f"{remote}/run.sh", tmp_path / "gone")
    with pytest.raises(aiores.NoSuccess):
        await fs.remove(remote)  # not empty
    await asyncio.to_thread(shutil.rmtree, test_home / remote)


async def make_tree(tmp_path: Path) -> dict[str, tuple[bytes, int]]:
    return await asyncio.to_thread(_make_tree, tmp_path / "src")


@pytest.mark.asyncio
async def test_a_20_mb_file(
    adaptors: Adaptors, sshd: Sshd, tmp_path: Path, test_home: Path
) -> None:
    big = tmp_path / "big.bin"
    await asyncio.to_thread(big.write_bytes, os.urandom(20 * 1024 * 1024))
    remote = f"big-{secrets.token_hex(4)}.bin"
    fs = await adaptors.files(sshd.url())
    async with asyncio.timeout(30):
        await fs.put(big, remote)
        await fs.get(remote, tmp_path / "copy.bin")
    want = await asyncio.to_thread(_sha256, big)
    assert await asyncio.to_thread(_sha256, test_home / remote) == want
    assert await asyncio.to_thread(_sha256, tmp_path / "copy.bin") == want
    await fs.remove(remote)


@pytest.mark.asyncio
async def test_errors_are_aiores_errors(adaptors: Adaptors, sshd: Sshd, tmp_path: Path) -> None:
    fs = await adaptors.files(sshd.url())
    with pytest.raises(aiores.DoesNotExist):
        await fs.put(tmp_path / "missing", "anything")
    with pytest.raises(aiores.DoesNotExist):
        await fs.list("no-such-dir-here")
    (tmp_path / "f").write_text("x")
    with pytest.raises(aiores.PermissionDenied):
        await fs.put(tmp_path / "f", "/root/not-yours")


@pytest.mark.asyncio
async def test_many_sftp_sessions_keep_the_capacity(adaptors: Adaptors, sshd: Sshd) -> None:
    """SFTP channels come and go quickly: a slot is given back only once the server
    closed its channel, so the server never refuses one and the pool never takes a
    refusal for a lower MaxSessions."""
    fs = await adaptors.files(sshd.url())

    async def lists() -> None:
        for _ in range(20):
            await fs.list(".")

    await asyncio.gather(*(lists() for _ in range(10)))
    assert fs.pool.capacity(fs.target) == 10
    assert fs.pool.connects == 1
