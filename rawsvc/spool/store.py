"""
The durable job store: SQLite (WAL) in C{state_dir/spool.db}, payloads
larger than L{BLOB_MAX} in C{state_dir/spool/<job_id>.job}.

L{Store} is the reactor side: each method queues a write (or a read) for
the writer thread (L{rawsvc.spool.writer}) and returns a Deferred that
fires once it is committed; a background write (C{background=True}) has
none, its failure is logged, and L{Store.flush} waits for it.  The
operations themselves, run on the writer thread, are the C{_}-prefixed
functions here; new jobs, progress and final states are written in runs by
the writer (L{rawsvc.spool.records}).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed

from rawsvc.spool.files import unlink
from rawsvc.spool.records import BLOB_MAX, StoredJob, write_waiting
from rawsvc.spool.schema import (
    COLUMNS, DB_NAME, FILES_DIR, FINISHED, SCHEMA, UNFINISHED, UNFINISHED_SQL, SpoolError, connect, db_path,
    describe, migrate,
)
from rawsvc.spool.writer import ADD, FINISH, MAX_BATCH, PROGRESS, Op, Writer

__all__ = [
    "BLOB_MAX", "COLUMNS", "DB_NAME", "FILES_DIR", "FINISHED", "MAX_BATCH", "SCHEMA", "UNFINISHED",
    "SpoolError", "Store", "StoredJob", "connect", "db_path",
]


class Store:
    """See the module docstring.  Methods return Deferreds; call from the reactor."""

    def __init__(self, state_dir: str, reactor: Any, max_pages: int | None = None) -> None:
        self.state_dir = state_dir
        self.path = db_path(state_dir)
        self.files_dir = os.path.join(state_dir, FILES_DIR)
        self.reactor = reactor
        self.max_pages = max_pages  # tests: simulate a full disk
        self.writer = Writer(reactor, self.files_dir)

    @property
    def error(self) -> str | None:
        """Why the spool cannot store jobs, once opening it failed; else None."""
        return self.writer.error

    @property
    def conn(self) -> sqlite3.Connection | None:
        return self.writer.conn

    @property
    def batches(self) -> int:
        return self.writer.batches

    @property
    def commits_full(self) -> int:
        return self.writer.commits_full

    # Lifetime ---------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread (then call L{open})."""
        self.writer.start()

    def open(self) -> Deferred:
        """(Re)open the database; fails with L{SpoolError} saying why."""
        return self._submit(None, self._open, (), raw=True)

    def stop(self) -> Deferred:
        """Write everything queued, close, end the thread."""
        return self.writer.stop()

    # Writes -----------------------------------------------------------------

    def add(self, job: Any, flow: str, variables: dict[str, str] | None = None) -> Deferred:
        """
        Store a new job durably (state C{running}: its flow starts at once).  Fires with the payload
        file's path (or None when the payload is in the database).  Without C{variables}, the
        writer thread takes the job's own, and its payload: nothing may change them until this fires.
        """
        return self._submit(ADD, None, (job, flow, variables, time.time()), durable=True)

    def progress(self, job_id: str, action_index: int, variables: dict[str, str], delivery: tuple | None,
                 background: bool = False) -> Deferred | None:
        """
        The job is running its action C{action_index}; not fsynced.  With
        C{background}, no Deferred: a failure is logged (see L{flush}).
        """
        return self._submit(PROGRESS, None, (job_id, action_index, variables, delivery, time.time()),
                            background=background)

    def started(self, job_id: str, action_index: int, background: bool = False) -> Deferred | None:
        """The flow (re)started: state running, one more attempt."""
        return self._submit(None, _started, (job_id, action_index, time.time()), background=background)

    def finish(self, job_id: str, state: str, error: str | None, action_index: int,
               variables: dict[str, str], delivery: tuple | None, background: bool = False) -> Deferred | None:
        """The job's final state, durably."""
        return self._submit(
            FINISH, None, (job_id, state, error, action_index, variables, delivery, time.time()), durable=True,
            background=background,
        )

    def waiting(self, job_id: str, attempt: int, error: str | None, next_try: float | None) -> None:
        """The job's delivery waits to retry (or, C{next_try} None, tries again); in the background."""
        self._submit(None, write_waiting, (job_id, attempt, error, next_try, time.time()), background=True)

    def flush(self) -> Deferred:
        """Fires once every write queued so far is committed (or has failed)."""
        if not self.writer.running:
            return succeed(None)
        return self._submit(None, _nothing, (), raw=True)

    def requeue(self, job_id: str, action_index: int) -> Deferred:
        """Retry: a finished job goes back to C{queued} at C{action_index}."""
        return self._submit(None, _requeue, (job_id, action_index, time.time()), durable=True)

    def load(self, states: tuple[str, ...] = UNFINISHED, job_id: str | None = None) -> Deferred:
        """Fires with the L{StoredJob}s in C{states} (or the one C{job_id}), by seq."""
        return self._submit(None, _load, (states, job_id))

    def take_requests(self) -> Deferred:
        """Fires with the CLI's pending requests: (id, job_id, action)."""
        return self._submit(None, _take_requests, ())

    def answer(self, request_id: int, ok: bool, result: str) -> Deferred:
        return self._submit(None, _answer, (request_id, ok, result, time.time()))

    def purge(self, max_age: float, max_bytes: int) -> Deferred:
        """Remove finished jobs older than C{max_age} s, then the oldest past C{max_bytes}."""
        return self._submit(None, _purge, (time.time() - max_age, max_bytes))

    def _submit(self, kind: str | None, fn: Callable | None, args: tuple, durable: bool = False,
                raw: bool = False, background: bool = False) -> Any:
        return self.writer.submit(Op(kind, fn, args, durable, None if background else Deferred(), raw))

    # Operations (writer thread) -------------------------------------------------

    def _open(self) -> str:
        if self.writer.conn is not None:
            return self.path
        try:
            os.makedirs(self.files_dir, mode=0o700, exist_ok=True)
            conn = connect(self.path)
            if self.max_pages is not None:
                conn.execute(f"PRAGMA max_page_count={int(self.max_pages)}")
            migrate(conn)
            os.chmod(self.path, 0o600)
        except (OSError, sqlite3.Error) as e:
            self.writer.error = f"cannot open {self.path}: {describe(e)}"
            raise SpoolError(self.writer.error) from None
        self.writer.opened(conn)
        return self.path


def _nothing() -> None:
    pass


def _started(conn, job_id, action_index, now) -> None:
    conn.execute(
        "UPDATE jobs SET state = 'running', action_index = ?, attempt = attempt + 1,"
        " started_at = COALESCE(started_at, ?), updated_at = ? WHERE job_id = ?",
        (action_index, now, now, job_id),
    )


def _requeue(conn, job_id, action_index, now) -> None:
    conn.execute(
        "UPDATE jobs SET state = 'queued', action_index = ?, finished_at = NULL, updated_at = ?"
        " WHERE job_id = ?",
        (action_index, now, job_id),
    )


def _load(conn, states, job_id) -> list[StoredJob]:
    if job_id is not None:
        rows = conn.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,))
    elif tuple(states) == UNFINISHED:
        rows = conn.execute(f"SELECT * FROM jobs WHERE {UNFINISHED_SQL} ORDER BY seq")
    else:
        marks = ", ".join("?" for _ in states)
        rows = conn.execute(f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY seq", states)
    return [StoredJob.from_row(r) for r in rows]


def _take_requests(conn) -> list[tuple[int, str, str]]:
    rows = conn.execute("SELECT id, job_id, action FROM requests WHERE done_at IS NULL ORDER BY id")
    return [tuple(r) for r in rows]


def _answer(conn, request_id, ok, result, now) -> None:
    conn.execute("UPDATE requests SET done_at = ?, ok = ?, result = ? WHERE id = ?", (now, int(ok), result, request_id))


def _purge(conn, cutoff, max_bytes) -> tuple[int, int]:
    finished = "state IN ('done', 'failed', 'cancelled')"
    doomed = conn.execute(
        f"SELECT seq, payload_path, size FROM jobs WHERE {finished} AND finished_at < ?", (cutoff,)
    ).fetchall()
    total = conn.execute(f"SELECT COALESCE(SUM(size), 0) FROM jobs WHERE {finished}").fetchone()[0]
    total -= sum(r["size"] for r in doomed)
    if total > max_bytes:
        for r in conn.execute(
            f"SELECT seq, payload_path, size FROM jobs WHERE {finished} AND finished_at >= ?"
            " ORDER BY finished_at", (cutoff,)
        ):
            if total <= max_bytes:
                break
            doomed.append(r)
            total -= r["size"]
    conn.executemany("DELETE FROM jobs WHERE seq = ?", [(r["seq"],) for r in doomed])
    conn.execute("DELETE FROM requests WHERE done_at < ?", (cutoff,))
    freed = 0
    for r in doomed:
        freed += r["size"]
        if r["payload_path"]:
            unlink(r["payload_path"])
    return len(doomed), freed
