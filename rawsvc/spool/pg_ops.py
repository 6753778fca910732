"""
The SQL of L{rawsvc.spool.pg.PgStore}: one function per operation, run on
its thread (L{rawsvc.spool.pg_worker}) with the connection, inside the
batch's transaction.  C{me} is this process's incarnation (a row of
C{rawsvc_nodes}); C{now} the store's clock when the operation was asked.

Payloads stream both ways: one larger than L{INLINE_MAX} is written in
L{CHUNK}-sized rows read one at a time from its file (or its bytes), and
read back one row at a time into a file of the store's own, so memory does
not grow with job size.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

from psycopg.types.json import Jsonb

from rawsvc.spool.files import unlink
from rawsvc.spool.model import FINISHED, UNFINISHED, SpoolError, StoredJob
from rawsvc.spool.pg_schema import CHUNK, INLINE_MAX

#: The columns of a record, but the payload.
FIELDS = ("seq, job_id, trigger, flow, state, peer_host, peer_port, encoding, size, received_at, action_index,"
          " attempt, variables, queued_at, started_at, updated_at, finished_at, last_error, destination,"
          " bytes_delivered, delivery_attempt, next_try, run")
_UNFINISHED = list(UNFINISHED)
_FINISHED = list(FINISHED)


def _without_index(variables: dict[str, str]) -> Jsonb:
    return Jsonb({k: v for k, v in variables.items() if k != "action_index"})


def _delivered(delivery: tuple | None) -> tuple[str | None, int]:
    return (None, 0) if delivery is None else (delivery[0], int(delivery[1]))


# Nodes ----------------------------------------------------------------------

def register(conn: Any, node_name: str, ttl: float | None = None) -> uuid.UUID:
    """
    A new incarnation of C{node_name}, alive.  Earlier incarnations of the
    same name that are still marked alive are that node's previous process
    (it died without leaving): they are marked dead, so their unfinished
    jobs are adopted.  Without C{ttl} (one node) the lease does not
    expire; in cluster mode it lasts C{ttl} seconds (L{rawsvc.cluster.lease}).
    """
    me = uuid.uuid4()
    with conn.transaction():
        conn.execute("UPDATE rawsvc_nodes SET state = 'dead' WHERE node_name = %s AND state = 'alive'", (node_name,))
        if ttl is None:
            conn.execute("INSERT INTO rawsvc_nodes (incarnation, node_name, lease_until) VALUES (%s, %s, 'infinity')",
                         (me, node_name))
        else:
            conn.execute("INSERT INTO rawsvc_nodes (incarnation, node_name, lease_until)"
                         " VALUES (%s, %s, clock_timestamp() + make_interval(secs => %s))", (me, node_name, ttl))
    return me


def leave(conn: Any, me: uuid.UUID | None) -> None:
    """A clean stop: the incarnation has left; its unfinished jobs are free to adopt."""
    with conn.transaction():
        conn.execute("UPDATE rawsvc_nodes SET state = 'left' WHERE incarnation = %s", (me,))


# Writes -----------------------------------------------------------------------

def _chunks_of(payload: Any) -> Iterator[bytes]:
    """The payload's bytes in CHUNK pieces: from memory, or read from its file."""
    if payload.in_memory:
        data = memoryview(payload.bytes())
        for start in range(0, len(data), CHUNK):
            yield bytes(data[start:start + CHUNK])
        return
    with open(payload.path, "rb") as f:
        while True:
            piece = f.read(CHUNK)
            if not piece:
                return
            yield piece


def add(conn: Any, me: uuid.UUID | None, job: Any, flow: str, variables: dict[str, str], now: float) -> None:
    """Insert a new job (C{running}, action 0, attempt 1, this node's) with its payload."""
    if conn.execute("SELECT 1 FROM rawsvc_jobs WHERE job_id = %s", (job.job_id,)).fetchone():
        raise SpoolError(f"job {job.job_id} is stored already")
    payload = job.payload
    size = payload.size
    inline: bytes | None = None
    if size <= INLINE_MAX:
        inline = b"".join(_chunks_of(payload))
    conn.execute(
        "INSERT INTO rawsvc_jobs (job_id, trigger, flow, state, owner, peer_host, peer_port, encoding, size, payload,"
        " received_at, variables, queued_at, started_at, updated_at)"
        " VALUES (%s, %s, %s, 'running', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (job.job_id, job.trigger, flow, me, job.peer_host, job.peer_port, job.encoding, size, inline,
         job.received_at, _without_index(variables), now, now, now),
    )
    if inline is not None:
        return
    written = n = 0
    with conn.cursor() as cur:
        for n, piece in enumerate(_chunks_of(payload)):
            cur.execute("INSERT INTO rawsvc_payload_chunks (job_id, n, data) VALUES (%s, %s, %s)",
                        (job.job_id, n, piece))
            written += len(piece)
    if written != size:
        raise SpoolError(f"the payload of job {job.job_id} changed while it was stored ({written} of {size} bytes)")
    conn.execute("UPDATE rawsvc_jobs SET chunks = %s WHERE job_id = %s", (n + 1, job.job_id))


def progress(conn: Any, job_id: str, action_index: int, variables: dict[str, str], delivery: tuple | None,
             now: float) -> None:
    destination, written = _delivered(delivery)
    conn.execute(
        "UPDATE rawsvc_jobs SET state = 'running', action_index = %s, next_try = NULL, variables = %s,"
        " destination = COALESCE(%s, destination), bytes_delivered = bytes_delivered + %s, updated_at = %s"
        " WHERE job_id = %s AND state = ANY(%s)",
        (action_index, _without_index(variables), destination, written, now, job_id, _UNFINISHED),
    )


def started(conn: Any, job_id: str, action_index: int, now: float) -> None:
    conn.execute(
        "UPDATE rawsvc_jobs SET state = 'running', action_index = %s, attempt = attempt + 1,"
        " started_at = COALESCE(started_at, %s), updated_at = %s WHERE job_id = %s AND state = ANY(%s)",
        (action_index, now, now, job_id, _UNFINISHED),
    )


def finish(conn: Any, job_id: str, state: str, error: str | None, action_index: int, variables: dict[str, str],
           delivery: tuple | None, now: float) -> None:
    destination, written = _delivered(delivery)
    if state == "interrupted":
        # Not finished (a delivery cut off by a fence, say): it stays unfinished at that action, for
        # the next start or an adoption to resume; 'interrupted' is no state of the table.
        conn.execute(
            "UPDATE rawsvc_jobs SET last_error = %s, action_index = %s, variables = %s,"
            " destination = COALESCE(%s, destination), bytes_delivered = bytes_delivered + %s, updated_at = %s"
            " WHERE job_id = %s",
            (error, action_index, _without_index(variables), destination, written, now, job_id),
        )
        return
    conn.execute(
        "UPDATE rawsvc_jobs SET state = %s, last_error = %s, action_index = %s, next_try = NULL, variables = %s,"
        " destination = COALESCE(%s, destination), bytes_delivered = bytes_delivered + %s, updated_at = %s,"
        " finished_at = %s WHERE job_id = %s",
        (state, error, action_index, _without_index(variables), destination, written, now, now, job_id),
    )


def waiting(conn: Any, job_id: str, attempt: int, error: str | None, next_try: float | None, now: float) -> None:
    if next_try is not None:
        conn.execute(
            "UPDATE rawsvc_jobs SET state = 'waiting', delivery_attempt = %s, last_error = %s, next_try = %s,"
            " updated_at = %s WHERE job_id = %s AND state IN ('running', 'waiting')",
            (attempt, error, next_try, now, job_id),
        )
    else:
        conn.execute(
            "UPDATE rawsvc_jobs SET state = 'running', delivery_attempt = %s, next_try = NULL, updated_at = %s"
            " WHERE job_id = %s AND state = 'waiting'",
            (attempt, now, job_id),
        )


def requeue(conn: Any, me: uuid.UUID | None, job_id: str, action_index: int, now: float) -> None:
    conn.execute(
        "UPDATE rawsvc_jobs SET state = 'queued', action_index = %s, finished_at = NULL, updated_at = %s,"
        " owner = %s, run = run + 1 WHERE job_id = %s",
        (action_index, now, me, job_id),
    )


# Reads ------------------------------------------------------------------------

def _record(row: dict[str, Any], payload: bytes | None = None, path: str | None = None) -> StoredJob:
    return StoredJob(
        seq=row["seq"], job_id=row["job_id"], trigger=row["trigger"], flow=row["flow"], state=row["state"],
        peer_host=row["peer_host"], peer_port=row["peer_port"], encoding=row["encoding"], size=row["size"],
        received_at=row["received_at"], action_index=row["action_index"], attempt=row["attempt"],
        variables=dict(row["variables"] or {}), payload=payload, payload_path=path, queued_at=row["queued_at"],
        started_at=row["started_at"], updated_at=row["updated_at"], finished_at=row["finished_at"],
        last_error=row["last_error"], destination=row["destination"], bytes_delivered=row["bytes_delivered"],
        delivery_attempt=row["delivery_attempt"], next_try=row["next_try"], run=row["run"],
    )


def payload_file(files_dir: str, job_id: str) -> str:
    """Where the store keeps its copy of a large payload it read back."""
    return os.path.join(files_dir, f"{job_id}.job")


def _with_payload(conn: Any, row: dict[str, Any], files_dir: str) -> StoredJob:
    """The record with its payload: inline bytes, or the chunks streamed into a file of the store's."""
    if not row["chunks"]:
        return _record(row, payload=bytes(row["payload"] or b""))
    path = payload_file(files_dir, row["job_id"])
    partial = path + ".part"
    with open(partial, "wb") as f:
        for n in range(row["chunks"]):
            piece = conn.execute("SELECT data FROM rawsvc_payload_chunks WHERE job_id = %s AND n = %s",
                                 (row["job_id"], n)).fetchone()
            if piece is None:
                raise SpoolError(f"the payload of job {row['job_id']} is incomplete in the database (chunk {n})")
            f.write(piece[0])
    os.replace(partial, path)  # a copy (the database holds the payload): no fsync needed
    return _record(row, path=path)


def load(conn: Any, me: uuid.UUID | None, files_dir: str, states: tuple[str, ...], job_id: str | None) -> list[StoredJob]:
    """See L{IJobStore.load}: a job by id, else the jobs in C{states} (unfinished ones: this node's)."""
    from psycopg.rows import dict_row

    cur = conn.cursor(row_factory=dict_row)
    if job_id is not None:
        rows = cur.execute(f"SELECT {FIELDS}, chunks, payload FROM rawsvc_jobs WHERE job_id = %s",
                           (job_id,)).fetchall()
    else:
        # Adopt the unfinished jobs of incarnations that are gone (left, or a previous process of this node).
        conn.execute(
            "UPDATE rawsvc_jobs SET owner = %s WHERE state = ANY(%s) AND (owner IS NULL OR owner IN"
            " (SELECT incarnation FROM rawsvc_nodes WHERE state <> 'alive'))",
            (me, _UNFINISHED),
        )
        ids = [r["seq"] for r in cur.execute(
            "SELECT seq FROM rawsvc_jobs WHERE state = ANY(%s) AND (state = ANY(%s) OR owner = %s) ORDER BY seq",
            (list(states), _FINISHED, me)).fetchall()]
        rows = []
        for seq in ids:  # one payload in memory at a time
            rows.extend(cur.execute(f"SELECT {FIELDS}, chunks, payload FROM rawsvc_jobs WHERE seq = %s",
                                    (seq,)).fetchall())
    return [_with_payload(conn, row, files_dir) for row in rows]


def query(conn: Any, states: tuple[str, ...], triggers: tuple[str, ...], limit: int | None,
          prefix: str | None) -> list[StoredJob]:
    from psycopg.rows import dict_row

    where: list[str] = ["TRUE"]
    params: list[Any] = []
    if states:
        where.append("state = ANY(%s)")
        params.append(list(states))
    if triggers:
        where.append("trigger = ANY(%s)")
        params.append(list(triggers))
    if prefix:
        where.append("starts_with(job_id, %s)")
        params.append(prefix)
    sql = f"SELECT {FIELDS} FROM rawsvc_jobs WHERE {' AND '.join(where)} ORDER BY seq DESC"
    if limit:
        sql += " LIMIT %s"
        params.append(int(limit))
    rows = conn.cursor(row_factory=dict_row).execute(sql, params).fetchall()
    return [_record(row) for row in rows]


# Requests ---------------------------------------------------------------------

def request(conn: Any, job_id: str, action: str, now: float) -> int:
    row = conn.execute("INSERT INTO rawsvc_requests (job_id, action, asked_at) VALUES (%s, %s, %s) RETURNING id",
                       (job_id, action, now)).fetchone()
    return int(row[0])


def take_requests(conn: Any, me: uuid.UUID | None) -> list[tuple[int, str, str]]:
    """
    Claim the unanswered requests for this node's jobs, or for jobs no live
    node runs (or unknown ones): each is marked taken by this incarnation
    (in C{result}, until answered), so two nodes never both apply one; a
    claim of an incarnation that is no longer alive is taken over.
    """
    rows = conn.execute(
        "UPDATE rawsvc_requests SET result = %s WHERE id IN ("
        " SELECT r.id FROM rawsvc_requests r"
        " LEFT JOIN rawsvc_jobs j ON j.job_id = r.job_id"
        " LEFT JOIN rawsvc_nodes n ON n.incarnation = j.owner"
        " WHERE r.answered_at IS NULL AND (j.owner IS NULL OR j.owner = %s OR n.state <> 'alive')"
        " AND (r.result IS NULL OR r.result = %s OR NOT EXISTS (SELECT 1 FROM rawsvc_nodes c"
        "  WHERE c.state = 'alive' AND r.result = 'taken by ' || c.incarnation::text))"
        " FOR UPDATE OF r SKIP LOCKED)"
        " RETURNING id, job_id, action",
        (f"taken by {me}", me, f"taken by {me}"),
    ).fetchall()
    return sorted((int(rid), job_id, action) for rid, job_id, action in rows)


def answer(conn: Any, request_id: int, ok: bool, result: str, now: float) -> None:
    conn.execute("UPDATE rawsvc_requests SET answered_at = %s, ok = %s, result = %s WHERE id = %s",
                 (now, bool(ok), result, request_id))


def answer_of(conn: Any, request_id: int) -> tuple[bool, str] | None:
    row = conn.execute("SELECT ok, result FROM rawsvc_requests WHERE id = %s AND answered_at IS NOT NULL",
                       (request_id,)).fetchone()
    return None if row is None else (bool(row[0]), row[1])


# Retention --------------------------------------------------------------------

def purge(conn: Any, files_dir: str, max_age: float, max_bytes: int, now: float) -> tuple[int, int]:
    """See L{IJobStore.purge} (no free-space floor: the database's disk is not ours to watch)."""
    cutoff = now - max_age
    finished = conn.execute(
        "SELECT job_id, size, finished_at FROM rawsvc_jobs WHERE state = ANY(%s) ORDER BY finished_at, seq",
        (_FINISHED,)).fetchall()
    doomed = [(job_id, size) for job_id, size, at in finished if (at or 0.0) < cutoff]
    gone = {job_id for job_id, _ in doomed}
    total = sum(size for _, size, _ in finished) - sum(size for _, size in doomed)
    for job_id, size, _ in finished:
        if total <= max_bytes:
            break
        if job_id not in gone:
            doomed.append((job_id, size))
            gone.add(job_id)
            total -= size
    ids = [job_id for job_id, _ in doomed]
    for start in range(0, len(ids), 500):
        conn.execute("DELETE FROM rawsvc_deliveries WHERE job_id = ANY(%s) AND state IN ('done', 'failed')",
                     (ids[start:start + 500],))
        conn.execute("DELETE FROM rawsvc_jobs WHERE job_id = ANY(%s)", (ids[start:start + 500],))
    conn.execute("DELETE FROM rawsvc_requests WHERE answered_at IS NOT NULL AND answered_at < %s", (cutoff,))
    for job_id in ids:
        unlink(payload_file(files_dir, job_id))
    return len(doomed), sum(size for _, size in doomed)
