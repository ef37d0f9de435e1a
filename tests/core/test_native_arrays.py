"""Arrays a backend submits itself (``JobAdaptor.supports_arrays``), native options
(``JobDescription.native``) and queue/machine listings, on the fake backend."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence

import pytest

import aiores
from aiores import JobDescription, JobState
from aiores.adaptor import AdaptorEnv, JobInfo, MachineInfo, QueueInfo
from aiores.testing import FakeJobs, FakePlugin

pytestmark = pytest.mark.asyncio

DESC = JobDescription(executable="/bin/true")
STEP = 10.0


class ArrayJobs(FakeJobs):
    """Fake jobs with arrays of their own: one call makes every member (RUNNING up to
    ``max_parallel``, the rest QUEUED), and ``native`` options are taken."""

    supports_arrays = True
    accepts_native = True
    #: Each submit_array call: (indices, max_parallel, hold).
    array_calls: list[tuple[list[int], int | None, bool]]
    #: Set: submit_array stops after making its jobs, until cancelled.
    stall = False

    async def submit_array(
        self,
        description: JobDescription,
        token: str,
        indices: Sequence[int],
        max_parallel: int | None,
        *,
        hold: bool,
    ) -> Sequence[JobInfo]:
        self.array_calls.append((list(indices), max_parallel, hold))
        infos = []
        for n, index in enumerate(indices):
            running = not hold and (max_parallel is None or n < max_parallel)
            info = JobInfo(
                id=self.cloud.new_id("array"),
                state=JobState.RUNNING if running else JobState.QUEUED,
                token=token,
                extra={"index": index, "native": list(description.native)},
            )
            self.cloud.jobs[info.id] = info
            if running:
                self._started()
            infos.append(info)
        await self.cloud.point("submit_array:after")
        if self.stall:
            await asyncio.Event().wait()
        return infos

    async def queues(self) -> Sequence[QueueInfo]:
        return [QueueInfo(name="batch", state="up", default=True, nodes=2, cpus=8)]

    async def machines(self) -> Sequence[MachineInfo]:
        return [MachineInfo(name="n1", state="idle", cpus=4, queues=("batch",))]


class ArrayPlugin(FakePlugin):
    name = "fakearray"
    schemes = frozenset({"fakearray"})

    def accepts(self, url: aiores.URL) -> bool:
        return url.scheme == "fakearray"

    def job_adaptor(self, url: aiores.URL, env: AdaptorEnv) -> ArrayJobs:
        adaptor = ArrayJobs(url, env, self.cloud)
        adaptor.array_calls = []
        self.job_adaptors.append(adaptor)
        return adaptor


@pytest.fixture
def arrays() -> Iterator[ArrayPlugin]:
    plugin = ArrayPlugin()
    aiores.register_adaptor(plugin)
    try:
        yield plugin
    finally:
        aiores.unregister_adaptor(plugin.name)


def adaptor_of(plugin: ArrayPlugin) -> ArrayJobs:
    (adaptor,) = plugin.job_adaptors
    assert isinstance(adaptor, ArrayJobs)
    return adaptor


async def test_a_native_array_is_one_call_under_one_intent(arrays: ArrayPlugin) -> None:
    async with aiores.Session(cleanup_timeout=STEP) as session:
        js = session.job_service("fakearray://")
        array = await js.submit_array(DESC, indices=[3, 5, 7, 9], max_parallel=2)
        adaptor = adaptor_of(arrays)
        assert adaptor.array_calls == [([3, 5, 7, 9], 2, False)]
        assert arrays.cloud.calls.count("submit:before") == 0  # no member one by one
        assert [job.index for job in array] == [3, 5, 7, 9]
        assert [job.native_id for job in array] == list(arrays.cloud.jobs)
        assert [job.state for job in array] == [JobState.RUNNING] * 2 + [JobState.QUEUED] * 2
        for job in array:
            assert job.description is not None
            assert job.description.environment["AIORES_ARRAY_INDEX"] == str(job.index)
        assert session.journal is not None
        (intent,) = await session.journal.intents()
        assert (intent.op, intent.count, intent.status) == ("submit_array", 4, "done")
        assert sorted(intent.ids) == sorted(job.native_id or "" for job in array)
        # Waiting and control work as on any array.
        adaptor.finish(array[0].native_id or "")
        assert await array[0].wait(timeout=STEP) is JobState.DONE
        await array.cancel()
        assert await array.wait(timeout=STEP) == [JobState.DONE] + [JobState.CANCELED] * 3
        assert {job.state for job in arrays.cloud.jobs.values()} == {
            JobState.DONE,
            JobState.CANCELED,
        }
        # A job of the array is found again by its id.
        again = await js.get(array[2].id)
        assert again is array[2]


async def test_a_cancelled_native_array_submit_leaves_no_job(arrays: ArrayPlugin) -> None:
    async with aiores.Session(cleanup_timeout=STEP) as session:
        js = session.job_service("fakearray://")
        await js._open()
        adaptor_of(arrays).stall = True  # the jobs exist; the answer never comes
        submitting = asyncio.create_task(js.submit_array(DESC, count=5, max_parallel=2))
        async with asyncio.timeout(STEP):
            await arrays.cloud.arrivals("submit_array:after", 1)
        submitting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await submitting
        assert len(arrays.cloud.jobs) == 5
        assert [job.state for job in arrays.cloud.jobs.values()] == [JobState.CANCELED] * 5
        assert session.journal is not None
        (intent,) = await session.journal.intents()
        assert intent.status == "released"


async def test_a_refused_native_array_leaves_nothing(
    arrays: ArrayPlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refused(*args: object, **kwargs: object) -> Sequence[JobInfo]:
        raise aiores.BadParameter("array index too large")

    monkeypatch.setattr(ArrayJobs, "submit_array", refused)
    async with aiores.Session(cleanup_timeout=STEP) as session:
        with pytest.raises(aiores.BadParameter, match="too large"):
            await session.job_service("fakearray://").submit_array(DESC, count=3)
        assert not arrays.cloud.jobs


async def test_without_native_arrays_members_are_submitted_one_by_one(
    session: aiores.Session, fake: FakePlugin
) -> None:
    js = session.job_service("fake://")
    array = await js.submit_array(DESC, count=4, max_parallel=2)
    (adaptor,) = fake.job_adaptors
    assert fake.cloud.calls.count("submit:after") == 2  # the rest wait for a slot
    for job in array[:2]:
        adaptor.finish(job.native_id or "")
    assert await array[3].wait(JobState.RUNNING, timeout=STEP) is JobState.RUNNING
    assert fake.cloud.calls.count("submit:after") == 4
    assert fake.cloud.max_running_jobs == 2
    await array.cancel()


async def test_native_options_are_checked_and_refused_where_not_taken(
    session: aiores.Session, arrays: ArrayPlugin
) -> None:
    with pytest.raises(aiores.BadParameter, match=r"native\[0\]"):
        DESC.replace(native=["--x=\0"])
    with pytest.raises(aiores.BadParameter, match=r"native\[0\]"):
        DESC.replace(native=["--x=\udc80"])
    with pytest.raises(aiores.BadParameter, match="native"):
        DESC.replace(native="--nice=10")  # one str is not a sequence of options
    with pytest.raises(aiores.BadParameter, match=r"native\[1\]"):
        DESC.replace(native=["--nice=10", ""])
    assert DESC.replace(native=["--nice=10"]).native == ("--nice=10",)
    native = DESC.replace(native=["--nice=10"])
    js = session.job_service("fake://")
    with pytest.raises(aiores.NotSupported, match=r"JobDescription\.native"):
        await js.submit(native)
    with pytest.raises(aiores.NotSupported, match=r"JobDescription\.native"):
        await js.submit_array(native, count=2)
    assert not [point for point in arrays.cloud.calls if point.startswith("submit")]
    array = await session.job_service("fakearray://").submit_array(native, count=2)
    assert array[0].extra["native"] == ["--nice=10"]
    await array.cancel()


async def test_queues_and_machines(session: aiores.Session, arrays: ArrayPlugin) -> None:
    js = session.job_service("fakearray://")
    assert await js.queues() == [
        aiores.QueueInfo(name="batch", state="up", default=True, nodes=2, cpus=8)
    ]
    (machine,) = await js.machines()
    assert (machine.name, machine.cpus, machine.queues) == ("n1", 4, ("batch",))
    with pytest.raises(aiores.NotSupported, match="queues"):
        await session.job_service("fake://").queues()
    with pytest.raises(aiores.NotSupported, match="machines"):
        await session.job_service("fake://").machines()
