"""
Rows of the SQLite spool: the multi-row statements that write new jobs,
progress and final states, and the lean C{variables} column
(L{StoredJob}, a row read back, is in L{rawsvc.spool.model}).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from rawsvc.spool.model import DERIVED, UNFINISHED, StoredJob

__all__ = [
    "BLOB_MAX", "DERIVED", "LeanVariables", "StoredJob", "finish_params", "full_variables", "insert_params",
    "progress_params", "write_behind", "write_rows", "write_waiting",
]

#: Payloads up to this size are kept in the database; larger ones in files.
BLOB_MAX = 64 << 10


def insert_params(job, flow: str, now: float, variables: str, blob: bytes | None, path: str | None) -> tuple:
    """A new job's row (queued_at, started_at and updated_at are all C{now})."""
    return (job.job_id, job.trigger, flow, job.peer_host, job.peer_port, job.encoding, job.payload.size,
            job.received_at, now, now, now, variables, blob, path)


# DERIVED: the variables a job's row gives back from its columns.
_NOT_STORED = frozenset(DERIVED + ("action_index",))


def full_variables(row: sqlite3.Row | dict) -> dict[str, str]:
    """A row's variables with those its columns give back (what the job had)."""
    stored = json.loads(row["variables"] or "{}")
    columns = (row["job_id"], row["trigger"], row["peer_host"], str(row["peer_port"]), str(row["size"]))
    return {**dict(zip(DERIVED, columns)), **stored}


class LeanVariables:
    """
    The C{variables} column, written lean (writer thread only): without the
    variables the row's columns give back (L{DERIVED}, while they hold the
    columns' values; C{action_index} always: a flow sets it before each
    action), and not at all (None: the row keeps what it has) when nothing
    changed since the job's last write.  A job rebuilt from its row gets
    the dropped ones back from its columns.
    """

    def __init__(self) -> None:
        #: job_id -> its variables as last written, while L{DERIVED} equal its columns.
        self._last: dict[str, dict[str, str]] = {}

    def for_insert(self, job, variables: dict[str, str]) -> str:
        columns = (job.job_id, job.trigger, job.peer_host, str(job.peer_port), str(job.payload.size))
        if tuple(map(variables.get, DERIVED)) == columns:
            self._last[job.job_id] = variables
            return json.dumps({k: v for k, v in variables.items() if k not in _NOT_STORED})
        derived = dict(zip(DERIVED, columns))  # a trigger set one of them otherwise: keep it
        return json.dumps({k: v for k, v in variables.items() if k != "action_index" and derived.get(k) != v})

    def for_update(self, job_id: str, variables: dict[str, str], final: bool) -> str | None:
        before = self._last.pop(job_id, None) if final else self._last.get(job_id)
        if before is None:  # resumed, retried: written whole
            return whole_variables(variables)
        if _same(before, variables):
            return None
        if not final:
            if tuple(map(variables.get, DERIVED)) == tuple(map(before.__getitem__, DERIVED)):
                self._last[job_id] = variables
            else:  # the flow changed one: written whole from now on
                del self._last[job_id]
        return json.dumps({k: v for k, v in variables.items()
                           if k not in _NOT_STORED or (k != "action_index" and before[k] != v)})

    def forget(self) -> None:
        """A batch failed: what was last written is not known any more."""
        self._last.clear()


def whole_variables(variables: dict[str, str]) -> str:
    """The C{variables} column written whole (as for a resumed job)."""
    return json.dumps({k: v for k, v in variables.items() if k != "action_index"})


def _same(before: dict[str, str], now: dict[str, str]) -> bool:
    """Equal but for C{action_index}."""
    return {**before, "action_index": ""} == {**now, "action_index": ""}  # two copies: C, not a loop


def progress_params(job_id: str, index: int, variables: str | None, now: float, dest: str | None,
                    sent: int) -> tuple:
    return (job_id, index, variables, now, dest, sent)


def finish_params(job_id: str, state: str, error: str | None, index: int, variables: str | None,
                  dest: str | None, sent: int, now: float) -> tuple:
    return (job_id, state, error, index, variables, now, dest, sent)


def write_rows(conn: sqlite3.Connection, inserts: list[tuple], progress: list[tuple], finals: list[tuple],
               replay: bool = False) -> None:
    """
    New jobs, then progress, then final states, each as multi-row
    statements.  C{replay} (the journal's records): a job already stored is kept.
    """
    _many(conn, _REPLAY_HEAD if replay else _INSERT_HEAD, _INSERT_ROW, "", inserts)
    _many(conn, _PROGRESS_HEAD, "(?, ?, ?, ?, ?, ?)", _PROGRESS_TAIL, progress)
    _many(conn, _FINISH_HEAD, "(?, ?, ?, ?, ?, ?, ?, ?)", _FINISH_TAIL, finals)


def write_behind(conn: sqlite3.Connection, runs: list[tuple[list[tuple], list[tuple], list[tuple]]]) -> None:
    """
    Runs of rows (each as L{write_rows} takes them), in order, as the
    index behind the journal takes them: a job whose new row is among them
    is inserted as its later progress and final-state rows leave it (one
    row written once, not an insert then updates; most jobs finish within
    the index's delay), all new rows together first; the other rows as
    L{write_rows} writes them, run by run.
    """
    merged: list[list] = []
    fresh: dict[str, list] = {}
    rest: list[tuple[list[tuple], list[tuple]]] = []
    for inserts, progress, finals in runs:
        for row in inserts:
            # + state, last_error, action_index, finished_at, destination, bytes_delivered
            new = [*row, "running", None, 0, None, None, 0]
            merged.append(new)
            fresh[row[0]] = new
        if not fresh:
            rest.append((progress, finals))
            continue
        others: tuple[list[tuple], list[tuple]] = ([], [])
        for job_id, index, variables, now, dest, sent in progress:
            job = fresh.get(job_id)
            if job is None:
                others[0].append((job_id, index, variables, now, dest, sent))
            elif job[14] in _UNFINISHED:  # as _PROGRESS_TAIL: a finished job is left alone
                job[10], job[14], job[16] = now, "running", index
                if variables is not None:
                    job[11] = variables
                if dest is not None:
                    job[18] = dest
                job[19] += sent
        for job_id, state, error, index, variables, now, dest, sent in finals:
            job = fresh.get(job_id)
            if job is None:
                others[1].append((job_id, state, error, index, variables, now, dest, sent))
                continue
            job[10], job[14], job[15], job[16], job[17] = now, state, error, index, now
            if variables is not None:
                job[11] = variables
            if dest is not None:
                job[18] = dest
            job[19] += sent
        rest.append(others)
    if fresh and any(row[0] in fresh for progress, finals in rest for rows in (progress, finals) for row in rows):
        # A row written before the new row of its job (never, but for an id given twice): exactly in order.
        for rows in runs:
            write_rows(conn, *rows)
        return
    _many(conn, _MERGED_HEAD, _MERGED_ROW, "", merged)
    for progress, finals in rest:
        _many(conn, _PROGRESS_HEAD, "(?, ?, ?, ?, ?, ?)", _PROGRESS_TAIL, progress)
        _many(conn, _FINISH_HEAD, "(?, ?, ?, ?, ?, ?, ?, ?)", _FINISH_TAIL, finals)


_UNFINISHED = frozenset(UNFINISHED)

#: A new job: its flow starts as soon as this commits, so it is stored as running, attempt 1.
_INSERT_HEAD = (
    "INSERT INTO jobs (job_id, trigger, flow, peer_host, peer_port, encoding, size, received_at,"
    " queued_at, started_at, updated_at, variables, payload, payload_path, state, attempt) VALUES "
)
_REPLAY_HEAD = _INSERT_HEAD.replace("INSERT INTO", "INSERT OR IGNORE INTO")
_INSERT_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', 1)"
#: A new job as its progress and final state left it (L{write_behind}).
_MERGED_HEAD = (
    "INSERT INTO jobs (job_id, trigger, flow, peer_host, peer_port, encoding, size, received_at,"
    " queued_at, started_at, updated_at, variables, payload, payload_path, state, last_error, action_index,"
    " finished_at, destination, bytes_delivered, attempt) VALUES "
)
_MERGED_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)"
_PROGRESS_HEAD = (
    "UPDATE jobs SET state = 'running', action_index = v.column2, next_try = NULL,"
    " variables = COALESCE(v.column3, jobs.variables),"
    " updated_at = v.column4, destination = COALESCE(v.column5, jobs.destination),"
    " bytes_delivered = jobs.bytes_delivered + v.column6 FROM (VALUES "
)
_PROGRESS_TAIL = ") AS v WHERE jobs.job_id = v.column1 AND jobs.state IN ('queued', 'running', 'waiting', 'held')"
_FINISH_HEAD = (
    "UPDATE jobs SET state = v.column2, last_error = v.column3, action_index = v.column4, next_try = NULL,"
    " variables = COALESCE(v.column5, jobs.variables), updated_at = v.column6, finished_at = v.column6,"
    " destination = COALESCE(v.column7, jobs.destination),"
    " bytes_delivered = jobs.bytes_delivered + v.column8 FROM (VALUES "
)
_FINISH_TAIL = ") AS v WHERE jobs.job_id = v.column1"
#: Most rows per multi-row statement, a power of two (SQLite allows 32,766 parameters).
_CHUNK = 512
_sql_cache: dict[tuple[str, int], str] = {}


def _many(conn: sqlite3.Connection, head: str, row: str, tail: str, params: Sequence[Sequence[object]]) -> None:
    """
    C{params} in statements of a power of two rows each (largest first):
    a few statement texts, each compiled once and kept in the connection's
    cache, as SQLite takes ~6 us per row to compile one.
    """
    start, left = 0, len(params)
    while left:
        n = min(_CHUNK, 1 << (left.bit_length() - 1))
        key = (head, n)
        sql = _sql_cache.get(key)
        if sql is None:
            sql = _sql_cache[key] = head + ", ".join([row] * n) + tail
        conn.execute(sql, [value for p in params[start:start + n] for value in p])
        start += n
        left -= n


def write_waiting(conn: sqlite3.Connection, job_id: str, attempt: int, error: str | None,
                  next_try: float | None, now: float, state: str = "waiting") -> None:
    """
    A running job's delivery waits to retry (C{next_try} set: state
    C{waiting}, or C{held} when C{state} says so, with its attempt and last
    error or hold reason) or tries again (None: back to C{running}).  A
    finished job is left alone.
    """
    if next_try is not None:
        conn.execute(
            "UPDATE jobs SET state = ?, delivery_attempt = ?, last_error = ?, next_try = ?, updated_at = ?"
            " WHERE job_id = ? AND state IN ('running', 'waiting', 'held')",
            ("held" if state == "held" else "waiting", attempt, error, next_try, now, job_id),
        )
    else:
        conn.execute(
            "UPDATE jobs SET state = 'running', delivery_attempt = ?, next_try = NULL, updated_at = ?"
            " WHERE job_id = ? AND state IN ('waiting', 'held')",
            (attempt, now, job_id),
        )
