"""The SQLite work queue: the embedded default for workers on one host, nothing to run.

One database file holds the sessions, their work items and their tool calls. Workers in any
number of processes share it: every claim, heartbeat and answer is one ``BEGIN IMMEDIATE``
transaction (WAL mode, so readers never block), and waiting is a cheap poll of SQLite's
``data_version`` by one task per process.

The agent loop uses the same file through :attr:`SQLiteQueue.sessions`::

    queue = SQLiteQueue("queue.db")
    session = await queue.sessions.create()
    result = await queue.sessions.call_tool(session, "bash", {"command": "ls"})
    await queue.sessions.close(session)

Sessions and their work items: creating a session queues a work item for it. A worker that
stops an item while the session is still open (it was draining, or was asked to stop) queues a
new item for the session, so another worker carries it on. An item whose lease runs out goes back
to the queue with ``attempt`` one higher. Closing the session ends it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from ..errors import ConfigError, OperationTimeout, ProviderUnavailable
from ..tools import ToolResult
from ._wake import ChangeWatch
from .source import (
    NO_HEARTBEAT,
    Lease,
    LeaseLost,
    QueueStats,
    SessionChannel,
    SessionClosed,
    ToolCall,
    WorkItem,
    WorkNotFound,
    WorkState,
)

__all__ = ["SQLiteQueue", "SQLiteSessions", "Session"]

T = TypeVar("T")

DEFAULT_LEASE_TTL = 60.0
"""Seconds a lease lasts without a heartbeat when the worker asks for no other TTL."""
MIN_LEASE_TTL, MAX_LEASE_TTL = 1.0, 3600.0
DEFAULT_RECLAIM_MS = 5000
POLLING_WINDOW = 30.0
HELD = ("starting", "active", "stopping")

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    metadata TEXT NOT NULL,
    created_at REAL NOT NULL,
    next_seq INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS work (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions(id),
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 1,
    queued_at REAL NOT NULL,
    polled_at REAL,
    acked_at REAL,
    last_heartbeat TEXT,
    lease_expires REAL,
    ttl REAL NOT NULL,
    stopped_at REAL
);
CREATE INDEX IF NOT EXISTS work_by_state ON work(state, queued_at);
CREATE TABLE IF NOT EXISTS calls (
    session_id TEXT NOT NULL REFERENCES sessions(id),
    seq INTEGER NOT NULL,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    input TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_by TEXT,
    content TEXT,
    is_error INTEGER,
    answered_at REAL,
    PRIMARY KEY (session_id, seq)
);
CREATE TABLE IF NOT EXISTS pollers (
    id TEXT PRIMARY KEY,
    polled_at REAL NOT NULL
);
"""


class _Db:
    """One SQLite connection used from worker threads, one statement batch at a time."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            fresh = not os.path.exists(self.path)
            if fresh:
                # The queue holds tool inputs and outputs: readable by its owner only.
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            conn.execute("PRAGMA busy_timeout = 30000")
            if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                raise ConfigError(f"SQLite queue {self.path}: WAL mode is not available here")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.executescript(SCHEMA)
            self._conn = conn
        return self._conn

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            with self._lock:
                try:
                    return fn(self._connect())
                except sqlite3.OperationalError as exc:
                    raise ProviderUnavailable(
                        f"SQLite queue {self.path}: {exc}", retryable=True
                    ) from exc

        return await anyio.to_thread.run_sync(call)

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` inside ``BEGIN IMMEDIATE`` ... ``COMMIT``."""

        def txn(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return await self.run(txn)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _iso(moment: float | None) -> datetime | None:
    return None if moment is None else datetime.fromtimestamp(moment, timezone.utc)


def _clamp_ttl(value: float | None) -> float:
    if value is None:
        return DEFAULT_LEASE_TTL
    return min(max(float(value), MIN_LEASE_TTL), MAX_LEASE_TTL)


def _heartbeat_token(now: float, previous: str | None) -> str:
    """An RFC 3339 timestamp (microseconds) strictly after the previous token."""
    moment = datetime.fromtimestamp(now, timezone.utc)
    if previous is not None and previous != NO_HEARTBEAT:
        moment = max(moment, datetime.fromisoformat(previous) + timedelta(microseconds=1))
    return moment.isoformat(timespec="microseconds")


class Session:
    """A session as the agent loop holds it: its id (pass it to ``call_tool`` and ``close``)."""

    def __init__(self, session_id: str) -> None:
        self.id = session_id

    def __repr__(self) -> str:
        return f"Session({self.id!r})"


class SQLiteQueue:
    """A :class:`~agent_sandbox.worker.WorkSource` in one SQLite file (created when missing).

    Args:
        path: the database file; its directory must exist. Created readable by its owner only.
        worker_id: this poller's name in ``stats().workers_polling`` (default: random).

    :attr:`sessions` is the agent-loop side on the same file.
    """

    def __init__(self, path: str | os.PathLike[str], *, worker_id: str | None = None) -> None:
        self.path = str(Path(path))
        if not Path(self.path).parent.is_dir():
            raise ConfigError(f"SQLite queue: directory {Path(self.path).parent} does not exist")
        self.url = f"sqlite:///{Path(self.path).resolve()}"
        self.worker_id = worker_id or uuid.uuid4().hex[:12]
        self._db = _Db(self.path)
        self._probe_db = _Db(self.path)
        self.watch = ChangeWatch(self._data_version)
        self.sessions = SQLiteSessions(self)

    async def _data_version(self) -> object:
        return await self._probe_db.run(lambda c: c.execute("PRAGMA data_version").fetchone()[0])

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._db.run(fn)

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._db.write(fn)

    # -- the work-queue contract ---------------------------------------------------------

    async def poll(
        self, *, block_ms: int = 999, reclaim_older_than_ms: int | None = None
    ) -> WorkItem | None:
        """Claim the next queued item, waiting up to ``block_ms`` (1-999) for one."""
        if not 1 <= block_ms <= 999:
            raise ConfigError(f"block_ms must be between 1 and 999, got {block_ms}")
        reclaim = (
            DEFAULT_RECLAIM_MS if reclaim_older_than_ms is None else reclaim_older_than_ms
        ) / 1000
        deadline = anyio.current_time() + block_ms / 1000
        while True:
            item = await self._write(lambda c: self._claim(c, time.time(), reclaim))
            left = deadline - anyio.current_time()
            if item is not None or left <= 0:
                return item
            await self.watch.wait(timeout=min(left, 0.25))

    def _claim(self, conn: sqlite3.Connection, now: float, reclaim: float) -> WorkItem | None:
        conn.execute(
            "INSERT INTO pollers(id, polled_at) VALUES (?, ?) "
            "ON CONFLICT(id) DO UPDATE SET polled_at = excluded.polled_at",
            (self.worker_id, now),
        )
        # Leases that ran out go back to the queue, one attempt later.
        conn.execute(
            "UPDATE work SET state = 'queued', attempt = attempt + 1, queued_at = ?, "
            "polled_at = NULL, acked_at = NULL, last_heartbeat = NULL, lease_expires = NULL "
            f"WHERE state IN {HELD} AND lease_expires < ?",
            (now, now),
        )
        row = conn.execute(
            "SELECT w.id, w.session_id, w.attempt, s.metadata FROM work w "
            "JOIN sessions s ON s.id = w.session_id "
            "WHERE w.state = 'queued' AND (w.polled_at IS NULL OR w.polled_at < ?) "
            "ORDER BY w.queued_at, w.rowid LIMIT 1",
            (now - reclaim,),
        ).fetchone()
        if row is None:
            return None
        conn.execute("UPDATE work SET polled_at = ? WHERE id = ?", (now, row[0]))
        return WorkItem(
            id=row[0],
            session_id=row[1],
            state="queued",
            attempt=row[2],
            metadata=json.loads(row[3]),
        )

    async def ack(self, item_id: str) -> None:
        """Acknowledge a polled item (idempotent while it is held)."""

        def ack(conn: sqlite3.Connection) -> None:
            state = self._state(conn, item_id)
            if state == "queued":
                now = time.time()
                conn.execute(
                    "UPDATE work SET state = 'starting', acked_at = ?, lease_expires = ? + ttl "
                    "WHERE id = ?",
                    (now, now, item_id),
                )

        await self._write(ack)

    def _state(self, conn: sqlite3.Connection, item_id: str) -> WorkState:
        row = conn.execute("SELECT state FROM work WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            raise WorkNotFound(f"no work item {item_id!r}", op="work")
        state: WorkState = row[0]
        return state

    async def heartbeat(
        self,
        item_id: str,
        *,
        expected_last_heartbeat: str,
        desired_ttl_seconds: float | None = None,
    ) -> Lease:
        """Take or extend the lease (compare-and-swap); raises :class:`LeaseLost`."""

        def beat(conn: sqlite3.Connection) -> Lease:
            row = conn.execute(
                "SELECT state, last_heartbeat, ttl FROM work WHERE id = ?", (item_id,)
            ).fetchone()
            if row is None:
                raise WorkNotFound(f"no work item {item_id!r}", op="heartbeat")
            state, last, ttl = row
            current = last or NO_HEARTBEAT
            if state in ("stopping", "stopped"):
                return Lease(current, False, state, ttl)
            if state == "queued" or current != expected_last_heartbeat:
                raise LeaseLost(
                    f"work item {item_id}: lease held elsewhere (state {state}, "
                    f"last heartbeat {current!r}, expected {expected_last_heartbeat!r})",
                    op="heartbeat",
                )
            now = time.time()
            ttl = _clamp_ttl(desired_ttl_seconds) if desired_ttl_seconds is not None else ttl
            token = _heartbeat_token(now, last)
            conn.execute(
                "UPDATE work SET state = 'active', last_heartbeat = ?, ttl = ?, "
                "lease_expires = ? WHERE id = ?",
                (token, ttl, now + ttl, item_id),
            )
            return Lease(token, True, "active", ttl)

        return await self._write(beat)

    async def stop(self, item_id: str, *, force: bool = False) -> None:
        """Stop an item; a forced stop of an open session's item queues a new one for it."""

        def stop(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT w.state, w.session_id, w.attempt, s.state FROM work w "
                "JOIN sessions s ON s.id = w.session_id WHERE w.id = ?",
                (item_id,),
            ).fetchone()
            if row is None:
                raise WorkNotFound(f"no work item {item_id!r}", op="stop")
            state, session_id, attempt, session_state = row
            if state == "stopped":
                return
            now = time.time()
            if not force and state in HELD:
                conn.execute("UPDATE work SET state = 'stopping' WHERE id = ?", (item_id,))
                return
            conn.execute(
                "UPDATE work SET state = 'stopped', stopped_at = ?, lease_expires = NULL "
                "WHERE id = ?",
                (now, item_id),
            )
            if session_state == "open":
                _queue_item(conn, session_id, now, attempt + 1)

        await self._write(stop)

    async def stats(self) -> QueueStats:
        """Depth (never polled), pending (polled, not acknowledged), oldest, pollers."""

        def stats(conn: sqlite3.Connection) -> QueueStats:
            now = time.time()
            depth, pending, oldest = conn.execute(
                "SELECT SUM(polled_at IS NULL), SUM(polled_at IS NOT NULL), MIN(queued_at) "
                "FROM work WHERE state = 'queued'"
            ).fetchone()
            (polling,) = conn.execute(
                "SELECT COUNT(*) FROM pollers WHERE polled_at > ?", (now - POLLING_WINDOW,)
            ).fetchone()
            return QueueStats(depth or 0, pending or 0, _iso(oldest), polling)

        return await self._run(stats)

    def channel(self, item: WorkItem, *, owns: Callable[[str], bool]) -> SessionChannel:
        """The tool calls of ``item``'s session (every tool name is this worker's to answer)."""
        return _SQLiteChannel(self, item)

    async def aclose(self) -> None:
        """Close the database connections."""
        self._db.close()
        self._probe_db.close()


def _queue_item(conn: sqlite3.Connection, session_id: str, now: float, attempt: int = 1) -> str:
    item_id = "work_" + uuid.uuid4().hex
    conn.execute(
        "INSERT INTO work(id, session_id, state, attempt, queued_at, ttl) "
        "VALUES (?, ?, 'queued', ?, ?, ?)",
        (item_id, session_id, attempt, now, DEFAULT_LEASE_TTL),
    )
    return item_id


class _SQLiteChannel:
    """One session's calls, fenced by the item and attempt this worker holds."""

    def __init__(self, queue: SQLiteQueue, item: WorkItem) -> None:
        self._queue = queue
        self._item = item
        self._holder = f"{item.id}#{item.attempt}"

    def _fence_ok(self, conn: sqlite3.Connection) -> bool:
        row = conn.execute(
            f"SELECT 1 FROM work WHERE id = ? AND attempt = ? AND state IN {HELD}",
            (self._item.id, self._item.attempt),
        ).fetchone()
        return row is not None

    async def next_call(self) -> ToolCall | None:
        """The oldest unanswered call; None once the session is closed."""
        session_id = self._item.session_id

        def look(conn: sqlite3.Connection) -> ToolCall | bool | None:
            (state,) = conn.execute(
                "SELECT state FROM sessions WHERE id = ?", (session_id,)
            ).fetchone()
            if state != "open":
                return None
            if not self._fence_ok(conn):
                raise LeaseLost(
                    f"work item {self._item.id} (attempt {self._item.attempt}) is no longer "
                    "held by this worker",
                    op="next_call",
                )
            row = conn.execute(
                "SELECT id, name, input, started_by FROM calls "
                "WHERE session_id = ? AND answered_at IS NULL ORDER BY seq LIMIT 1",
                (session_id,),
            ).fetchone()
            if row is None:
                return False
            call_id, name, raw, started_by = row
            return ToolCall(
                id=call_id,
                name=name,
                input=json.loads(raw),
                interrupted=started_by is not None and started_by != self._holder,
            )

        while True:
            found = await self._queue._run(look)
            if found is not False:
                assert not isinstance(found, bool)
                return found
            await self._queue.watch.wait(timeout=0.5)

    async def started(self, call: ToolCall) -> None:
        """Mark ``call`` as running under this worker's attempt."""
        await self._queue._write(
            lambda c: c.execute(
                "UPDATE calls SET started_by = ? WHERE id = ? AND answered_at IS NULL",
                (self._holder, call.id),
            )
        )

    async def post_result(self, call: ToolCall, content: str, *, is_error: bool) -> bool:
        """Answer ``call`` once; refused when answered already or the lease moved on."""

        def post(conn: sqlite3.Connection) -> bool:
            if not self._fence_ok(conn):
                return False
            cursor = conn.execute(
                "UPDATE calls SET content = ?, is_error = ?, answered_at = ? "
                "WHERE id = ? AND answered_at IS NULL",
                (content, int(is_error), time.time(), call.id),
            )
            return cursor.rowcount == 1

        return await self._queue._write(post)

    async def aclose(self) -> None:
        """Nothing to release: the channel uses the queue's connection."""


class SQLiteSessions:
    """The agent-loop side of a :class:`SQLiteQueue`: open sessions and call their tools."""

    def __init__(self, queue: SQLiteQueue) -> None:
        self._queue = queue

    async def create(self, *, metadata: Mapping[str, str] | None = None) -> Session:
        """Open a session and queue a work item for it; a worker will claim it."""
        session_id = "sess_" + uuid.uuid4().hex
        meta = json.dumps({str(k): str(v) for k, v in (metadata or {}).items()})

        def create(conn: sqlite3.Connection) -> None:
            now = time.time()
            conn.execute(
                "INSERT INTO sessions(id, state, metadata, created_at) VALUES (?, 'open', ?, ?)",
                (session_id, meta, now),
            )
            _queue_item(conn, session_id, now)

        await self._queue._write(create)
        return Session(session_id)

    async def call_tool(
        self,
        session: Session | str,
        name: str,
        input: Mapping[str, Any],
        *,
        call_id: str | None = None,
        timeout: float | None = None,
    ) -> ToolResult:
        """Queue a tool call in the session and wait for its result.

        Calls of one session run one at a time, in the order they were made.

        Raises:
            SessionClosed: the session is closed.
            WorkNotFound: no such session.
            OperationTimeout: no answer within ``timeout`` seconds (the call stays queued
                and may still run).
        """
        session_id = session.id if isinstance(session, Session) else session
        cid = call_id or "call_" + uuid.uuid4().hex
        payload = json.dumps(dict(input))

        def add(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT state, next_seq FROM sessions WHERE id = ?", (session_id,)
            ).fetchone()
            if row is None:
                raise WorkNotFound(f"no session {session_id!r}", op="call_tool")
            if row[0] != "open":
                raise SessionClosed(f"session {session_id} is closed", op="call_tool")
            conn.execute("UPDATE sessions SET next_seq = next_seq + 1 WHERE id = ?", (session_id,))
            conn.execute(
                "INSERT INTO calls(session_id, seq, id, name, input, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (session_id, row[1], cid, name, payload, time.time()),
            )

        await self._queue._write(add)

        def answer(conn: sqlite3.Connection) -> tuple[str, int] | None:
            row = conn.execute(
                "SELECT content, is_error FROM calls WHERE id = ? AND answered_at IS NOT NULL",
                (cid,),
            ).fetchone()
            return None if row is None else (row[0], row[1])

        with anyio.move_on_after(timeout) as scope:
            while True:
                found = await self._queue._run(answer)
                if found is not None:
                    return ToolResult(found[0], is_error=bool(found[1]))
                await self._queue.watch.wait(timeout=0.5)
        assert scope.cancelled_caught
        raise OperationTimeout(
            f"tool call {cid} in session {session_id}: no answer within {timeout} s",
            op="call_tool",
        )

    async def close(self, session: Session | str) -> None:
        """Close the session: its worker ends it and destroys its sandbox. Idempotent."""
        session_id = session.id if isinstance(session, Session) else session

        def close(conn: sqlite3.Connection) -> None:
            cursor = conn.execute(
                "UPDATE sessions SET state = 'closed' WHERE id = ?", (session_id,)
            )
            if cursor.rowcount == 0:
                raise WorkNotFound(f"no session {session_id!r}", op="close")
            conn.execute(
                "UPDATE work SET state = 'stopped', stopped_at = ? "
                "WHERE session_id = ? AND state = 'queued'",
                (time.time(), session_id),
            )

        await self._queue._write(close)
