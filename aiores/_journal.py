"""The crash-safe journal: sqlite (WAL) written before and after every backend call.

Before each acquire or submit the session writes an *intent* carrying an idempotency
token, and waits until it is committed; only then does it call the backend. After
the call it writes the outcome (ids, or the error), and every state transition of
every object. A process killed at any moment leaves a journal that says exactly what
was in flight: the intents still ``pending``, each with the token that finds what the
backend may have created.

All sqlite work runs on one writer thread, never on the event loop. Writes queued
while a commit is under way are committed together (group commit), so a thousand
concurrent submits cost a handful of commits, not a thousand.

What may be a secret is not written: a job description is kept with the names of
its environment variables but not their values, and without its standard input; a
compute description without its user data (see :func:`dumps`). The file, and the
``-wal`` and ``-shm`` files sqlite makes beside it with the same mode, are the
user's alone (0600) whatever the directory and the umask.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import json
import logging
import os
import queue
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from ._descriptions import ComputeDescription, JobDescription
from ._exceptions import IncorrectState, NoSuccess
from ._private import tighten

__all__ = ["Intent", "JobSessionRecord", "Journal"]

log = logging.getLogger("aiores.journal")
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, pid INTEGER, host TEXT, started REAL, ended REAL
);
CREATE TABLE IF NOT EXISTS intents (
    token TEXT PRIMARY KEY, session TEXT, op TEXT, url TEXT, payload TEXT,
    count INTEGER, status TEXT, ids TEXT, error TEXT, created REAL, finished REAL
);
CREATE INDEX IF NOT EXISTS intents_status ON intents(status);
CREATE TABLE IF NOT EXISTS objects (
    id TEXT PRIMARY KEY, kind TEXT, url TEXT, native_id TEXT, session TEXT,
    token TEXT, state TEXT, detail TEXT, data TEXT, created REAL, updated REAL
);
CREATE TABLE IF NOT EXISTS transitions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT, kind TEXT, old TEXT, new TEXT,
    detail TEXT, at REAL
);
CREATE TABLE IF NOT EXISTS job_sessions (
    name TEXT PRIMARY KEY, url TEXT NOT NULL, key TEXT NOT NULL, session TEXT, created REAL
);
CREATE TABLE IF NOT EXISTS job_session_jobs (
    name TEXT NOT NULL, job TEXT NOT NULL, added REAL, UNIQUE (name, job)
);
"""


def _json_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return _without_secrets(value, fields)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return repr(value)


def _without_secrets(value: Any, fields: dict[str, Any]) -> dict[str, Any]:
    """A description's fields as the journal keeps them: no value that may be a secret.

    As in the ``description.json`` an SSH job leaves on its host: environment
    variables by name (each None), no standard input, no user data.
    """
    if isinstance(value, JobDescription):
        fields["environment"] = dict.fromkeys(value.environment)
        fields["stdin"] = None
    elif isinstance(value, ComputeDescription):
        fields["user_data"] = None
    return fields


def dumps(value: Any) -> str:
    """JSON for the journal (descriptions, tags, ids), without secrets (see above)."""
    return json.dumps(value, default=_json_default, sort_keys=True)


@dataclass(frozen=True, slots=True)
class Intent:
    """A journalled backend call: what was asked, under which token, and how it ended.

    ``status`` is ``pending`` (in flight, or the process died during the call),
    ``done``, ``failed``, or ``released`` (cancelled or failed, and what it created
    was released).
    """

    token: str
    session: str
    op: str
    url: str
    payload: Any
    count: int
    status: str
    ids: tuple[str, ...]
    error: str | None
    created: float
    finished: float | None


@dataclass(frozen=True, slots=True)
class JobSessionRecord:
    """A DRMAA2 job session as the journal holds it (``key`` changes when a destroyed
    session's name is used again, so an old handle does not reach the new one)."""

    name: str
    url: str
    key: str
    created: float
    jobs: int


#: Seconds opening the journal may wait for other processes opening it at once.
OPEN_TIMEOUT = 30.0

_Op = tuple[Callable[[sqlite3.Connection], Any], "asyncio.Future[Any] | None"]
_STOP = object()


class Journal:
    """One sqlite journal file, shared safely by every process that opens it."""

    def __init__(self, path: str | os.PathLike[str], session_id: str) -> None:
        self.path = Path(path)
        self.session_id = session_id
        #: Lists of ops, handed to the writer thread (or _STOP).
        self._queue: queue.SimpleQueue[list[_Op] | object] = queue.SimpleQueue()
        #: Ops of this loop iteration, handed over together at its end: one put (one
        #: wake-up of the writer) per iteration rather than per record.
        self._outbox: list[_Op] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._dead: NoSuccess | None = None
        self._inflight: list[_Op] = []

    # -- lifecycle ----------------------------------------------------------------------
    async def open(self) -> None:
        """Create or open the file (WAL mode) and record this session."""
        if self._thread is not None:
            raise IncorrectState(f"journal {self.path} is already open")
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name=f"aiores-journal {self.path.name}", daemon=True
        )
        self._thread.start()
        await ready
        await self._call(
            lambda db: db.execute(
                "INSERT INTO sessions(id, pid, host, started) VALUES (?, ?, ?, ?)",
                (self.session_id, os.getpid(), socket.gethostname(), time.time()),
            )
        )

    async def close(self) -> None:
        """Record the session's end, commit everything queued and stop the thread."""
        if self._thread is None or self._closed:
            return
        if self._dead is not None:
            self._closed = True
            await asyncio.to_thread(self._thread.join)
            return
        try:
            await self._call(
                lambda db: db.execute(
                    "UPDATE sessions SET ended = ? WHERE id = ?", (time.time(), self.session_id)
                )
            )
        finally:
            self._closed = True
            self._hand_off()
            self._queue.put(_STOP)
            await asyncio.to_thread(self._thread.join)

    # -- the writer thread ----------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _private_files(self.path)
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        # Switching a new file to WAL and creating the schema can meet another
        # process doing the same at that moment, which sqlite reports at once
        # rather than waiting: try again for a while (this is the writer thread).
        deadline = time.monotonic() + OPEN_TIMEOUT
        while True:
            try:
                db.execute("PRAGMA journal_mode=WAL")
                # WAL with synchronous=NORMAL survives any process crash; FULL would
                # add an fsync per commit to survive power loss as well.
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(SCHEMA)
                return db
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    db.close()
                    raise
                time.sleep(0.05)

    def _run(self, ready: asyncio.Future[None]) -> None:
        assert self._loop is not None
        loop = self._loop
        try:
            db = self._connect()
        except (sqlite3.Error, OSError) as exc:
            error = NoSuccess(f"cannot open the journal {self.path}: {exc}")
            loop.call_soon_threadsafe(_settle, ready, None, error)
            return
        loop.call_soon_threadsafe(_settle, ready, None, None)
        try:
            self._serve(db)
        except BaseException as exc:
            # The writer cannot go on (the disk went away...): fail what is queued and
            # everything asked from now on, rather than leave callers waiting.
            self._dead = NoSuccess(f"the journal {self.path} stopped: {exc!r}")
            log.error("%s", self._dead)
            pending: list[Any] = list(self._inflight)
            while True:
                try:
                    pending.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            for item in pending:
                ops = item if isinstance(item, list) else [item] if item is not _STOP else []
                for _, fut in ops:
                    if fut is not None:
                        loop.call_soon_threadsafe(_settle, fut, None, self._dead)
        finally:
            db.close()

    def _serve(self, db: sqlite3.Connection) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch: list[_Op] = list(cast("list[_Op]", first))
            stop = False
            while len(batch) < 5000:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.extend(cast("list[_Op]", item))
            self._inflight = batch
            self._commit(db, batch)
            self._inflight = []
            if stop:
                return

    def _commit(self, db: sqlite3.Connection, batch: list[_Op]) -> None:
        results: list[tuple[Any, BaseException | None]] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            for fn, _ in batch:
                results.append((fn(db), None))
            db.execute("COMMIT")
        except Exception as exc:  # a bad op (sqlite error, an int too large...)
            if db.in_transaction:
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                # Another process held the lock past the busy timeout: retrying each
                # op would wait that long again, op by op.
                log.error("journal %s: write failed: %s", self.path, exc)
                error = NoSuccess(f"journal {self.path}: {exc}")
                results = [(None, error)] * len(batch)
                self._settle_batch(batch, results)
                return
            # Find the culprit: run each op in its own transaction.
            results = []
            for fn, _ in batch:
                try:
                    db.execute("BEGIN IMMEDIATE")
                    value = fn(db)
                    db.execute("COMMIT")
                    results.append((value, None))
                except Exception as exc:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    log.error("journal %s: write failed: %s", self.path, exc)
                    results.append((None, NoSuccess(f"journal {self.path}: {exc}")))
        self._settle_batch(batch, results)

    def _settle_batch(
        self, batch: list[_Op], results: list[tuple[Any, BaseException | None]]
    ) -> None:
        assert self._loop is not None
        settled = [
            (fut, value, error)
            for (_, fut), (value, error) in zip(batch, results, strict=True)
            if fut is not None
        ]
        if settled:  # one wake-up of the loop for the whole batch
            self._loop.call_soon_threadsafe(_settle_all, settled)

    # -- queueing -------------------------------------------------------------------------
    def _submit(self, fn: Callable[[sqlite3.Connection], Any], wait: bool) -> asyncio.Future[Any]:
        if self._thread is None or self._closed:
            raise IncorrectState(f"journal {self.path} is not open")
        if self._dead is not None:
            raise self._dead
        assert self._loop is not None
        fut: asyncio.Future[Any] = self._loop.create_future()
        if not self._outbox:
            self._loop.call_soon(self._hand_off)
        self._outbox.append((fn, fut if wait else None))
        if not wait:
            fut.set_result(None)
        return fut

    def _hand_off(self) -> None:
        """Give the writer thread the ops queued in this loop iteration, in order."""
        if self._outbox:
            ops, self._outbox = self._outbox, []
            self._queue.put(ops)

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        result: T = await self._submit(fn, wait=True)
        return result

    def _post(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        """Queue a write in order, without waiting for its commit."""
        if self._thread is not None and not self._closed:
            self._submit(fn, wait=False)

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        await self._call(lambda db: None)

    # -- what the session writes ----------------------------------------------------------
    async def intent(self, token: str, op: str, url: str, payload: Any, count: int = 1) -> None:
        """Record a backend call about to be made; returns once it is committed."""
        row = (token, self.session_id, op, url, dumps(payload), count, time.time())
        await self._call(
            lambda db: db.execute(
                "INSERT INTO intents(token, session, op, url, payload, count, status, created)"
                " VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
                row,
            )
        )

    def _outcome_op(
        self, token: str, status: str, ids: Sequence[str], error: str | None
    ) -> Callable[[sqlite3.Connection], Any]:
        row = (status, dumps(list(ids)), error, time.time(), token)
        return lambda db: db.execute(
            "UPDATE intents SET status = ?, ids = ?, error = ?, finished = ? WHERE token = ?",
            row,
        )

    def outcome(
        self, token: str, status: str, ids: Sequence[str] = (), error: str | None = None
    ) -> None:
        """Record how an intent ended (queued in order, not awaited)."""
        self._post(self._outcome_op(token, status, ids, error))

    async def outcome_durable(
        self, token: str, status: str, ids: Sequence[str] = (), error: str | None = None
    ) -> None:
        """Record how an intent ended; returns once it is committed."""
        await self._call(self._outcome_op(token, status, ids, error))

    def record_object(
        self,
        *,
        id: str,
        kind: str,
        url: str,
        native_id: str,
        token: str | None,
        state: str,
        detail: str,
        data: dict[str, Any],
    ) -> None:
        """Record a resource or job (insert, or update its state and data).

        ``data`` is merged into what was recorded: a key it leaves out, or whose value
        is None, keeps its recorded value. A program that found the object again
        without knowing its description (or whether its readiness was confirmed) does
        not erase what another recorded.
        """
        now = time.time()

        def write(db: sqlite3.Connection) -> None:
            found = db.execute("SELECT data FROM objects WHERE id = ?", (id,)).fetchone()
            merged = loads_data(found[0]) if found else {}
            merged.update((key, value) for key, value in data.items() if value is not None)
            db.execute(
                "INSERT INTO objects(id, kind, url, native_id, session, token, state, detail,"
                " data, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET state = excluded.state,"
                " detail = excluded.detail, data = excluded.data, updated = excluded.updated",
                (
                    id,
                    kind,
                    url,
                    native_id,
                    self.session_id,
                    token,
                    state,
                    detail,
                    dumps(merged),
                    now,
                    now,
                ),
            )

        self._post(write)

    def transition(self, id: str, kind: str, old: str, new: str, detail: str) -> None:
        """Record one legal state transition (and the object's current state)."""
        now = time.time()

        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO transitions(id, kind, old, new, detail, at) VALUES (?, ?, ?, ?, ?, ?)",
                (id, kind, old, new, detail, now),
            )
            db.execute(
                "UPDATE objects SET state = ?, detail = ?, updated = ? WHERE id = ?",
                (new, detail, now, id),
            )

        self._post(write)

    # -- job sessions (DRMAA2) ---------------------------------------------------------------
    async def open_job_session(
        self, name: str, url: str | None, key: str
    ) -> JobSessionRecord | None:
        """The job session ``name``, created at ``url`` (with ``key``) unless it exists.

        Returns what is recorded (its URL may differ from ``url``: the caller says so),
        or None if it does not exist and ``url`` is None. Two programs creating one
        name at once get the same record.
        """
        now = time.time()

        def op(db: sqlite3.Connection) -> JobSessionRecord | None:
            if url is not None:
                db.execute(
                    "INSERT OR IGNORE INTO job_sessions(name, url, key, session, created)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (name, url, key, self.session_id, now),
                )
            return _job_session(db, name)

        return await self._call(op)

    async def job_sessions(self) -> list[JobSessionRecord]:
        """Every job session, by name."""

        def op(db: sqlite3.Connection) -> list[JobSessionRecord]:
            rows = db.execute("SELECT name FROM job_sessions ORDER BY name").fetchall()
            found = [_job_session(db, row[0]) for row in rows]
            return [record for record in found if record is not None]

        return await self._call(op)

    async def join_job_session(self, name: str, key: str, job_ids: Sequence[str]) -> bool:
        """Make ``job_ids`` members of the job session; False if it no longer exists
        (destroyed, or its name used again since: ``key`` differs)."""
        now = time.time()
        rows = [(name, job_id, now) for job_id in job_ids]

        def op(db: sqlite3.Connection) -> bool:
            if not _job_session_is(db, name, key):
                return False
            db.executemany(
                "INSERT OR IGNORE INTO job_session_jobs(name, job, added) VALUES (?, ?, ?)", rows
            )
            return True

        return await self._call(op)

    async def job_session_jobs(self, name: str, key: str) -> list[dict[str, Any]] | None:
        """The members of a job session, first joined first, each as :meth:`records`
        gives it (``data`` decoded; None columns for a job with no record); None if
        the session no longer exists."""

        def op(db: sqlite3.Connection) -> list[dict[str, Any]] | None:
            if not _job_session_is(db, name, key):
                return None
            cursor = db.execute(
                "SELECT m.job AS member, o.* FROM job_session_jobs AS m"
                " LEFT JOIN objects AS o ON o.id = m.job WHERE m.name = ? ORDER BY m.rowid",
                (name,),
            )
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

        rows = await self._call(op)
        if rows is not None:
            for row in rows:
                row["data"] = loads_data(row["data"])
        return rows

    async def destroy_job_session(self, name: str, key: str) -> bool:
        """Forget a job session and its membership (not its jobs); False if it was
        already gone."""

        def op(db: sqlite3.Connection) -> bool:
            if not _job_session_is(db, name, key):
                return False
            db.execute("DELETE FROM job_session_jobs WHERE name = ?", (name,))
            db.execute("DELETE FROM job_sessions WHERE name = ?", (name,))
            return True

        return await self._call(op)

    # -- reading ----------------------------------------------------------------------------
    async def intents(self, status: str | None = None) -> list[Intent]:
        """Intents of every session, oldest first (only those with ``status`` if given)."""
        sql = "SELECT * FROM intents"
        args: tuple[Any, ...] = ()
        if status is not None:
            sql += " WHERE status = ?"
            args = (status,)
        rows = await self._call(lambda db: db.execute(sql + " ORDER BY created", args).fetchall())
        return [_intent(row) for row in rows]

    async def in_flight(self) -> list[Intent]:
        """Intents whose outcome was never written: calls that may have created things."""
        return await self.intents("pending")

    async def objects(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Recorded resources and jobs, as dicts of their columns."""
        sql = "SELECT * FROM objects" + (" WHERE kind = ?" if kind else "") + " ORDER BY created"
        args = (kind,) if kind else ()

        def read(db: sqlite3.Connection) -> list[dict[str, Any]]:
            cursor = db.execute(sql, args)
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

        return await self._call(read)

    async def records(self, kind: str | None, native_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The recorded objects (of ``kind``, if given) with these native ids (at any
        endpoint), as :meth:`objects` gives them with ``data`` decoded; latest first."""
        wanted = list(dict.fromkeys(native_ids))

        def read(db: sqlite3.Connection) -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = []
            for start in range(0, len(wanted), 500):  # sqlite's limit on parameters
                chunk = wanted[start : start + 500]
                cursor = db.execute(
                    "SELECT * FROM objects WHERE (? IS NULL OR kind = ?) AND native_id IN"
                    f" ({', '.join('?' * len(chunk))}) ORDER BY updated DESC",
                    (kind, kind, *chunk),
                )
                names = [d[0] for d in cursor.description]
                rows.extend(dict(zip(names, row, strict=True)) for row in cursor.fetchall())
            return rows

        rows = await self._call(read)
        for row in rows:
            row["data"] = loads_data(row["data"])
        return rows

    async def sessions(self) -> list[tuple[str, int, str, float, float | None]]:
        """Every session recorded: (id, pid, host, started, ended or None), oldest first."""
        rows = await self._call(
            lambda db: db.execute(
                "SELECT id, pid, host, started, ended FROM sessions ORDER BY started"
            ).fetchall()
        )
        return [tuple(row) for row in rows]

    async def transitions(self, id: str) -> list[tuple[str, str]]:
        """The recorded (old, new) transitions of one object, in order."""
        rows = await self._call(
            lambda db: db.execute(
                "SELECT old, new FROM transitions WHERE id = ? ORDER BY seq", (id,)
            ).fetchall()
        )
        return [(old, new) for old, new in rows]


def _intent(row: tuple[Any, ...]) -> Intent:
    token, session, op, url, payload, count, status, ids, error, created, finished = row
    return Intent(
        token=token,
        session=session,
        op=op,
        url=url,
        payload=json.loads(payload) if payload else None,
        count=count,
        status=status,
        ids=tuple(json.loads(ids)) if ids else (),
        error=error,
        created=created,
        finished=finished,
    )


def _job_session(db: sqlite3.Connection, name: str) -> JobSessionRecord | None:
    row = db.execute(
        "SELECT name, url, key, created FROM job_sessions WHERE name = ?", (name,)
    ).fetchone()
    if row is None:
        return None
    (count,) = db.execute(
        "SELECT count(*) FROM job_session_jobs WHERE name = ?", (name,)
    ).fetchone()
    return JobSessionRecord(name=row[0], url=row[1], key=row[2], created=row[3], jobs=count)


def _job_session_is(db: sqlite3.Connection, name: str, key: str) -> bool:
    row = db.execute("SELECT key FROM job_sessions WHERE name = ?", (name,)).fetchone()
    return row is not None and row[0] == key


def loads_data(text: str | None) -> dict[str, Any]:
    """A recorded ``data`` column as a dict (empty if absent or unreadable)."""
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _private_files(path: Path) -> None:
    """Blocking: make the journal file 0600 before sqlite opens it.

    sqlite creates the ``-wal`` and ``-shm`` files with the database file's mode, so
    those follow; ones left laxer (by an older aiores) are tightened, as is the file.
    """
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
        tighten(name)


def _settle_all(settled: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, value, error in settled:
        _settle(fut, value, error)


def _settle(fut: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)


def read_journal(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """A read-only connection for tools and tests (blocking: not for the event loop)."""
    return sqlite3.connect(f"file:{os.fspath(path)}?mode=ro", uri=True)
