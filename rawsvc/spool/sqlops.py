"""
The SQLite store's operations other than the runs of new jobs, progress and
final states (L{rawsvc.spool.records}): each takes a connection first.

L{rawsvc.spool.store.Store} runs them on its writer thread.  The reads and
the requests (L{query_jobs}, L{load_jobs}, L{insert_request},
L{answer_of}) need nothing of the store: the CLI may run them on a
connection of its own (read-only for the reads), so that C{rawsvc jobs}
and the store answer the same question the same way.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable

from rawsvc.spool.files import payload_file, unlink
from rawsvc.spool.model import StoredJob
from rawsvc.spool.schema import COLUMNS, UNFINISHED, UNFINISHED_SQL

_FINISHED_SQL = "state IN ('done', 'failed', 'cancelled')"


def nothing() -> None:
    """A write that writes nothing: L{rawsvc.spool.store.Store.flush} waits for it."""


def started(conn: sqlite3.Connection, job_id: str, action_index: int, now: float) -> None:
    conn.execute(
        "UPDATE jobs SET state = 'running', action_index = ?, attempt = attempt + 1,"
        f" started_at = COALESCE(started_at, ?), updated_at = ? WHERE job_id = ? AND {UNFINISHED_SQL}",
        (action_index, now, now, job_id),
    )


def requeue(conn: sqlite3.Connection, job_id: str, action_index: int, now: float) -> None:
    conn.execute(
        "UPDATE jobs SET state = 'queued', action_index = ?, finished_at = NULL, updated_at = ?"
        " WHERE job_id = ?",
        (action_index, now, job_id),
    )


def load_jobs(conn: sqlite3.Connection, states: Iterable[str], job_id: str | None, files_dir: str) -> list[StoredJob]:
    """The jobs in C{states} (or the one C{job_id}) by seq, with their payloads."""
    states = tuple(states)
    if job_id is not None:
        rows = conn.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,))
    elif states == UNFINISHED:
        rows = conn.execute(f"SELECT * FROM jobs WHERE {UNFINISHED_SQL} ORDER BY seq")
    else:
        marks = ", ".join("?" for _ in states)
        rows = conn.execute(f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY seq", states)
    jobs = [StoredJob.from_row(r) for r in rows]
    for job in jobs:
        if job.payload_path:
            job.payload_path = payload_file(files_dir, job.payload_path)
    return jobs


def query_jobs(conn: sqlite3.Connection, states: Iterable[str] = (), triggers: Iterable[str] = (),
               limit: int | None = 50, prefix: str | None = None, files_dir: str | None = None) -> list[StoredJob]:
    """
    History, newest first: the jobs in C{states}, from C{triggers}, whose
    id starts with C{prefix} (each only when given), at most C{limit} (0 or
    None: all); without payloads.  C{files_dir}: payload paths found again
    there when the state_dir has moved.
    """
    where: list[str] = []
    params: list[object] = []
    for column, values in (("state", tuple(states)), ("trigger", tuple(triggers))):
        if values:
            where.append(f"{column} IN ({', '.join('?' * len(values))})")
            params.extend(values)
    if prefix:
        where.append("job_id >= ? AND job_id < ?")  # the unique index answers it
        params.extend((prefix, prefix + "\U0010ffff"))
    sql = f"SELECT {', '.join(COLUMNS)} FROM jobs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY seq DESC"
    if limit:
        sql += f" LIMIT {int(limit)}"
    jobs = [StoredJob.from_row(r) for r in conn.execute(sql, params)]
    if files_dir is not None:
        for job in jobs:
            if job.payload_path:
                job.payload_path = payload_file(files_dir, job.payload_path)
    return jobs


def insert_request(conn: sqlite3.Connection, job_id: str, action: str, now: float) -> int:
    """A retry or cancel request for the service; its id."""
    cur = conn.execute("INSERT INTO requests (job_id, action, requested_at) VALUES (?, ?, ?)", (job_id, action, now))
    assert cur.lastrowid is not None  # an INSERT into a rowid table has one
    return cur.lastrowid


def take_requests(conn: sqlite3.Connection) -> list[tuple[int, str, str]]:
    rows = conn.execute("SELECT id, job_id, action FROM requests WHERE done_at IS NULL ORDER BY id")
    return [(r[0], r[1], r[2]) for r in rows]


def answer(conn: sqlite3.Connection, request_id: int, ok: bool, result: str, now: float) -> None:
    conn.execute("UPDATE requests SET done_at = ?, ok = ?, result = ? WHERE id = ?", (now, int(ok), result, request_id))


def answer_of(conn: sqlite3.Connection, request_id: int) -> tuple[bool, str] | None:
    """C{(ok, result)} of an answered request; None while unanswered or unknown."""
    row = conn.execute("SELECT done_at, ok, result FROM requests WHERE id = ?", (request_id,)).fetchone()
    if row is None or row[0] is None:
        return None
    return bool(row[1]), row[2]


def free_bytes(path: str) -> int:
    """Bytes free for us on the filesystem of C{path}."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def purge(conn: sqlite3.Connection, cutoff: float, max_bytes: int, files_dir: str, min_free: int) -> tuple[int, int]:
    """
    Finished jobs older than C{cutoff}; then the oldest, while their total
    is past C{max_bytes} or the free space of the spool's filesystem is
    below C{min_free} (the floor counts the jobs' sizes as freed).
    """
    finished = _FINISHED_SQL
    doomed = conn.execute(
        f"SELECT seq, payload_path, size FROM jobs WHERE {finished} AND finished_at < ?", (cutoff,)
    ).fetchall()
    total = conn.execute(f"SELECT COALESCE(SUM(size), 0) FROM jobs WHERE {finished}").fetchone()[0]
    total -= sum(r["size"] for r in doomed)
    short = min_free - free_bytes(files_dir) - sum(r["size"] for r in doomed) if min_free else 0
    if total > max_bytes or short > 0:
        for r in conn.execute(
            f"SELECT seq, payload_path, size FROM jobs WHERE {finished} AND finished_at >= ?"
            " ORDER BY finished_at", (cutoff,)
        ):
            if total <= max_bytes and short <= 0:
                break
            doomed.append(r)
            total -= r["size"]
            short -= r["size"]
    conn.executemany("DELETE FROM jobs WHERE seq = ?", [(r["seq"],) for r in doomed])
    conn.execute("DELETE FROM requests WHERE done_at < ?", (cutoff,))
    freed = 0
    for r in doomed:
        freed += r["size"]
        if r["payload_path"]:
            unlink(payload_file(files_dir, r["payload_path"]))
    return len(doomed), freed
