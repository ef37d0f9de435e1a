"""The journal: intents before calls, outcomes after, transitions, and survival of kill -9."""

from __future__ import annotations

import asyncio
import queue
import signal
import sqlite3
import sys
from pathlib import Path

import pytest

import aiores
from aiores import ComputeDescription, JobDescription, ResourceState
from aiores._journal import Journal, read_journal
from aiores.testing import FakePlugin

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.asyncio
async def test_intent_is_durable_before_the_backend_call(fake: FakePlugin, tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    seen: list[list[tuple[str, str]]] = []
    original = fake.cloud.point

    async def check(name: str) -> None:
        if name == "acquire:before":  # what another process would read right now

            def read() -> list[tuple[str, str]]:
                with read_journal(path) as db:
                    return db.execute("SELECT op, status FROM intents").fetchall()

            seen.append(await asyncio.to_thread(read))
        await original(name)

    fake.cloud.point = check  # type: ignore[method-assign]
    async with aiores.Session(journal=path) as session:
        vm = await session.manager("fake://").acquire(ComputeDescription(image="fake-linux"))
        fake.cloud.set_state(vm.native_id, ResourceState.ACTIVE)
        await vm.wait(ResourceState.ACTIVE)
        await vm.destroy()
        assert session.journal is not None
        await session.journal.flush()
        (intent,) = await session.journal.intents()
        assert intent.status == "done"
        assert intent.ids == (vm.native_id,)
        assert intent.payload["image"] == "fake-linux"
        assert await session.journal.transitions(vm.id) == [
            ("PENDING", "ACTIVE"),
            ("ACTIVE", "CANCELED"),
        ]
        (obj,) = await session.journal.objects("resource")
        assert obj["state"] == "CANCELED"
        assert obj["native_id"] == vm.native_id
    assert seen == [[("acquire", "pending")]]


@pytest.mark.asyncio
async def test_journal_none_writes_nothing(fake: FakePlugin, state_dir: Path) -> None:
    async with aiores.Session(journal=None) as session:
        await session.manager("fake://").acquire(ComputeDescription())
        assert session.journal is None
    assert not await asyncio.to_thread(state_dir.exists)


@pytest.mark.asyncio
async def test_default_journal_lives_in_the_state_dir(fake: FakePlugin, state_dir: Path) -> None:
    async with aiores.Session() as session:
        await session.job_service("fake://").submit(JobDescription(executable="/bin/true"))
    with read_journal(state_dir / "journal.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        (status,) = db.execute("SELECT status FROM intents").fetchone()
    assert status == "done"


@pytest.mark.asyncio
async def test_many_concurrent_writes_share_commits(fake: FakePlugin, tmp_path: Path) -> None:
    async with aiores.Session(journal=tmp_path / "j.sqlite") as session:
        js = session.job_service("fake://")
        jobs = await asyncio.gather(
            *(js.submit(JobDescription(executable="/bin/true")) for _ in range(300))
        )
        assert session.journal is not None
        await session.journal.flush()
        intents = await session.journal.intents()
    assert len(intents) == 300
    assert {i.status for i in intents} == {"done"}
    assert {i.ids[0] for i in intents} == {j.native_id for j in jobs}


@pytest.mark.asyncio
async def test_kill_9_mid_run_leaves_an_intact_journal_that_tells_what_was_in_flight(
    tmp_path: Path,
) -> None:
    path = tmp_path / "crash.sqlite"
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.core.journal_child",
        str(path),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    line = (await asyncio.wait_for(child.stdout.readline(), 30)).decode().split()
    assert line[0] == "READY", line
    done_vm_id, done_job_id = line[1], line[2]
    child.send_signal(signal.SIGKILL)
    assert await child.wait() == -signal.SIGKILL

    def inspect() -> dict[str, object]:
        with read_journal(path) as db:
            return {
                "integrity": db.execute("PRAGMA integrity_check").fetchone()[0],
                "intents": db.execute(
                    "SELECT op, count, status, payload, token FROM intents ORDER BY created"
                ).fetchall(),
                "objects": db.execute("SELECT id, kind, state FROM objects").fetchall(),
                "ended": db.execute("SELECT ended FROM sessions").fetchall(),
            }

    seen = await asyncio.to_thread(inspect)
    assert seen["integrity"] == "ok"
    intents = seen["intents"]
    assert isinstance(intents, list)
    statuses = [(op, count, status) for op, count, status, _, _ in intents]
    assert statuses == [
        ("acquire", 1, "done"),
        ("submit", 1, "done"),
        ("acquire", 4, "pending"),
        ("submit", 1, "pending"),
    ]
    in_flight_acquire = intents[2]
    assert '"inflight"' in in_flight_acquire[3]  # the description, tags included
    assert in_flight_acquire[4].startswith("t-")  # the token that finds what it made
    assert '"/bin/sleep"' in intents[3][3]
    objects = {obj_id: (kind, state) for obj_id, kind, state in seen["objects"]}  # type: ignore[attr-defined]
    assert objects[done_vm_id] == ("resource", "PENDING")
    assert objects[done_job_id] == ("job", "DONE")
    assert seen["ended"] == [(None,)]  # the session never closed

    # A later session reads the same file and sees the same in-flight work.
    async with aiores.Session(journal=path) as session:
        assert session.journal is not None
        in_flight = await session.journal.in_flight()
    assert [(i.op, i.count) for i in in_flight] == [("acquire", 4), ("submit", 1)]
    assert in_flight[0].payload["tags"] == ["inflight"]


def test_read_journal_is_read_only(tmp_path: Path) -> None:
    path = tmp_path / "ro.sqlite"
    sqlite3.connect(path).close()
    with read_journal(path) as db, pytest.raises(sqlite3.OperationalError, match="readonly"):
        db.execute("CREATE TABLE t(x)")


OPENER = """
import asyncio, sys
import aiores

async def main() -> None:
    async with aiores.Session(journal=sys.argv[1]) as session:
        await session.journal.intent("t-" + sys.argv[2], "acquire", "x://", {}, 1)

asyncio.run(main())
"""


@pytest.mark.asyncio
async def test_processes_opening_a_new_journal_at_once_all_succeed(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", OPENER, str(path), str(n), stderr=asyncio.subprocess.PIPE
        )
        for n in range(8)
    ]
    outcomes = [await child.communicate() for child in children]
    assert [child.returncode for child in children] == [0] * 8, [e for _, e in outcomes]

    def tokens() -> list[str]:
        with read_journal(path) as db:
            return sorted(t for (t,) in db.execute("SELECT token FROM intents"))

    assert await asyncio.to_thread(tokens) == sorted(f"t-{n}" for n in range(8))


@pytest.mark.asyncio
async def test_every_transition_of_a_job_is_recorded(fake: FakePlugin, tmp_path: Path) -> None:
    async with aiores.Session(journal=tmp_path / "j.sqlite") as session:
        job = await session.job_service("fake://").submit(JobDescription(executable="x"))
        fake.job_adaptors[0].finish(job.native_id or "", 0)
        await job.wait()
        assert session.journal is not None
        await session.journal.flush()
        assert await session.journal.transitions(job.id) == [
            ("NEW", "RUNNING"),
            ("RUNNING", "DONE"),
        ]
        (row,) = await session.journal.objects("job")
    assert (row["state"], row["token"]) == ("DONE", job._info.token)


class _CountingQueue(queue.SimpleQueue):  # type: ignore[type-arg]
    def __init__(self) -> None:
        self.puts = 0

    def put(self, item: object, block: bool = True, timeout: float | None = None) -> None:
        self.puts += 1
        super().put(item, block, timeout)


@pytest.mark.asyncio
async def test_records_of_one_loop_iteration_reach_the_writer_together(tmp_path: Path) -> None:
    """Records written in one turn of the loop are handed to the writer thread in one
    piece (one wake-up, not one per record), in order, and all committed."""
    journal = Journal(tmp_path / "j.sqlite", "s-batch")
    counting = _CountingQueue()
    journal._queue = counting
    await journal.open()
    before = counting.puts
    for i in range(200):
        journal.record_object(
            id=f"r-{i}",
            kind="resource",
            url="fake://",
            native_id=f"n-{i}",
            token=None,
            state="NEW",
            detail="",
            data={},
        )
        journal.transition(f"r-{i}", "resource", "NEW", "PENDING", "booting")
    await journal.flush()
    assert counting.puts - before == 1
    await journal.close()
    db = read_journal(tmp_path / "j.sqlite")
    try:
        rows = db.execute("SELECT state, COUNT(*) FROM objects GROUP BY state").fetchall()
        (moves,) = db.execute("SELECT COUNT(*) FROM transitions").fetchone()
    finally:
        db.close()
    assert rows == [("PENDING", 200)]  # each transition after its record
    assert moves == 200
