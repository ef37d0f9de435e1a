"""Session lifecycle, the registry, lifetimes, managers, and job arrays on the fake backend."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from unittest import mock

import pytest

import aiores
from aiores import ComputeDescription, JobDescription, JobState, ResourceState
from aiores._registry import registry
from aiores.adaptor import AdaptorPlugin
from aiores.testing import FakePlugin

DESC = ComputeDescription(image="fake-linux", tags={"web"})


@pytest.mark.asyncio
async def test_lifecycle_guard(fake: FakePlugin) -> None:
    session = aiores.Session(journal=None)
    with pytest.raises(aiores.IncorrectState, match="not open: use 'async with"):
        session.manager("fake://")
    async with session:
        mgr = session.manager("fake://")
        with pytest.raises(aiores.IncorrectState, match="cannot be opened twice"):
            await session.__aenter__()
    with pytest.raises(aiores.IncorrectState, match="is closed"):
        session.job_service("fake://")
    with pytest.raises(aiores.IncorrectState, match="is closed"):
        await mgr.acquire(DESC)


@pytest.mark.asyncio
async def test_unknown_scheme_names_the_known_ones() -> None:
    async with aiores.Session(journal=None) as session:
        with pytest.raises(aiores.IncorrectURL, match=r"no adaptor for nope://.*local://"):
            session.manager("nope://host")
        with pytest.raises(aiores.IncorrectURL, match="is not a URL"):
            session.job_service("just-a-host")


def test_register_collisions(fake: FakePlugin) -> None:
    with pytest.raises(aiores.BadParameter, match="already registered"):
        aiores.register_adaptor(FakePlugin())

    class Clash(AdaptorPlugin):
        name = "clash"
        schemes = frozenset({"fake", "other"})

    with pytest.raises(aiores.BadParameter, match=r"claims schemes already registered: fake://"):
        aiores.register_adaptor(Clash)
    with pytest.raises(aiores.BadParameter, match="no adaptor named"):
        aiores.unregister_adaptor("never-registered")


@pytest.fixture
def entry_point_plugin() -> Iterator[type[AdaptorPlugin]]:
    class ThirdParty(AdaptorPlugin):
        name = "thirdparty"
        schemes = frozenset({"third"})

    ep = mock.Mock()
    ep.name = "thirdparty"
    ep.value = "thirdparty_pkg:plugin"
    ep.load.return_value = ThirdParty
    saved = registry._entry_points_loaded
    registry._entry_points_loaded = False
    with mock.patch("importlib.metadata.entry_points", return_value=[ep]):
        yield ThirdParty
    registry._entry_points_loaded = saved
    aiores.unregister_adaptor("thirdparty")


def test_entry_point_plugins_are_found(entry_point_plugin: type[AdaptorPlugin]) -> None:
    plugin = registry.plugin_for(aiores.URL.parse("third://x"))
    assert isinstance(plugin, entry_point_plugin)
    assert "third" in registry.known_schemes()


@pytest.mark.asyncio
async def test_any_picks_the_first_adaptor_that_accepts(fake: FakePlugin) -> None:
    async with aiores.Session(journal=None) as session:
        mgr = session.manager("any://fakehost")
        vm = await mgr.acquire(DESC)
        assert vm.native_id in fake.cloud.resources
        with pytest.raises(aiores.NotSupported, match="no adaptor accepts"):
            session.manager("any://nobody-accepts-this")


@pytest.mark.asyncio
async def test_resource_outlives_its_session(fake: FakePlugin) -> None:
    async with aiores.Session() as first:
        vm = await first.manager("fake://").acquire(DESC)
        rid = vm.id
    assert fake.cloud.alive() == [vm.native_id]  # closing the session released nothing
    fake.cloud.set_state(vm.native_id, ResourceState.ACTIVE, "running")
    async with aiores.Session() as second:
        mgr = second.manager("fake://")
        again = await mgr.get(rid)
        assert again is not vm
        assert again.state is ResourceState.ACTIVE
        assert again.tags == {"web"}
        assert await mgr.get(rid) is again  # one object per resource per session
        await again.destroy()
        assert again.state is ResourceState.CANCELED
        with pytest.raises(aiores.DoesNotExist, match="has no resource"):
            await mgr.get("[fake://]-[vm-404]")
        with pytest.raises(aiores.BadParameter, match="belongs to sim://"):
            await mgr.get("[sim://]-[vm-1]")
    assert fake.cloud.alive() == []


@pytest.mark.asyncio
async def test_manager_listing_templates_images_and_destroy(
    session: aiores.Session, fake: FakePlugin
) -> None:
    async with session.manager("fake://") as mgr:
        web = await mgr.acquire_many(DESC, 3)
        db = await mgr.acquire(ComputeDescription(tags={"db"}))
        assert {r.id for r in await mgr.list(tags="web")} == {r.id for r in web}
        assert [r.id for r in await mgr.list(tags={"db"})] == [db.id]
        assert (await mgr.get_template("large")).cpus == 8
        with pytest.raises(
            aiores.DoesNotExist, match="has no template 'huge'; it has: large, small"
        ):
            await mgr.get_template("huge")
        assert (await mgr.get_image("fake-linux")).name == "fake-linux"
        await mgr.destroy([*web, db.id])
    assert fake.cloud.destroy_calls == [[r.native_id for r in [*web, db]]]  # one call
    assert {r.state for r in [*web, db]} == {ResourceState.CANCELED}
    with pytest.raises(aiores.BadParameter, match=r"count must be an int from 1 to 100000"):
        await mgr.acquire_many(DESC, 0)
    with pytest.raises(aiores.BadParameter, match=r"needs an aiores\.ComputeDescription"):
        await mgr.acquire(JobDescription(executable="x"))  # type: ignore[call-overload]


@pytest.mark.asyncio
async def test_compute_without_access_says_what_to_do(
    session: aiores.Session, fake: FakePlugin
) -> None:
    vm = await session.manager("fake://").acquire(DESC)
    await vm.destroy()
    with pytest.raises(aiores.IncorrectState, match="CANCELED: nothing runs on it"):
        await vm.run("true")


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["push", "poll"])
async def test_array_respects_max_parallel(fake: FakePlugin, mode: str) -> None:
    async with aiores.Session(journal=None, cleanup_timeout=5) as session:
        js = session.job_service(f"fake://?mode={mode}")
        if mode == "poll":  # poll every millisecond of real time in this test
            watcher = next(iter(session._endpoints.values())).watcher
            assert watcher._policy is not None
            watcher._policy = dataclasses.replace(watcher._policy, floor=0.001, ceiling=0.001)
        array = await js.submit_array(
            JobDescription(executable="/bin/true"), count=10, max_parallel=3
        )
        adaptor = fake.job_adaptors[0]
        assert [j.state for j in array] == [JobState.RUNNING] * 3 + [JobState.NEW] * 7
        for finished in range(1, 11):
            running = [j for j in fake.cloud.jobs.values() if j.state is JobState.RUNNING]
            assert 1 <= len(running) <= 3
            adaptor.finish(running[0].id, 0)
            # The freed slot goes to the next member, in index order.
            await fake.cloud.arrivals("submit:after", min(10, finished + 3))
        assert await array.wait(timeout=5) == [JobState.DONE] * 10
    assert fake.cloud.max_running_jobs == 3
    indices = [j.extra["environment"]["AIORES_ARRAY_INDEX"] for j in fake.cloud.jobs.values()]
    assert indices == [str(i) for i in range(10)]


@pytest.mark.asyncio
async def test_array_cancel_stops_unsubmitted_members(
    session: aiores.Session, fake: FakePlugin
) -> None:
    js = session.job_service("fake://")
    array = await js.submit_array(
        JobDescription(executable="/bin/true"), indices=[5, 7, 9], max_parallel=1
    )
    await array.cancel()
    assert [j.state for j in array] == [JobState.CANCELED] * 3
    assert len(fake.cloud.jobs) == 1  # the other two were never submitted
    assert [j.index for j in array] == [5, 7, 9]
    with pytest.raises(aiores.BadParameter, match="exactly one of count= or indices="):
        await js.submit_array(JobDescription(executable="x"))
    with pytest.raises(aiores.BadParameter, match="must not repeat"):
        await js.submit_array(JobDescription(executable="x"), indices=[1, 1])


@pytest.mark.asyncio
async def test_wait_any_and_as_completed(session: aiores.Session, fake: FakePlugin) -> None:
    js = session.job_service("fake://")
    jobs = [await js.submit(JobDescription(executable="/bin/true")) for _ in range(3)]
    adaptor = fake.job_adaptors[0]
    first = asyncio.ensure_future(aiores.wait_any(jobs))
    await asyncio.sleep(0)
    adaptor.finish(jobs[1].native_id or "", 0)
    assert await first is jobs[1]
    order = []

    async def collect() -> None:
        async for job in aiores.as_completed(jobs, timeout=5):
            order.append(job)
            if len(order) == 1:
                adaptor.finish(jobs[2].native_id or "", 1)
            elif len(order) == 2:
                adaptor.finish(jobs[0].native_id or "", 0)

    await collect()
    assert order == [jobs[1], jobs[2], jobs[0]]
    assert jobs[2].state is JobState.FAILED
    with pytest.raises(aiores.IncorrectState, match="RUNNING can no longer come"):
        await aiores.wait_any(jobs, JobState.RUNNING)
    with pytest.raises(aiores.BadParameter, match="at least one"):
        await aiores.wait_any([])


@pytest.mark.asyncio
async def test_job_control_and_reconnect(session: aiores.Session, fake: FakePlugin) -> None:
    js = session.job_service("fake://")
    job = await js.submit(JobDescription(executable="/bin/true"), hold=True)
    assert job.state is JobState.HELD
    await job.release()
    assert job.state is JobState.RUNNING
    with pytest.raises(aiores.NotSupported, match="does not support suspend"):
        await job.suspend()
    with pytest.raises(aiores.IncorrectState, match="not final"):
        await job.reap()
    await job.cancel()
    assert await job.wait() is JobState.CANCELED
    with pytest.raises(aiores.IncorrectState, match="it is CANCELED"):
        await job.cancel()
    assert await js.get(job.id) is job
    assert [j.id for j in await js.list(JobState.CANCELED)] == [job.id]
    with pytest.raises(aiores.DoesNotExist):
        await js.get("job-404")


@pytest.mark.asyncio
async def test_an_adaptor_asked_for_again_is_the_one_opened_and_refused_after_close() -> None:
    """A runner asked for by the same URL again (a run on a machine asks every time)
    is the one opened the first time, the same for an equal URL; a closed session
    refuses it."""
    async with aiores.Session(journal=None) as session:
        runner = await session.command_runner("local://")
        assert await session.command_runner("local://") is runner
        assert await session.command_runner("LOCAL://") is runner  # the same endpoint
        with pytest.raises(aiores.IncorrectURL):
            await session.command_runner("local:// x")
    with pytest.raises(aiores.IncorrectState):
        await session.command_runner("local://")
