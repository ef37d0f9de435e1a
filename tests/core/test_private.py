"""Private state files: 0700 directories, 0600 files, and the one managed key."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import asyncssh
import pytest

from aiores import PermissionDenied
from aiores._private import managed_key, private_dir, private_file, tighten


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_dir_is_made_0700_and_a_laxer_one_is_tightened(tmp_path: Path) -> None:
    made = private_dir(tmp_path / "a" / "b")
    assert mode(made) == 0o700
    lax = tmp_path / "lax"
    lax.mkdir(mode=0o755)
    lax.chmod(0o755)
    private_dir(lax)
    assert mode(lax) == 0o700


def test_private_dir_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises((PermissionDenied, FileExistsError)):
        private_dir(tmp_path / "f")


def test_private_file_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        private_file(tmp_path / "state.json", "secret")
        private_file(tmp_path / "state.json", b"replaced")
    finally:
        os.umask(old)
    assert mode(tmp_path / "state.json") == 0o600
    assert (tmp_path / "state.json").read_bytes() == b"replaced"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left


def test_tighten(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    path.chmod(0o644)
    tighten(path)
    assert mode(path) == 0o600
    tighten(tmp_path / "missing")  # nothing to do


def test_managed_key_is_made_once_with_its_public_half(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "id_ed25519"
    made, public = managed_key(path)
    assert made == path
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    pub = path.with_name("id_ed25519.pub")
    assert mode(pub) == 0o600
    assert pub.read_text().strip() == public
    key = asyncssh.read_private_key(path)
    assert key.algorithm == b"ssh-ed25519"
    assert key.export_public_key().decode().strip() == public
    # Found again, not made again; laxer modes tightened; a lost .pub written again.
    path.chmod(0o644)
    pub.unlink()
    assert managed_key(path) == (path, public)
    assert mode(path) == 0o600
    assert pub.read_text().strip() == public


@pytest.mark.asyncio
async def test_concurrent_makers_end_with_one_key(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "k"
    results = await asyncio.gather(*(asyncio.to_thread(managed_key, path) for _ in range(8)))
    assert len({public for _, public in results}) == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["k", "k.pub"]
    assert path.with_name("k.pub").read_text().strip() == results[0][1]
