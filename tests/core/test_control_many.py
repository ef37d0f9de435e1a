"""JobArray control reaches the adaptor as one JobAdaptor.control_many per adaptor
(its default acts on each job with the one-job method)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

import aiores
from aiores.adaptor import AdaptorEnv, Control

from .test_issue_semantics import DESC, STEP, ControlJobs, ControlPlugin, states

pytestmark = pytest.mark.asyncio


class CountingJobs(ControlJobs):
    """Records each control_many call (what, ids), then does the default."""

    batches: list[tuple[str, list[str]]]

    async def control_many(self, what: Control, ids: Sequence[str]) -> Sequence[Exception | None]:
        self.batches.append((what, list(ids)))
        return await super().control_many(what, ids)


class CountingPlugin(ControlPlugin):
    name = "fakecount"
    schemes = frozenset({"fakecount"})

    def job_adaptor(self, url: aiores.URL, env: AdaptorEnv) -> CountingJobs:
        adaptor = CountingJobs(url, env, self.cloud)
        adaptor.batches = []
        self.job_adaptors.append(adaptor)
        return adaptor


@pytest.fixture
def counting() -> Iterator[CountingPlugin]:
    plugin = CountingPlugin()
    aiores.register_adaptor(plugin)
    try:
        yield plugin
    finally:
        aiores.unregister_adaptor(plugin.name)


async def test_array_control_is_one_control_many_call(counting: CountingPlugin) -> None:
    async with aiores.Session(journal=None) as session:
        array = await session.job_service("fakecount://").submit_array(DESC, count=4)
        adaptor = counting.jobs
        assert isinstance(adaptor, CountingJobs)
        adaptor.finish(array[0].native_id or "")
        assert await array[0].wait(timeout=STEP) is aiores.JobState.DONE
        ids = [str(job.native_id) for job in array]
        # The final member is refused before the backend is asked; the rest in one call.
        with pytest.raises(aiores.IncorrectState, match="could not suspend 1 of 4"):
            await array.suspend()
        assert states(array) == [aiores.JobState.DONE] + [aiores.JobState.SUSPENDED] * 3
        with pytest.raises(aiores.IncorrectState, match="could not resume 1 of 4"):
            await array.resume()
        await array.cancel()
        assert states(array) == [aiores.JobState.DONE] + [aiores.JobState.CANCELED] * 3
    assert adaptor.batches == [
        ("suspend", ids[1:]),
        ("resume", ids[1:]),
        ("cancel", ids[1:]),
    ]
