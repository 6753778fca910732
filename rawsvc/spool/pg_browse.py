"""
Reading the PostgreSQL spool from outside the store, and leaving it
requests: what C{rawsvc jobs}, C{job}, C{retry} and C{cancel}, the console,
C{/jobs} and the manhole do with C{[service] spool = "postgresql://..."},
from any node of a cluster (the SQLite twin is L{rawsvc.spool.browse}).

Every function is synchronous (a psycopg connection in autocommit mode):
the CLI calls them directly, the service on a thread
(L{rawsvc.spool.pg_reader}).  A job comes back as a dict with the keys of
the SQLite spool's rows (L{rawsvc.spool.schema.COLUMNS}), so both engines
print and serve the same records.

C{retry} and C{cancel} add a row to C{rawsvc_requests} and C{NOTIFY
rawsvc_requests} in the same transaction: the node that owns the job (any
node, for a job no live node owns) claims the request, applies it and
answers it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from rawsvc.spool.model import DERIVED, SpoolError
from rawsvc.spool.pg_schema import describe, reason
from rawsvc.spool.schema import COLUMNS

#: The channel of the wake-up a new request sends.
CHANNEL = "rawsvc_requests"
#: Seconds a connection attempt of the CLI or the console may take.
CONNECT_TIMEOUT = 5

_SELECT = ", ".join("NULL::text AS payload_path" if c == "payload_path" else c for c in COLUMNS)


def connect(dsn: str) -> Any:
    """
    A connection to the spool at C{dsn} (autocommit), its schema checked;
    L{SpoolError} naming the database (never its password) and the cause.
    """
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
    from psycopg.rows import dict_row

    where = describe(dsn)
    try:
        params = {"connect_timeout": str(CONNECT_TIMEOUT), "application_name": "rawsvc-cli", **conninfo_to_dict(dsn)}
        conn: Any = psycopg.connect(make_conninfo("", **params), autocommit=True, row_factory=dict_row)
    except (psycopg.Error, ValueError) as e:
        raise SpoolError(f"cannot reach the spool at {where}: {reason(e)}") from None
    try:
        found = conn.execute("SELECT to_regclass('rawsvc_jobs') IS NOT NULL AS made").fetchone()
    except psycopg.Error as e:
        conn.close()
        raise SpoolError(f"cannot read the spool at {where}: {reason(e)}") from None
    if not found["made"]:
        conn.close()
        raise SpoolError(f"no spool in {where} (has a node run with [service] spool = this database?)")
    return conn


def _rows(conn: Any, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    return list(conn.execute(sql, params).fetchall())


def find_job(conn: Any, job_id: str) -> dict[str, Any]:
    """The job C{job_id}, or the one job whose id starts with it; L{SpoolError} otherwise."""
    rows = _rows(conn, f"SELECT {_SELECT} FROM rawsvc_jobs WHERE starts_with(job_id, %s) ORDER BY job_id = %s DESC,"
                       " seq LIMIT 2", (job_id, job_id))
    if rows and rows[0]["job_id"] == job_id:
        return rows[0]
    if not rows:
        raise SpoolError(f"no job {job_id} in the spool")
    if len(rows) > 1:
        raise SpoolError(f"{job_id!r} matches more than one job; give more of the id")
    return rows[0]


def get_job(conn: Any, job_id: str) -> dict[str, Any] | None:
    """The job of exactly this id, or None."""
    rows = _rows(conn, f"SELECT {_SELECT} FROM rawsvc_jobs WHERE job_id = %s", (job_id,))
    return rows[0] if rows else None


def _filters(states: Sequence[str], triggers: Sequence[str], destinations: Sequence[str] = ()) \
        -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    for column, values in (("state", states), ("trigger", triggers), ("destination", destinations)):
        if values:
            where.append(f"{column} = ANY(%s)")
            params.append(list(values))
    return where, params


def list_jobs(conn: Any, states: Sequence[str] = (), triggers: Sequence[str] = (), limit: int = 0,
              since: float | None = None) -> list[dict[str, Any]]:
    """Jobs newest first, only in C{states}, from C{triggers}, received at or after C{since} (when given); at most C{limit} (0: all)."""
    where, params = _filters(states, triggers)
    if since is not None:
        where.append("received_at >= %s")
        params.append(since)
    sql = f"SELECT {_SELECT} FROM rawsvc_jobs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY seq DESC"
    if limit > 0:
        sql += f" LIMIT {int(limit)}"
    return _rows(conn, sql, params)


def page_jobs(conn: Any, *, states: Sequence[str] = (), triggers: Sequence[str] = (),
              destinations: Sequence[str] = (), since: float | None = None, until: float | None = None,
              text: str | None = None, before: int | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """
    One page of the console's job list, as L{rawsvc.spool.browse.page_jobs}
    answers it: newest first, below the cursor C{before}, at most C{limit}
    + 1 rows (the extra one says there is a next page); C{text} a
    substring (any case) of the job id or of its variables.
    """
    where, params = _filters(states, triggers, destinations)
    if since is not None:
        where.append("received_at >= %s")
        params.append(since)
    if until is not None:
        where.append("received_at < %s")
        params.append(until)
    if text:
        pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where.append("(job_id ILIKE %s OR variables::text ILIKE %s)")
        params.extend((pattern, pattern))
    if before is not None:
        where.append("seq < %s")
        params.append(before)
    sql = f"SELECT {_SELECT} FROM rawsvc_jobs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY seq DESC LIMIT {int(limit) + 1}"
    return _rows(conn, sql, params)


def full_variables(row: dict[str, Any]) -> dict[str, str]:
    """A row's variables with those its columns give back (what the job had)."""
    columns = (row["job_id"], row["trigger"], row["peer_host"], str(row["peer_port"]), str(row["size"]))
    return {**dict(zip(DERIVED, columns)), **dict(row["variables"] or {})}


def job_record(row: dict[str, Any]) -> dict[str, Any]:
    """A job row as a dict, with every variable (as L{rawsvc.spool.browse.job_record})."""
    d = dict(row)
    d["variables"] = full_variables(row)
    return d


def payload_chunks(conn: Any, job_id: str) -> Iterator[bytes]:
    """A job's payload, one database row at a time (memory does not grow with its size)."""
    row = conn.execute("SELECT chunks, payload FROM rawsvc_jobs WHERE job_id = %s", (job_id,)).fetchone()
    if row is None:
        raise SpoolError(f"no job {job_id} in the spool")
    if not row["chunks"]:
        yield bytes(row["payload"] or b"")
        return
    for n in range(row["chunks"]):
        piece = conn.execute("SELECT data FROM rawsvc_payload_chunks WHERE job_id = %s AND n = %s",
                             (job_id, n)).fetchone()
        if piece is None:
            raise SpoolError(f"the payload of job {job_id} is incomplete in the database (chunk {n})")
        yield bytes(piece["data"])


def payload_head(conn: Any, job_id: str, limit: int) -> bytes:
    """The first C{limit} bytes of a job's payload (all of it when it is shorter)."""
    out = bytearray()
    for chunk in payload_chunks(conn, job_id):
        out += chunk[: limit - len(out)]
        if len(out) >= limit:
            break
    return bytes(out)


# Requests ---------------------------------------------------------------------

def add_request(conn: Any, job_id: str, action: str, now: float | None = None) -> int:
    """Leave the cluster a C{retry} or C{cancel} request, and wake the nodes; its id."""
    with conn.transaction():
        row = conn.execute("INSERT INTO rawsvc_requests (job_id, action, asked_at) VALUES (%s, %s, %s) RETURNING id",
                           (job_id, action, time.time() if now is None else now)).fetchone()
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(row["id"])))
    return int(row["id"])


def request_answer(conn: Any, request_id: int) -> tuple[bool, str] | None:
    """The answer to a request, (ok, text); None while no node has answered."""
    row = conn.execute("SELECT ok, result FROM rawsvc_requests WHERE id = %s AND answered_at IS NOT NULL",
                       (request_id,)).fetchone()
    return None if row is None else (bool(row["ok"]), row["result"])


def live_nodes(conn: Any) -> list[str]:
    """The names of the nodes marked alive."""
    return [r["node_name"] for r in _rows(conn, "SELECT DISTINCT node_name FROM rawsvc_nodes WHERE state = 'alive'"
                                                " ORDER BY node_name")]


def owner_elsewhere(conn: Any, job_id: str, me: uuid.UUID | None) -> str | None:
    """The name of the live node, other than incarnation C{me}, that owns job C{job_id}; None otherwise."""
    row = conn.execute(
        "SELECT n.node_name FROM rawsvc_jobs j JOIN rawsvc_nodes n ON n.incarnation = j.owner"
        " WHERE j.job_id = %s AND n.state = 'alive' AND j.owner IS DISTINCT FROM %s", (job_id, me)).fetchone()
    return None if row is None else row["node_name"]
