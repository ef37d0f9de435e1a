"""Fleets on the simulated cloud: provision, tags, wait, fan-out per group, teardown."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

import aiores
from aiores import ComputeDescription, ResourceState

from .conftest import FAST, STEP

#: A second sim:// manager (another endpoint of the same cloud): a second "cloud".
OTHER = "sim://?boot_delay=0.02-0.06"


def _code(vm: aiores.Compute) -> int:
    """The exit status the mixed-exit command gives on ``vm`` (from its hex id)."""
    return int(vm.native_id.removeprefix("vm-"), 16) % 3


MIXED = "exit $(( 0x${AIORES_SIM_VM#vm-} % 3 ))"


@pytest.mark.asyncio
async def test_fifty_vms_in_three_tagged_groups(session: aiores.Session, tmp_path: Path) -> None:
    async with session.fleet() as fleet:
        webs = fleet.provision(FAST, ComputeDescription(template="tiny"), count=20, tags="web")
        db = fleet.provision(OTHER, ComputeDescription(tags={"db"}), count=20)
        cache = fleet.provision(
            session.manager(FAST), ComputeDescription(template="tiny"), 10, tags=["cache", "mem"]
        )
        assert not webs.done()  # provision returns before the backend is even asked
        everything = await fleet.wait(timeout=STEP)
        assert len(everything) == 50
        assert all(vm.state is ResourceState.ACTIVE for vm in everything)
        assert [len(await p) for p in (webs, db, cache)] == [20, 20, 10]

        # Tags: the user's, the scheme and the index; selection is by all of them.
        assert [len(fleet.select(t)) for t in ("web", "db", "cache", "sim")] == [20, 20, 10, 50]
        assert fleet.tags_of(fleet.list("web")[0]) == {"web", "sim", "0"}
        assert fleet.list("20") == fleet.list("db")[:1]
        assert fleet.list("db", "19") == []
        assert fleet.list("cache", "mem") == fleet.list("cache") == fleet.list("mem")
        assert fleet.list("cache", "web") == []
        assert fleet.list() == everything.resources  # fleet order: by index
        assert fleet.list("db")[0].tags >= {"db"}  # the cloud records the user's tags too

        # One run reaches both managers; results come in the group's order.
        assert len({str(vm.manager.url) for vm in everything}) == 2
        result = await everything.run('echo "$AIORES_SIM_VM"')
        assert result.ok
        assert [r.stdout.strip() for r in result] == [vm.native_id for vm in everything]
        assert [r.resource for r in result] == everything.resources

        # Mixed exit codes, reported per host, and every failure in one FanOutError.
        mixed = await everything.run(MIXED, check=False)
        assert [r.exit_status for r in mixed] == [_code(vm) for vm in everything]
        assert [r.resource for r in mixed.failed] == [vm for vm in everything if _code(vm)]
        assert not mixed.ok
        assert mixed.by_resource[everything[3]].exit_status == _code(everything[3])
        web = fleet.select("web")
        with pytest.raises(aiores.FanOutError) as caught:
            await web.run(MIXED)
        failing = [vm for vm in web if _code(vm)]
        assert len(caught.value.exceptions) == len(failing)
        assert [r.resource for r in caught.value.results] == web.resources
        for exc, vm in zip(caught.value.exceptions, failing, strict=True):
            assert isinstance(exc, aiores.NoSuccess)
            assert vm.id in str(exc)
            assert f"status {_code(vm)}" in str(exc)

        # Per group, the groups at once: put, run, get, copy_and_run.
        script = tmp_path / "script.sh"
        # The script reports its arguments, its umask and what its file has become.
        script.write_text('#!/bin/sh\necho "$#|$1|$2|$(umask)|$(readlink "$0")"\n')

        async def per_group(tag: str) -> None:
            group = fleet.select(tag)
            payload = tmp_path / f"{tag}.txt"
            payload.write_text(f"for {tag}\n")
            await group.put(payload, "payload.txt")
            ran = await group.run("cat payload.txt; echo $AIORES_SIM_VM > mine.txt")
            assert [r.stdout for r in ran] == [f"for {tag}\n"] * len(group)
            fetched = await group.get("mine.txt", tmp_path / f"{tag}-mine.txt")
            assert len(fetched) == len(group)
            assert fetched.ok
            for vm in group:
                local = group.local_path(tmp_path / f"{tag}-mine.txt", vm)
                assert local.name == f"{tag}-mine.txt.sim-{vm.native_id}"
                assert local.read_text() == vm.native_id + "\n"
            login_umask = (await group.run("umask"))[0].stdout.strip()
            scripted = await group.copy_and_run(script, ["a b", "it's"])
            for r in scripted:
                count, first, second, umask, target = r.stdout.rstrip("\n").split("|")
                # Quoted arguments arrive whole; the script runs with the login's umask,
                # from a file already removed before it started (nothing can be left).
                assert (count, first, second, umask) == ("2", "a b", "it's", login_umask)
                assert target.endswith(" (deleted)"), target
                path = target.removesuffix(" (deleted)")
                assert "/aiores-script." in path
                assert not await asyncio.to_thread(os.path.exists, path)

        await asyncio.gather(*(per_group(tag) for tag in ("web", "db", "cache")))
    # Leaving the block destroyed every machine.
    assert all(vm.state is ResourceState.CANCELED for vm in everything)
    assert await session.manager("sim://").list(tags="web") == []


@pytest.mark.asyncio
async def test_get_from_one_machine_keeps_the_name(session: aiores.Session, tmp_path: Path) -> None:
    async with session.fleet() as fleet:
        fleet.provision(FAST, ComputeDescription(), tags="solo")
        group = await fleet.wait("solo", timeout=STEP)
        await group.run("echo one > f.txt")
        await group.get("f.txt", tmp_path / "f.txt")
        assert (tmp_path / "f.txt").read_text() == "one\n"
        failed = await group.get("missing.txt", tmp_path / "m.txt", check=False)
        assert isinstance(failed[0].error, aiores.DoesNotExist)
        assert failed[0].exit_status is None
        with pytest.raises(aiores.DoesNotExist):
            await group.put(tmp_path / "nothing-here", "x")
        with pytest.raises(aiores.DoesNotExist):
            await group.copy_and_run(tmp_path / "no-script")


@pytest.mark.asyncio
async def test_wait_names_how_many_are_not_active(session: aiores.Session) -> None:
    async with session.fleet() as fleet:
        fleet.provision("sim://?boot_delay=30", ComputeDescription(), count=3, tags="slow")
        fleet.provision(FAST, ComputeDescription(), count=2, tags="quick")
        assert len(await fleet.wait("quick", timeout=STEP)) == 2
        with pytest.raises(aiores.Timeout, match=r"3 of 3 machines tagged slow not ACTIVE"):
            await fleet.wait("slow", timeout=0.3)
        with pytest.raises(aiores.Timeout, match=r"3 of 5 machines not ACTIVE within 0.2 s"):
            await fleet.wait(timeout=0.2)
        slow = fleet.list("slow")
    assert all(vm.state is ResourceState.CANCELED for vm in slow)


@pytest.mark.asyncio
async def test_deprovision_by_tags_one_destroy_per_manager(session: aiores.Session) -> None:
    async with session.fleet() as fleet:
        fleet.provision(FAST, ComputeDescription(), count=3, tags={"a", "x"})
        fleet.provision(OTHER, ComputeDescription(), count=2, tags={"b", "x"})
        fleet.provision(FAST, ComputeDescription(), count=2, tags={"c"})
        await fleet.wait(timeout=STEP)
        xs = fleet.list("x")
        await fleet.deprovision("x")
        assert all(vm.state is ResourceState.CANCELED for vm in xs)
        assert len(fleet.list()) == 2
        assert fleet.list() == fleet.list("c")
        mgr = session.manager("sim://")
        assert len(await mgr.list(tags="c")) == 2
        assert await mgr.list(tags="x") == []
        await fleet.deprovision()
        assert fleet.list() == []
        assert await mgr.list(tags="c") == []


@pytest.mark.asyncio
async def test_leaving_the_block_cancelled_tears_down(session: aiores.Session) -> None:
    booted = asyncio.Event()
    machines: list[aiores.Compute] = []

    async def body() -> None:
        async with session.fleet() as fleet:
            fleet.provision(FAST, ComputeDescription(), count=3, tags="doomed")
            machines.extend(await fleet.wait(timeout=STEP))
            # Another provision is still being acquired when the cancellation comes.
            fleet.provision(FAST, ComputeDescription(), count=2, tags="in-flight")
            booted.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(body())
    async with asyncio.timeout(STEP):
        await booted.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert all(vm.state is ResourceState.CANCELED for vm in machines)
    mgr = session.manager("sim://")
    assert await mgr.list(tags="doomed") == []
    assert await mgr.list(tags="in-flight") == []


@pytest.mark.asyncio
async def test_provision_checks_its_arguments(session: aiores.Session) -> None:
    fleet = session.fleet()
    with pytest.raises(aiores.BadParameter):
        fleet.provision(FAST, ComputeDescription(), count=0)
    with pytest.raises(aiores.BadParameter):
        fleet.provision(FAST, ComputeDescription(), tags={"has space"})
    with pytest.raises(aiores.BadParameter):
        fleet.provision(FAST, aiores.StorageDescription())  # type: ignore[arg-type]
    with pytest.raises(aiores.IncorrectURL):
        fleet.provision("nope://", ComputeDescription())
    with pytest.raises(aiores.BadParameter):
        await fleet.wait(replace_failed=-1)
    await fleet.aclose()
    with pytest.raises(aiores.IncorrectState):
        fleet.provision(FAST, ComputeDescription())
