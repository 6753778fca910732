"""
The spool's database: where it lives, its tables and indexes, how to connect.

One table of jobs (a row per job: metadata, progress, final state, and the
payload up to L{rawsvc.spool.records.BLOB_MAX}), one of requests (the
CLI's retry/cancel, answered by the service) and C{meta}: the spool's id
and whether it was closed cleanly (see L{rawsvc.spool.check}).

Indexes are kept to what the queries need, since every index is written
for each new job and again at its final state: the unique C{job_id}
(lookups, the CLI's prefix search) and a partial index of the unfinished
jobs (the resume at start), which only ever holds the jobs in flight.
Retention scans the table once per pass, as summing the sizes of the
finished jobs does anyway; C{rawsvc jobs --state} walks it newest first.
"""

from __future__ import annotations

import os
import sqlite3

from rawsvc.spool.model import FINISHED, UNFINISHED, SpoolError

__all__ = [
    "COLUMNS", "DB_NAME", "FILES_DIR", "FINISHED", "SCHEMA", "UNFINISHED", "UNFINISHED_SQL", "SpoolError", "connect",
    "db_path", "describe", "is_damage", "migrate", "spool_error",
]

DB_NAME = "spool.db"
FILES_DIR = "spool"

# C{waiting} (in UNFINISHED): its delivery waits to retry (attempt, error
# and next try in C{delivery_attempt}, C{last_error}, C{next_try}).

#: Idempotent: creates what is missing, drops indexes no query needs any more.
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id          TEXT NOT NULL UNIQUE,
    trigger         TEXT NOT NULL,
    flow            TEXT NOT NULL,
    state           TEXT NOT NULL,
    peer_host       TEXT NOT NULL DEFAULT '',
    peer_port       INTEGER NOT NULL DEFAULT 0,
    encoding        TEXT NOT NULL DEFAULT 'utf-8',
    size            INTEGER NOT NULL DEFAULT 0,
    received_at     REAL NOT NULL,
    queued_at       REAL NOT NULL,
    started_at      REAL,
    updated_at      REAL NOT NULL,
    finished_at     REAL,
    action_index    INTEGER NOT NULL DEFAULT 0,
    attempt         INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    destination     TEXT,
    bytes_delivered INTEGER NOT NULL DEFAULT 0,
    variables       TEXT NOT NULL DEFAULT '{}',
    payload         BLOB,
    payload_path    TEXT,
    delivery_attempt INTEGER NOT NULL DEFAULT 0,
    next_try        REAL
);
DROP INDEX IF EXISTS jobs_by_state;
DROP INDEX IF EXISTS jobs_by_finish;
CREATE TABLE IF NOT EXISTS requests (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id       TEXT NOT NULL,
    action       TEXT NOT NULL,
    requested_at REAL NOT NULL,
    done_at      REAL,
    ok           INTEGER,
    result       TEXT
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

#: What the partial index C{jobs_unfinished} answers; literals, not
#: parameters, or SQLite cannot use the index.
UNFINISHED_SQL = "state IN ('queued', 'running', 'waiting', 'held')"
_UNFINISHED_INDEX = f"CREATE INDEX jobs_unfinished ON jobs (seq) WHERE {UNFINISHED_SQL}"
#: Columns added since the first spools: (name, declaration).
_ADDED = (("delivery_attempt", "INTEGER NOT NULL DEFAULT 0"), ("next_try", "REAL"))

#: Columns shown by C{rawsvc jobs} / C{rawsvc job} (everything but the payload).
COLUMNS = (
    "seq", "job_id", "trigger", "flow", "state", "peer_host", "peer_port", "encoding", "size",
    "received_at", "queued_at", "started_at", "updated_at", "finished_at", "action_index",
    "attempt", "last_error", "destination", "bytes_delivered", "variables", "payload_path",
    "delivery_attempt", "next_try",
)


def db_path(state_dir: str) -> str:
    return os.path.join(state_dir, DB_NAME)


def connect(path: str, readonly: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (we issue BEGIN ourselves), WAL."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=10)
    else:
        # Create the file owner-only before SQLite does: SQLite gives the
        # -wal and -shm files the database file's mode when it makes them.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        os.chmod(path, 0o600)
        conn = sqlite3.connect(path, isolation_level=None, timeout=10, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.row_factory = sqlite3.Row
    return conn


def migrate(conn: sqlite3.Connection) -> None:
    """Bring a new or older spool to this schema."""
    conn.executescript(SCHEMA)
    have = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    for name, declaration in _ADDED:
        if name not in have:
            conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {declaration}")
    index = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'index' AND name = 'jobs_unfinished'").fetchone()
    if index is None or index[0] != _UNFINISHED_INDEX:  # new, or from before the waiting state
        conn.execute("DROP INDEX IF EXISTS jobs_unfinished")
        conn.execute(_UNFINISHED_INDEX)


#: SQLite's result codes for a file that is damaged or not a database.
DAMAGE_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB


def is_damage(e: BaseException) -> bool:
    """Does this error say the database file is damaged (not full, not busy)?"""
    return isinstance(e, sqlite3.DatabaseError) and getattr(e, "sqlite_errorcode", None) in DAMAGE_CODES


def describe(e: BaseException) -> str:
    """An OS or SQLite error as an operator reads it."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}" + (f" ({e.filename})" if e.filename else "")
    return str(e) or type(e).__name__


def spool_error(e: BaseException) -> SpoolError:
    return e if isinstance(e, SpoolError) else SpoolError(describe(e))
