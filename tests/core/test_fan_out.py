"""A group's streaming fan-out owns its tasks: none outlives the stream, however the
consumer leaves it (a command runner of the test's own, on hosts added to a fleet)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence

import pytest

import aiores
from aiores import RunResult
from aiores._group import _STARTS_PER_TURN
from aiores.adaptor import URL, AdaptorEnv, AdaptorPlugin, CommandRunner

from ..loop_turns import iteration_counter

HOSTS = 4


class Hold(AdaptorPlugin):
    """hold://: a command runs until cancelled, unless it is ``fast`` (on h0) or
    ``quick`` (anywhere; ``on_quick`` is told the host).

    ``running`` holds the hosts whose command runs now; ``stopped`` those whose
    command was cancelled (the stand-in for a remote command being stopped).
    """

    name = "hold"
    schemes = frozenset({"hold"})

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.stopped: list[str] = []
        self.changed = asyncio.Event()
        self.on_quick: Callable[[str], None] = lambda host: None

    def command_runner(self, url: URL, env: AdaptorEnv) -> CommandRunner:
        return HoldRunner(url, env, self)


class HoldRunner(CommandRunner):
    def __init__(self, url: URL, env: AdaptorEnv, plugin: Hold) -> None:
        super().__init__(url, env)
        self.plugin = plugin

    async def run(
        self,
        command: str | Sequence[str],
        *,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        on_output: Callable[[str, bytes], None] | None = None,
    ) -> RunResult:
        host = self.url.host
        if command == "quick":
            self.plugin.on_quick(host)
            return RunResult(exit_status=0)
        if command == "fast" and host == "h0":
            return RunResult(exit_status=0, stdout="fast\n")
        self.plugin.running.add(host)
        self.plugin.changed.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.plugin.stopped.append(host)
            raise
        finally:
            self.plugin.running.discard(host)
        raise AssertionError("not reached")


@pytest.fixture
def hold() -> Iterator[Hold]:
    plugin = Hold()
    aiores.register_adaptor(plugin)
    try:
        yield plugin
    finally:
        aiores.unregister_adaptor(plugin.name)


@contextlib.asynccontextmanager
async def hosts(session: aiores.Session, count: int = HOSTS) -> AsyncIterator[aiores.Group]:
    async with session.fleet() as fleet:
        for i in range(count):
            await fleet.add(f"hold://h{i}")
        yield fleet.select()


async def until_running(plugin: Hold, count: int) -> None:
    async with asyncio.timeout(5):
        while len(plugin.running) < count:
            plugin.changed.clear()
            await plugin.changed.wait()


def fan_out_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("aiores-command ")]


@pytest.mark.asyncio
async def test_leaving_a_stream_early_stops_and_awaits_every_run(hold: Hold) -> None:
    async with aiores.Session(journal=None) as session, hosts(session) as group:
        async with contextlib.aclosing(group.run_stream("fast")) as results:
            async for result in results:
                assert result.stdout == "fast\n"
                await until_running(hold, HOSTS - 1)
                break
        assert fan_out_tasks() == []
        assert hold.running == set()
        assert sorted(hold.stopped) == ["h1", "h2", "h3"]


@pytest.mark.asyncio
async def test_cancelling_the_consumer_of_a_stream_stops_and_awaits_every_run(
    hold: Hold,
) -> None:
    async with aiores.Session(journal=None) as session, hosts(session) as group:

        async def consume() -> None:
            async with contextlib.aclosing(group.run_stream("slow")) as results:
                async for _ in results:
                    raise AssertionError("no command ends by itself")

        consumer = asyncio.create_task(consume())
        await until_running(hold, HOSTS)
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        assert fan_out_tasks() == []
        assert hold.running == set()
        assert sorted(hold.stopped) == ["h0", "h1", "h2", "h3"]


@pytest.mark.asyncio
async def test_a_fan_out_deadline_stops_what_runs_and_says_so(hold: Hold) -> None:
    async with aiores.Session(journal=None) as session, hosts(session) as group:
        result = await group.run("fast", deadline=0.2, check=False)
        assert result[0].ok
        for late in result[1:]:
            assert isinstance(late.error, aiores.Timeout)
            assert "the command was not done when the fan-out's deadline of 0.2 s passed" in str(
                late.error
            )
        assert hold.running == set()
        assert sorted(hold.stopped) == ["h1", "h2", "h3"]


@pytest.mark.asyncio
async def test_cancelling_a_group_run_stops_and_awaits_every_run(hold: Hold) -> None:
    async with aiores.Session(journal=None) as session, hosts(session) as group:
        running = asyncio.create_task(group.run("slow"))
        await until_running(hold, HOSTS)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        assert fan_out_tasks() == []
        assert hold.running == set()
        assert sorted(hold.stopped) == ["h0", "h1", "h2", "h3"]


@pytest.mark.asyncio
async def test_a_fan_out_checks_its_arguments_once_and_keeps_the_group_order(
    hold: Hold, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiores import _validate

    checks: list[object] = []
    run_arguments = _validate.run_arguments

    def counting(*args: object) -> object:
        checks.append(args[0])
        return run_arguments(*args)

    monkeypatch.setattr(_validate, "run_arguments", counting)
    async with aiores.Session(journal=None) as session, hosts(session) as group:
        result = await group.run("fast", deadline=0.2, check=False)
        assert checks == ["fast"]  # once for the group, not once per machine
        assert [r.resource for r in result] == list(group)
        assert all(r.started is not None and r.finished is not None for r in result)
        with pytest.raises(aiores.BadParameter, match="command"):
            await group.run("")
        # Endpoints that only ran commands never made a watcher.
        commands = [k for k in session._endpoints if k[1] == "commands"]
        assert len(commands) == HOSTS
        assert all(session._endpoints[k]._watcher is None for k in commands)


@pytest.mark.asyncio
async def test_a_fan_out_starts_its_members_a_few_per_loop_iteration(hold: Hold) -> None:
    """200 members: their runs start at most _STARTS_PER_TURN per loop iteration, so
    that the loop keeps turning (timers, answers) while a large fan-out starts."""
    async with aiores.Session(journal=None) as session, hosts(session, 200) as group:
        now, stop = iteration_counter(asyncio.get_running_loop())
        turns: list[int] = []
        hold.on_quick = lambda host: turns.append(now())
        try:
            results = await group.run("quick")
        finally:
            stop()
    assert len(results) == 200
    assert all(r.ok for r in results)
    per_iteration = Counter(turns)
    assert len(turns) == 200
    assert max(per_iteration.values()) <= _STARTS_PER_TURN
    assert len(per_iteration) >= 200 // _STARTS_PER_TURN


@pytest.mark.asyncio
async def test_cancelling_fan_outs_between_their_starts_leaves_nothing(hold: Hold) -> None:
    """A fan-out of 100 cancelled after a drawn number of loop iterations, while its
    members' tasks are still being started: every member started is stopped and
    awaited, no task is left, and no member's coroutine was made without running."""
    rng = random.Random(20261206)
    async with aiores.Session(journal=None) as session, hosts(session, 100) as group:
        for trial in range(24):
            hold.stopped.clear()
            stream = trial % 2 == 1

            async def fan_out(stream: bool) -> None:
                if stream:
                    async with contextlib.aclosing(group.run_stream("slow")) as results:
                        async for _ in results:
                            raise AssertionError("no command ends by itself")
                else:
                    await group.run("slow")

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                running = asyncio.create_task(fan_out(stream))
                for _ in range(rng.randrange(0, 100 // _STARTS_PER_TURN + 3)):
                    await asyncio.sleep(0)
                running.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await running
                gc.collect()
            assert [str(w.message) for w in caught] == [], trial
            assert fan_out_tasks() == [], trial
            assert hold.running == set(), trial
            assert len(hold.stopped) == len(set(hold.stopped)), trial


def test_a_members_result_keeps_every_field_of_its_runs_result() -> None:
    """_placed builds the member's result field by field (no dataclasses.replace):
    every field of RunResult is either carried over or set, none is dropped."""
    import dataclasses

    from aiores._group import _placed

    resource = object()
    ran = RunResult(
        exit_status=3,
        stdout="out",
        stderr="err",
        exit_signal="TERM",
        error=aiores.Timeout("late"),
        elapsed=9.0,
        started=1.0,
        finished=10.0,
    )
    placed = _placed(ran, resource, 2.0, 5.0, 7.0)  # type: ignore[arg-type]
    expected = dataclasses.replace(
        ran,
        resource=resource,  # type: ignore[arg-type]
        elapsed=2.0,
        started=5.0,
        finished=7.0,
    )
    for field in dataclasses.fields(RunResult):
        assert getattr(placed, field.name) is getattr(expected, field.name), field.name
