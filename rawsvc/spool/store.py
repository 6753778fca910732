"""
The durable job store: SQLite (WAL) in C{state_dir/spool.db}, payloads
larger than L{BLOB_MAX} in C{state_dir/spool/<job_id>.job}.

Every write goes through one writer thread, which takes everything queued
since its last commit and writes it in one transaction: one commit, one
fsync, for as many jobs as arrived meanwhile (group commit).  Batches that
hold a new job or a final state are committed with C{synchronous=FULL};
batches of progress records only with C{NORMAL} (WAL: no fsync; a later
FULL commit or a checkpoint makes them durable).  Results come back to the
reactor thread with C{callFromThread}, in the order the writes were queued,
so the reactor never waits on the disk.

Each write runs in its own savepoint: one bad write fails alone; a failed
commit (a full disk) fails the whole batch.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger(namespace="rawsvc.spool")

#: Payloads up to this size are kept in the database; larger ones in files.
BLOB_MAX = 64 << 10

#: Most writes in one transaction.
MAX_BATCH = 2000

DB_NAME = "spool.db"
FILES_DIR = "spool"

UNFINISHED = ("queued", "running")
FINISHED = ("done", "failed", "cancelled")

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
    payload_path    TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq);
CREATE INDEX IF NOT EXISTS jobs_by_finish ON jobs (finished_at);
CREATE TABLE IF NOT EXISTS requests (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id       TEXT NOT NULL,
    action       TEXT NOT NULL,
    requested_at REAL NOT NULL,
    done_at      REAL,
    ok           INTEGER,
    result       TEXT
);
"""

#: Columns shown by C{rawsvc jobs} / C{rawsvc job} (everything but the payload).
COLUMNS = (
    "seq", "job_id", "trigger", "flow", "state", "peer_host", "peer_port", "encoding", "size",
    "received_at", "queued_at", "started_at", "updated_at", "finished_at", "action_index",
    "attempt", "last_error", "destination", "bytes_delivered", "variables", "payload_path",
)


class SpoolError(Exception):
    """The spool cannot store jobs (unwritable, full, not open)."""


def db_path(state_dir: str) -> str:
    return os.path.join(state_dir, DB_NAME)


def connect(path: str, readonly: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (we issue BEGIN ourselves), WAL."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=10)
    else:
        conn = sqlite3.connect(path, isolation_level=None, timeout=10, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.row_factory = sqlite3.Row
    return conn


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


@attrs.define
class _Op:
    fn: Callable[..., Any]
    args: tuple
    durable: bool
    deferred: Deferred
    undo: Callable[[], None] | None = None
    raw: bool = False


_STOP = object()


class Store:
    """See the module docstring.  Methods return Deferreds; call from the reactor."""

    def __init__(self, state_dir: str, reactor: Any, max_pages: int | None = None) -> None:
        self.state_dir = state_dir
        self.path = db_path(state_dir)
        self.files_dir = os.path.join(state_dir, FILES_DIR)
        self.reactor = reactor
        self.max_pages = max_pages  # tests: simulate a full disk
        self.conn: sqlite3.Connection | None = None
        #: Why the spool cannot store jobs, once opening it failed; else None.
        self.error: str | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._synchronous = ""
        self._dir_dirty = False
        self.batches = 0
        self.commits_full = 0

    # Lifetime ---------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread (then call L{open})."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="rawsvc-spool", daemon=True)
            self._thread.start()

    def open(self) -> Deferred:
        """(Re)open the database; fails with L{SpoolError} saying why."""
        return self._submit(self._open, (), raw=True)

    def stop(self) -> Deferred:
        """Write everything queued, close, end the thread."""
        d: Deferred = Deferred()
        if self._thread is None:
            d.callback(None)
            return d
        self._queue.put((_STOP, d))
        self._thread = None
        return d

    # Writes -----------------------------------------------------------------

    def add(self, job: Any, flow: str, variables: dict[str, str]) -> Deferred:
        """
        Store a new job durably (state C{running}: its flow starts at once).  Fires with the payload
        file's path (or None when the payload is in the database).
        """
        payload = job.payload
        source: bytes | str
        if payload.in_memory:
            source = payload.bytes()
        else:
            source = payload.path
        row = (
            job.job_id, job.trigger, flow, job.peer_host, job.peer_port, job.encoding,
            payload.size, job.received_at, time.time(),
        )
        target = os.path.join(self.files_dir, f"{job.job_id}.job")
        op_d = self._submit(self._add, (row, variables, source, target), durable=True)
        return op_d

    def progress(self, job_id: str, action_index: int, variables: dict[str, str], delivery: tuple | None) -> Deferred:
        """The job is running its action C{action_index}; not fsynced."""
        return self._submit(self._progress, (job_id, action_index, variables, delivery, time.time()))

    def started(self, job_id: str, action_index: int) -> Deferred:
        """The flow (re)started: state running, one more attempt."""
        return self._submit(self._started, (job_id, action_index, time.time()))

    def finish(self, job_id: str, state: str, error: str | None, action_index: int,
               variables: dict[str, str], delivery: tuple | None) -> Deferred:
        """The job's final state, durably."""
        return self._submit(
            self._finish, (job_id, state, error, action_index, variables, delivery, time.time()), durable=True
        )

    def requeue(self, job_id: str, action_index: int) -> Deferred:
        """Retry: a finished job goes back to C{queued} at C{action_index}."""
        return self._submit(self._requeue, (job_id, action_index, time.time()), durable=True)

    def load(self, states: tuple[str, ...] = UNFINISHED, job_id: str | None = None) -> Deferred:
        """Fires with the L{StoredJob}s in C{states} (or the one C{job_id}), by seq."""
        return self._submit(self._load, (states, job_id))

    def take_requests(self) -> Deferred:
        """Fires with the CLI's pending requests: (id, job_id, action)."""
        return self._submit(self._take_requests, ())

    def answer(self, request_id: int, ok: bool, result: str) -> Deferred:
        return self._submit(self._answer, (request_id, ok, result, time.time()))

    def purge(self, max_age: float, max_bytes: int) -> Deferred:
        """Remove finished jobs older than C{max_age} s, then the oldest past C{max_bytes}."""
        return self._submit(self._purge, (time.time() - max_age, max_bytes))

    # The writer thread --------------------------------------------------------

    def _submit(self, fn: Callable, args: tuple, durable: bool = False, raw: bool = False) -> Deferred:
        d: Deferred = Deferred()
        if self._thread is None:
            d.errback(SpoolError("the spool is stopped"))
            return d
        self._queue.put(_Op(fn, args, durable, d, raw=raw))
        return d

    def _loop(self) -> None:
        stopping: Deferred | None = None
        while stopping is None:
            batch = [self._queue.get()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            ops: list[_Op] = []
            for item in batch:
                if isinstance(item, tuple) and item[0] is _STOP:
                    stopping = item[1]
                else:
                    ops.append(item)
            try:
                results = self._run_batch(ops)
            except BaseException as e:  # never let the writer thread die
                log.failure("spool writer: unexpected error")
                results = [(op.deferred, False, _spool_error(e)) for op in ops]
            if results:
                self.reactor.callFromThread(_deliver, results)
        if self.conn is not None:
            try:
                self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                self.conn.close()
            except sqlite3.Error:
                pass
            self.conn = None
        self.reactor.callFromThread(stopping.callback, None)

    def _run_batch(self, ops: list[_Op]) -> list[tuple[Deferred, bool, Any]]:
        results: list[tuple[Deferred, bool, Any]] = []
        group: list[_Op] = []
        for op in ops:
            if op.raw:
                results.extend(self._run_group(group))
                group = []
                try:
                    results.append((op.deferred, True, op.fn(*op.args)))
                except Exception as e:
                    results.append((op.deferred, False, e))
            else:
                group.append(op)
        results.extend(self._run_group(group))
        return results

    def _run_group(self, ops: list[_Op]) -> list[tuple[Deferred, bool, Any]]:
        if not ops:
            return []
        conn = self.conn
        if conn is None:
            e = SpoolError(self.error or "not open")
            return [(op.deferred, False, e) for op in ops]
        out: list[tuple[Deferred, bool, Any]] = []
        try:
            sync = "FULL" if any(op.durable for op in ops) else "NORMAL"
            if sync != self._synchronous:
                conn.execute(f"PRAGMA synchronous={sync}")
                self._synchronous = sync
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            return [(op.deferred, False, _spool_error(e)) for op in ops]
        try:
            # Fast path: every write at once; should one fail, start over
            # with a savepoint per write, so that it fails alone.
            values = self._apply_all(conn, ops)
            out = [(op.deferred, True, value) for op, value in zip(ops, values)]
        except Exception:
            for op in ops:
                if op.undo is not None:
                    op.undo()
                    op.undo = None
            out = []
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            for op in ops:
                try:
                    conn.execute("SAVEPOINT op")
                    value = self._apply(conn, op)
                    conn.execute("RELEASE op")
                except Exception as e:
                    if not self._rollback_to_savepoint(conn):
                        # SQLite rolled the whole transaction back (a full disk
                        # does): every write of the batch is lost, so all fail.
                        return self._fail_group(ops, _spool_error(e))
                    out.append((op.deferred, False, _spool_error(e)))
                else:
                    out.append((op.deferred, True, value))
        try:
            if self._dir_dirty:
                _fsync_dir(self.files_dir)
                self._dir_dirty = False
            conn.execute("COMMIT")
            self.batches += 1
            self.commits_full += sync == "FULL"
        except (sqlite3.Error, OSError) as e:
            error = _spool_error(e)
            log.error("spool: commit of {n} write(s) failed: {error}", n=len(ops), error=error)
            return self._fail_group(ops, error)
        return out

    def _apply_all(self, conn: sqlite3.Connection, ops: list[_Op]) -> list[Any]:
        """
        Every write, in order, with runs of new jobs, progress and final
        states written as one multi-row statement each: fewer SQLite calls,
        so fewer hand-overs of the GIL to and from the reactor thread.
        """
        values: list[Any] = [None] * len(ops)
        run: list[int] = []
        for i, op in enumerate(ops):
            if getattr(op.fn, "__func__", None) in _COALESCED:
                run.append(i)
                continue
            if run:
                self._apply_run(conn, ops, run, values)
                run = []
            values[i] = self._apply(conn, op)
        if run:
            self._apply_run(conn, ops, run, values)
        return values

    def _apply_run(self, conn: sqlite3.Connection, ops: list[_Op], run: list[int], values: list[Any]) -> None:
        # Within a run: new jobs first, then progress, then final states; each
        # job's progress and final state come after its insert, in that order.
        rows, progress, finals = [], {}, {}
        for i in run:
            op = ops[i]
            kind = op.fn.__func__
            if kind is Store._add:
                row, variables, source, target = op.args
                blob, path = self._payload(source, target)
                if path is not None:
                    values[i] = path
                    op.undo = lambda path=path: _unlink(path)
                rows.append(row[:9] + (row[8], row[8], json.dumps(variables), blob, path))
            elif kind is Store._progress:
                job_id, index, variables, delivery, now = op.args
                dest, sent = delivery or (None, 0)
                progress[job_id] = (job_id, index, json.dumps(variables), now, dest, sent)
            else:
                job_id, state, error, index, variables, delivery, now = op.args
                dest, sent = delivery or (None, 0)
                finals[job_id] = (job_id, state, error, index, json.dumps(variables), now, dest, sent)
        _many(conn, _INSERT_HEAD, _INSERT_ROW, "", rows)
        _many(conn, _PROGRESS_HEAD, "(?, ?, ?, ?, ?, ?)", _PROGRESS_TAIL, list(progress.values()))
        _many(conn, _FINISH_HEAD, "(?, ?, ?, ?, ?, ?, ?, ?)", _FINISH_TAIL, list(finals.values()))

    def _payload(self, source: Any, target: str) -> tuple[bytes | None, str | None]:
        if isinstance(source, bytes) and len(source) <= BLOB_MAX:
            return source, None
        return None, self._write_file(source, target)

    def _apply(self, conn: sqlite3.Connection, op: _Op) -> Any:
        value = op.fn(conn, *op.args)
        if isinstance(value, tuple) and len(value) == 2 and callable(value[1]):
            value, op.undo = value
        return value

    def _rollback_to_savepoint(self, conn: sqlite3.Connection) -> bool:
        """Undo one write; False when the whole transaction is already gone."""
        if not conn.in_transaction:
            return False
        try:
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            return True
        except sqlite3.Error:
            return False

    def _fail_group(self, ops: list[_Op], error: SpoolError) -> list[tuple[Deferred, bool, Any]]:
        assert self.conn is not None
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        for op in ops:
            if op.undo is not None:
                op.undo()
        return [(op.deferred, False, error) for op in ops]

    # Operations (writer thread) -------------------------------------------------

    def _open(self) -> str:
        if self.conn is not None:
            return self.path
        try:
            os.makedirs(self.files_dir, mode=0o700, exist_ok=True)
            conn = connect(self.path)
            if self.max_pages is not None:
                conn.execute(f"PRAGMA max_page_count={int(self.max_pages)}")
            conn.executescript(SCHEMA)
            os.chmod(self.path, 0o600)
        except (OSError, sqlite3.Error) as e:
            self.error = f"cannot open {self.path}: {_describe(e)}"
            raise SpoolError(self.error) from None
        self.conn = conn
        self._synchronous = ""
        self.error = None
        return self.path

    def _add(self, conn: sqlite3.Connection, row: tuple, variables: dict, source: Any, target: str) -> Any:
        blob, path = self._payload(source, target)
        try:
            conn.execute(_INSERT_HEAD + _INSERT_ROW, row[:9] + (row[8], row[8], json.dumps(variables), blob, path))
        except Exception:
            if path is not None:
                _unlink(path)
            raise
        if path is None:
            return None
        return path, lambda: _unlink(path)

    def _write_file(self, source: bytes | str, target: str) -> str:
        """The payload into C{target} (0600), fsynced; the directory is fsynced at commit."""
        if isinstance(source, bytes):
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(source)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                _unlink(target)
                raise
            os.close(fd)
        else:
            try:
                os.link(source, target)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP):
                    raise
                shutil.copyfile(source, target)
            os.chmod(target, 0o600)
            fd = os.open(target, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._dir_dirty = True
        return target

    def _started(self, conn, job_id, action_index, now) -> None:
        conn.execute(
            "UPDATE jobs SET state = 'running', action_index = ?, attempt = attempt + 1,"
            " started_at = COALESCE(started_at, ?), updated_at = ? WHERE job_id = ?",
            (action_index, now, now, job_id),
        )

    def _progress(self, conn, job_id, action_index, variables, delivery, now) -> None:
        conn.execute(
            "UPDATE jobs SET state = 'running', action_index = ?, variables = ?, updated_at = ?"
            " WHERE job_id = ? AND state IN ('queued', 'running')",
            (action_index, json.dumps(variables), now, job_id),
        )
        self._delivery(conn, job_id, delivery)

    def _delivery(self, conn, job_id, delivery) -> None:
        if delivery is not None:
            conn.execute(
                "UPDATE jobs SET destination = ?, bytes_delivered = bytes_delivered + ? WHERE job_id = ?",
                (delivery[0], delivery[1], job_id),
            )

    def _finish(self, conn, job_id, state, error, action_index, variables, delivery, now) -> None:
        conn.execute(
            "UPDATE jobs SET state = ?, last_error = ?, action_index = ?, variables = ?,"
            " updated_at = ?, finished_at = ? WHERE job_id = ?",
            (state, error, action_index, json.dumps(variables), now, now, job_id),
        )
        self._delivery(conn, job_id, delivery)

    def _requeue(self, conn, job_id, action_index, now) -> None:
        conn.execute(
            "UPDATE jobs SET state = 'queued', action_index = ?, finished_at = NULL, updated_at = ?"
            " WHERE job_id = ?",
            (action_index, now, job_id),
        )

    def _load(self, conn, states, job_id) -> list[StoredJob]:
        if job_id is not None:
            rows = conn.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,))
        else:
            marks = ", ".join("?" for _ in states)
            rows = conn.execute(f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY seq", states)
        return [StoredJob.from_row(r) for r in rows]

    def _take_requests(self, conn) -> list[tuple[int, str, str]]:
        rows = conn.execute("SELECT id, job_id, action FROM requests WHERE done_at IS NULL ORDER BY id")
        return [tuple(r) for r in rows]

    def _answer(self, conn, request_id, ok, result, now) -> None:
        conn.execute("UPDATE requests SET done_at = ?, ok = ?, result = ? WHERE id = ?", (now, int(ok), result, request_id))

    def _purge(self, conn, cutoff, max_bytes) -> tuple[int, int]:
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
                _unlink(r["payload_path"])
        return len(doomed), freed


# Multi-row statements ---------------------------------------------------------

#: A new job: its flow starts as soon as this commits, so it is stored as running, attempt 1.
_INSERT_HEAD = (
    "INSERT INTO jobs (job_id, trigger, flow, state, peer_host, peer_port, encoding, size, received_at,"
    " queued_at, started_at, updated_at, attempt, variables, payload, payload_path) VALUES "
)
_INSERT_ROW = "(?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?)"
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


_COALESCED = (Store._add, Store._progress, Store._finish)


def _deliver(results: list[tuple[Deferred, bool, Any]]) -> None:
    for d, ok, value in results:
        if ok:
            d.callback(value)
        else:
            d.errback(Failure(value))


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}" + (f" ({e.filename})" if e.filename else "")
    return str(e) or type(e).__name__


def _spool_error(e: BaseException) -> SpoolError:
    return e if isinstance(e, SpoolError) else SpoolError(_describe(e))


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
