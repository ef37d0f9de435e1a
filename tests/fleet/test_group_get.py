"""Group.get: into an existing directory, one directory per machine, for 1 and 3 machines."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import aiores
from aiores import ComputeDescription

from .conftest import FAST, STEP


@pytest.mark.asyncio
async def test_get_into_a_directory_and_beside_a_path(
    session: aiores.Session, tmp_path: Path
) -> None:
    async with session.fleet() as fleet:
        fleet.provision(FAST, ComputeDescription(template="tiny"), count=3, tags={"three"})
        fleet.provision(FAST, ComputeDescription(template="tiny"), tags={"one"})
        await fleet.wait(timeout=STEP)
        for tag in ("three", "one"):
            group = fleet.select(tag)
            await group.run("mkdir -p out && echo $AIORES_SIM_VM > out/f.txt", timeout=STEP)
            into = tmp_path / tag
            await asyncio.to_thread(into.mkdir)
            expected = [into / f"sim-{vm.native_id}" / "f.txt" for vm in group]
            assert await asyncio.to_thread(group.local_paths, into, "out/f.txt") == expected
            got = await group.get("out/f.txt", into, timeout=STEP)
            assert len(got) == len(group)
            for vm, path in zip(group, expected, strict=True):
                assert group.local_path(into, vm, "out/f.txt") == path
                assert await asyncio.to_thread(path.read_text) == vm.native_id + "\n"
            # A tree goes there under its name; a path without one (".") is the
            # machine's directory itself.
            trees = tmp_path / f"{tag}-trees"
            await asyncio.to_thread(trees.mkdir)
            await group.get("out", trees, timeout=STEP)
            for vm in group:
                copy = trees / f"sim-{vm.native_id}" / "out" / "f.txt"
                assert await asyncio.to_thread(copy.read_text) == vm.native_id + "\n"
                assert group.local_path(trees, vm, ".") == trees / f"sim-{vm.native_id}"
        # Not a directory: one machine's copy is the path; several go beside it.
        one, three = fleet.select("one"), fleet.select("three")
        await one.get("out/f.txt", tmp_path / "single.txt", timeout=STEP)
        assert (tmp_path / "single.txt").read_text() == one[0].native_id + "\n"
        await three.get("out/f.txt", tmp_path / "many.txt", timeout=STEP)
        for vm in three:
            beside = tmp_path / f"many.txt.sim-{vm.native_id}"
            assert await asyncio.to_thread(beside.read_text) == vm.native_id + "\n"
