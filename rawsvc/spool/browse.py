"""
Reading the spool from outside the service, and leaving it requests: what
C{rawsvc jobs}, C{job}, C{retry} and C{cancel} do, without their printing
(that is L{rawsvc.cli.jobs}).

Listing reads the database through a read-only connection (WAL: readers
never block the service, nor it them).  C{retry} and C{cancel} do not touch
a job themselves: they add a row to the C{requests} table, which the
running service reads every second (and at its next start when it is not
running), applies, and answers.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from typing import Any

from rawsvc.spool import check, journal
from rawsvc.spool.files import payload_file
from rawsvc.spool.records import full_variables
from rawsvc.spool.schema import COLUMNS, FILES_DIR, connect, db_path, migrate


class SpoolError(Exception):
    """The spool cannot be read as asked; C{str()} is for the operator."""


def open_spool(state_dir: str, readonly: bool = True) -> sqlite3.Connection:
    """
    The spool of C{state_dir}, checked first (what its first pages tell):
    read-only (leaves no -wal or -shm behind), or writable and migrated.
    """
    path = db_path(state_dir)
    if not os.path.exists(path):
        raise SpoolError(f"no spool at {path} (has the service run with [service] spool = true?)")
    report = check.inspect(state_dir, deep=False)
    if report.problems:
        raise SpoolError(f"the spool in {state_dir} is damaged: {report.problems[0]} "
                         f"(see rawsvc spool check --state-dir {state_dir})")
    try:
        if readonly:
            conn = check.reader(path)
            _catch_up(conn, state_dir)
            return conn
        conn = connect(path)
        migrate(conn)  # an older spool: add what is missing
        return conn
    except sqlite3.Error as e:
        raise SpoolError(f"{path}: {e}") from None


#: Seconds a read waits at most for the index to hold the journal's last record.
CATCH_UP = 1.0


def _catch_up(conn: sqlite3.Connection, state_dir: str) -> None:
    """
    The service acknowledges a job at its journal record's fdatasync and
    writes the index just behind it: wait (L{CATCH_UP} s at most: a service
    that was killed leaves its last records to the next start) until the
    index holds the journal's last record, so a listing shows every job
    acknowledged before it.
    """
    try:
        records, _ = journal.read(journal.journal_path(state_dir))
        if not records:
            return
        last = records[-1].seq
        deadline = time.monotonic() + CATCH_UP
        while journal.applied_seq(conn) < last and time.monotonic() < deadline:
            time.sleep(0.005)
    except (OSError, sqlite3.Error):
        return  # not readable here: the index as it is


def find_job(conn: sqlite3.Connection, job_id: str) -> sqlite3.Row:
    """The job C{job_id}, or the one job whose id starts with it."""
    rows = conn.execute(
        f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE job_id >= ? AND job_id < ? ORDER BY seq LIMIT 2",
        (job_id, job_id + "\U0010ffff"),
    ).fetchall()
    exact = [r for r in rows if r["job_id"] == job_id]
    if exact:
        return exact[0]
    if not rows:
        raise SpoolError(f"no job {job_id} in the spool")
    if len(rows) > 1:
        raise SpoolError(f"{job_id!r} matches more than one job; give more of the id")
    return rows[0]


def list_jobs(conn: sqlite3.Connection, states: Sequence[str] = (), triggers: Sequence[str] = (),
              limit: int = 0) -> list[sqlite3.Row]:
    """Jobs newest first, only in C{states} and from C{triggers} when given; at most C{limit} (0: all)."""
    where: list[str] = []
    params: list[str] = []
    for column, values in (("state", states), ("trigger", triggers)):
        if values:
            where.append(f"{column} IN ({', '.join('?' * len(values))})")
            params.extend(values)
    sql = f"SELECT {', '.join(COLUMNS)} FROM jobs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY seq DESC"
    if limit > 0:
        sql += f" LIMIT {int(limit)}"
    return conn.execute(sql, params).fetchall()


def job_record(row: sqlite3.Row) -> dict[str, Any]:
    """A job row as a dict, with every variable (those the columns hold too)."""
    d = {k: row[k] for k in row.keys()}
    d["variables"] = full_variables(row)
    return d


def payload_chunks(conn: sqlite3.Connection, state_dir: str, row: sqlite3.Row) -> Iterator[bytes]:
    """A job's payload: from its spool file, else from the database."""
    if row["payload_path"]:
        with open(payload_file(os.path.join(state_dir, FILES_DIR), row["payload_path"]), "rb") as f:
            while chunk := f.read(1 << 16):
                yield chunk
        return
    blob = conn.execute("SELECT payload FROM jobs WHERE seq = ?", (row["seq"],)).fetchone()[0]
    yield blob or b""


def add_request(conn: sqlite3.Connection, job_id: str, action: str) -> int:
    """Leave the service a C{retry} or C{cancel} request; its id."""
    cur = conn.execute(
        "INSERT INTO requests (job_id, action, requested_at) VALUES (?, ?, ?)", (job_id, action, time.time())
    )
    assert cur.lastrowid is not None
    return cur.lastrowid


def request_answer(conn: sqlite3.Connection, request_id: int) -> tuple[bool, str] | None:
    """The service's answer to a request, (ok, text); None while it has not answered."""
    row = conn.execute("SELECT done_at, ok, result FROM requests WHERE id = ?", (request_id,)).fetchone()
    if row is None or row["done_at"] is None:
        return None
    return bool(row["ok"]), row["result"]


def page_jobs(conn: sqlite3.Connection, *, states: Sequence[str] = (), triggers: Sequence[str] = (),
              destinations: Sequence[str] = (), since: float | None = None, until: float | None = None,
              text: str | None = None, before: int | None = None, limit: int = 50) -> list[sqlite3.Row]:
    """
    One page of the console's job list, newest first: the jobs matching
    every filter given (received in C{[since, until)}; C{text} a substring
    of the job id or of the variables) whose C{seq} is below C{before} (the
    cursor: the last C{seq} of the previous page), at most C{limit} + 1
    rows (the extra row says there is a next page).  The scan walks the
    primary key downwards from the cursor and stops at the page's end, so
    a page costs the rows it passes over, not the size of the spool.
    """
    where: list[str] = []
    params: list[Any] = []
    for column, values in (("state", states), ("trigger", triggers), ("destination", destinations)):
        if values:
            where.append(f"{column} IN ({', '.join('?' * len(values))})")
            params.extend(values)
    if since is not None:
        where.append("received_at >= ?")
        params.append(since)
    if until is not None:
        where.append("received_at < ?")
        params.append(until)
    if text:
        pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where.append("(job_id LIKE ? ESCAPE '\\' OR variables LIKE ? ESCAPE '\\')")
        params.extend((pattern, pattern))
    if before is not None:
        where.append("seq < ?")
        params.append(before)
    sql = f"SELECT {', '.join(COLUMNS)} FROM jobs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY seq DESC LIMIT {int(limit) + 1}"
    return conn.execute(sql, params).fetchall()


def payload_head(conn: sqlite3.Connection, state_dir: str, row: sqlite3.Row, limit: int) -> bytes:
    """The first C{limit} bytes of a job's payload (all of it when it is shorter)."""
    out = bytearray()
    for chunk in payload_chunks(conn, state_dir, row):
        out += chunk[: limit - len(out)]
        if len(out) >= limit:
            break
    return bytes(out)
