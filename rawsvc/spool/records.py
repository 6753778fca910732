"""
Rows of the spool: L{StoredJob} (a row read back) and the multi-row
statements that write new jobs, progress and final states.
"""

from __future__ import annotations

import json
import sqlite3

import attrs

#: Payloads up to this size are kept in the database; larger ones in files.
BLOB_MAX = 64 << 10


@attrs.define
class StoredJob:
    """One row of C{jobs}, with its payload (bytes) or payload file."""

    seq: int
    job_id: str
    trigger: str
    flow: str
    state: str
    peer_host: str
    peer_port: int
    encoding: str
    size: int
    received_at: float
    action_index: int
    attempt: int
    variables: dict[str, str]
    payload: bytes | None
    payload_path: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "StoredJob":
        return cls(
            row["seq"], row["job_id"], row["trigger"], row["flow"], row["state"], row["peer_host"],
            row["peer_port"], row["encoding"], row["size"], row["received_at"], row["action_index"],
            row["attempt"], json.loads(row["variables"] or "{}"), row["payload"], row["payload_path"],
        )


def new_job_row(job, flow: str, now: float) -> tuple:
    """What L{insert_params} needs of a new job besides its variables and payload."""
    return (job.job_id, job.trigger, flow, job.peer_host, job.peer_port, job.encoding,
            job.payload.size, job.received_at, now)


def insert_params(row: tuple, variables: dict, blob: bytes | None, path: str | None) -> tuple:
    # queued_at, started_at and updated_at are all "now" (row[8]).
    return row + (row[8], row[8], json.dumps(variables), blob, path)


def progress_params(job_id: str, index: int, variables: dict, delivery: tuple | None, now: float) -> tuple:
    dest, sent = delivery or (None, 0)
    return (job_id, index, json.dumps(variables), now, dest, sent)


def finish_params(job_id: str, state: str, error: str | None, index: int, variables: dict,
                  delivery: tuple | None, now: float) -> tuple:
    dest, sent = delivery or (None, 0)
    return (job_id, state, error, index, json.dumps(variables), now, dest, sent)


def write_rows(conn: sqlite3.Connection, inserts: list[tuple], progress: list[tuple], finals: list[tuple]) -> None:
    """New jobs, then progress, then final states, each as multi-row statements."""
    _many(conn, _INSERT_HEAD, _INSERT_ROW, "", inserts)
    _many(conn, _PROGRESS_HEAD, "(?, ?, ?, ?, ?, ?)", _PROGRESS_TAIL, progress)
    _many(conn, _FINISH_HEAD, "(?, ?, ?, ?, ?, ?, ?, ?)", _FINISH_TAIL, finals)


#: A new job: its flow starts as soon as this commits, so it is stored as running, attempt 1.
_INSERT_HEAD = (
    "INSERT INTO jobs (job_id, trigger, flow, peer_host, peer_port, encoding, size, received_at,"
    " queued_at, started_at, updated_at, variables, payload, payload_path, state, attempt) VALUES "
)
_INSERT_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', 1)"
_PROGRESS_HEAD = (
    "UPDATE jobs SET state = 'running', action_index = v.column2, variables = v.column3,"
    " updated_at = v.column4, destination = COALESCE(v.column5, jobs.destination),"
    " bytes_delivered = jobs.bytes_delivered + v.column6 FROM (VALUES "
)
_PROGRESS_TAIL = ") AS v WHERE jobs.job_id = v.column1 AND jobs.state IN ('queued', 'running')"
_FINISH_HEAD = (
    "UPDATE jobs SET state = v.column2, last_error = v.column3, action_index = v.column4,"
    " variables = v.column5, updated_at = v.column6, finished_at = v.column6,"
    " destination = COALESCE(v.column7, jobs.destination),"
    " bytes_delivered = jobs.bytes_delivered + v.column8 FROM (VALUES "
)
_FINISH_TAIL = ") AS v WHERE jobs.job_id = v.column1"
#: Rows per multi-row statement (SQLite allows 32,766 parameters).
_CHUNK = 1000
_sql_cache: dict[tuple[str, int], str] = {}


def _many(conn: sqlite3.Connection, head: str, row: str, tail: str, params: list[tuple]) -> None:
    for start in range(0, len(params), _CHUNK):
        chunk = params[start:start + _CHUNK]
        key = (head, len(chunk))
        sql = _sql_cache.get(key)
        if sql is None:
            sql = _sql_cache[key] = head + ", ".join([row] * len(chunk)) + tail
        conn.execute(sql, [value for p in chunk for value in p])
