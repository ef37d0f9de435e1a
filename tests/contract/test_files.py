"""The file contract: ``session.file_adaptor(url)`` on every backend.

put/get of a file and of a tree (permission bits kept where the backend has them),
list, remove, and DoesNotExist for a missing path. Destinations are always new
paths, so the "into an existing directory" conventions never come into play.
"""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

import aiores
from aiores.adaptor import FileAdaptor

from .conftest import STEP, Backend

pytestmark = pytest.mark.asyncio


async def files_of(session: aiores.Session, backend: Backend) -> FileAdaptor | None:
    """The backend's file adaptor; None (having checked NotSupported) if it has none."""
    if not backend.has("files"):
        with pytest.raises(aiores.NotSupported):
            await session.file_adaptor(backend.files_url)
        return None
    return await session.file_adaptor(backend.files_url)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def make_tree(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / "sub" / "b.sh").write_text("#!/bin/sh\necho b\n")
    os.chmod(root / "a.txt", 0o600)
    os.chmod(root / "sub" / "b.sh", 0o750)


def names(listed: object) -> list[str]:
    """Listed names without a trailing ``/`` (S3 marks key prefixes with one)."""
    assert isinstance(listed, list | tuple), listed
    return sorted(str(n).rstrip("/") for n in listed)


async def test_put_and_get_a_file(backend: Backend) -> None:
    async with backend.session() as session:
        files = await files_of(session, backend)
        if files is None:
            return
        src = backend.local / "note.txt"
        await asyncio.to_thread(src.write_bytes, b"hello\x00world\n" * 1000)
        await asyncio.to_thread(os.chmod, src, 0o640)
        remote = f"{backend.root}/note.txt"
        back = backend.local / "back.txt"
        async with asyncio.timeout(STEP):
            await files.put(src, remote)
            await files.get(remote, back)
    assert back.read_bytes() == src.read_bytes()
    if backend.has("modes"):
        assert mode(back) == 0o640


async def test_put_and_get_a_tree_list_and_remove(backend: Backend) -> None:
    async with backend.session() as session:
        files = await files_of(session, backend)
        if files is None:
            return
        src = backend.local / "tree"
        await asyncio.to_thread(make_tree, src)
        remote = f"{backend.root}/tree"
        back = backend.local / "back"
        async with asyncio.timeout(STEP):
            await files.put(src, remote)
            assert names(await files.list(remote)) == ["a.txt", "sub"]
            assert names(await files.list(f"{remote}/sub")) == ["b.sh"]
            await files.get(remote, back)
            await files.remove(f"{remote}/a.txt")
            assert names(await files.list(remote)) == ["sub"]
    assert (back / "a.txt").read_text() == "alpha\n"
    assert (back / "sub" / "b.sh").read_text() == "#!/bin/sh\necho b\n"
    if backend.has("modes"):
        assert (mode(back / "a.txt"), mode(back / "sub" / "b.sh")) == (0o600, 0o750)


async def test_a_missing_path(backend: Backend) -> None:
    async with backend.session() as session:
        files = await files_of(session, backend)
        if files is None:
            return
        missing = f"{backend.root}/nothing/here"
        async with asyncio.timeout(STEP):
            with pytest.raises(aiores.DoesNotExist):
                await files.get(missing, backend.local / "x")
            with pytest.raises(aiores.DoesNotExist):
                await files.put(backend.local / "not-here", f"{backend.root}/x")
            if backend.has("directories"):
                with pytest.raises(aiores.DoesNotExist):
                    await files.list(missing)
                with pytest.raises(aiores.DoesNotExist):
                    await files.remove(missing)
            else:  # key prefixes: nothing there lists empty; removing is idempotent
                assert list(await files.list(missing)) == []
                await files.remove(missing)
    assert not (backend.local / "x").exists()
