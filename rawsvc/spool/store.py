"""
The durable job store on SQLite (WAL) in C{state_dir/spool.db}, payloads
larger than L{BLOB_MAX} in C{state_dir/spool/<job_id>.job}: the
L{IJobStore} of a single node.

L{Store} is the reactor side: each method queues a write (or a read) for
the writer thread (L{rawsvc.spool.writer}) and returns a Deferred that
fires once it is committed; a background write (C{background=True}) has
none, its failure is logged, and L{Store.flush} waits for it.  New jobs,
progress and final states are written in runs by the writer
(L{rawsvc.spool.records}); the other operations are in
L{rawsvc.spool.sqlops}.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from rawsvc.interfaces import IHoldStore, IJobStore
from rawsvc.spool import check, journal, lock, sqlops
from rawsvc.spool.files import unlink
from rawsvc.spool.records import BLOB_MAX, StoredJob, write_waiting
from rawsvc.spool.schema import (
    COLUMNS, DB_NAME, FILES_DIR, FINISHED, SCHEMA, UNFINISHED, SpoolError, connect, db_path, describe, migrate,
)
from rawsvc.spool.sqlops import free_bytes
from rawsvc.spool.writer import ADD, FINISH, MAX_BATCH, PROGRESS, Op, Writer

if TYPE_CHECKING:
    from rawsvc.job import Job

log = Logger(namespace="rawsvc.spool")

__all__ = [
    "BLOB_MAX", "COLUMNS", "DB_NAME", "FILES_DIR", "FINISHED", "MAX_BATCH", "SCHEMA", "UNFINISHED",
    "SpoolError", "Store", "StoredJob", "connect", "db_path", "free_bytes",
]


@implementer(IJobStore, IHoldStore)
class Store:
    """
    See the module docstring and L{IJobStore}.  Methods return Deferreds;
    call from the reactor.  C{clock} gives the times it records (and the
    age C{purge} measures); C{max_pages} (tests) simulates a full disk.
    """

    def __init__(self, state_dir: str, reactor: Any, max_pages: int | None = None, min_free_bytes: int = 0,
                 clock: Callable[[], float] = time.time) -> None:
        self.state_dir = state_dir
        self.path = db_path(state_dir)
        self.files_dir = os.path.join(state_dir, FILES_DIR)
        self.journal_path = journal.journal_path(state_dir)
        self.reactor = reactor
        self.max_pages = max_pages
        self.clock = clock
        self.writer = Writer(reactor, self.files_dir)
        self._holding = False  # the state_dir's lock (see rawsvc.spool.lock)
        #: Retention's free-space floor on the spool's filesystem ([service] min_free_mb).
        self.min_free_bytes = min_free_bytes

    @property
    def error(self) -> str | None:
        """Why the spool cannot store jobs, once opening it failed (or it is damaged); else None."""
        return self.writer.error

    @property
    def conn(self) -> sqlite3.Connection | None:
        return self.writer.conn

    @property
    def batches(self) -> int:
        """Transactions committed (tests, benchmarks)."""
        return self.writer.batches

    @property
    def commits_full(self) -> int:
        """Transactions committed with an fsync (tests, benchmarks)."""
        return self.writer.commits_full

    # Lifetime ---------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread; L{open} does when it is not running."""
        self.writer.start()

    def open(self) -> Deferred:
        """(Re)open the database; fires with its path, or fails with L{SpoolError} saying why."""
        self.writer.start()
        return self._submit(None, self._open, (), raw=True)

    def stop(self) -> Deferred:
        """Write everything queued, close, end the thread; then let go of the state_dir."""
        return self.writer.stop().addBoth(self._let_go)

    def _let_go(self, result: Any) -> Any:
        if self._holding:
            self._holding = False
            lock.release(self.state_dir)
        return result

    # Writes -----------------------------------------------------------------

    def add(self, job: Job, flow: str, variables: dict[str, str] | None = None) -> Deferred:
        """
        Store a new job durably (state C{running}: its flow starts at once).  Fires with the payload
        file's path (or None when the payload is in the database).  Without C{variables}, the
        writer thread takes the job's own, and its payload: nothing may change them until this fires.
        """
        return self._submit(ADD, None, (job, flow, variables, self.clock()), durable=True)

    def progress(self, job_id: str, action_index: int, variables: dict[str, str], delivery: tuple | None,
                 background: bool = False) -> Deferred | None:
        """
        The job is running its action C{action_index}; not fsynced.  With
        C{background}, no Deferred: a failure is logged (see L{flush}).
        """
        return self._submit(PROGRESS, None, (job_id, action_index, variables, delivery, self.clock()),
                            background=background)

    def started(self, job_id: str, action_index: int, background: bool = False) -> Deferred | None:
        """The flow (re)started: state running, one more attempt."""
        return self._submit(None, sqlops.started, (job_id, action_index, self.clock()), background=background)

    def finish(self, job_id: str, state: str, error: str | None, action_index: int,
               variables: dict[str, str], delivery: tuple | None, background: bool = False) -> Deferred | None:
        """The job's final state, durably."""
        return self._submit(
            FINISH, None, (job_id, state, error, action_index, variables, delivery, self.clock()), durable=True,
            background=background,
        )

    def waiting(self, job_id: str, attempt: int, error: str | None, next_try: float | None) -> None:
        """The job's delivery waits to retry (or, C{next_try} None, tries again); in the background."""
        self._submit(None, write_waiting, (job_id, attempt, error, next_try, self.clock()), background=True)

    def held(self, job_id: str, attempt: int, reason: str, next_try: float) -> None:
        """The job's printer is not ready (pre-flight): C{held} with the reason, unfinished; in the background."""
        self._submit(None, write_waiting, (job_id, attempt, reason, next_try, self.clock(), "held"), background=True)

    def flush(self) -> Deferred:
        """Fires once every write queued so far is committed (or has failed)."""
        if not self.writer.running:
            return succeed(None)
        return self._submit(None, sqlops.nothing, (), raw=True)

    def requeue(self, job_id: str, action_index: int) -> Deferred:
        """Retry: a finished job goes back to C{queued} at C{action_index}."""
        return self._submit(None, sqlops.requeue, (job_id, action_index, self.clock()), durable=True)

    # Reads ------------------------------------------------------------------

    def load(self, states: tuple[str, ...] = UNFINISHED, job_id: str | None = None) -> Deferred:
        """Fires with the L{StoredJob}s in C{states} (or the one C{job_id}), by seq."""
        return self._submit(None, sqlops.load_jobs, (states, job_id, self.files_dir))

    def query(self, states: Iterable[str] = (), triggers: Iterable[str] = (), limit: int | None = 50,
              prefix: str | None = None) -> Deferred:
        """History, newest first, without payloads (see L{sqlops.query_jobs})."""
        return self._submit(None, sqlops.query_jobs, (tuple(states), tuple(triggers), limit, prefix, self.files_dir))

    # The CLI's requests -----------------------------------------------------

    def request(self, job_id: str, action: str) -> Deferred:
        """Queue a retry or cancel request (durably); fires with its id."""
        return self._submit(None, sqlops.insert_request, (job_id, action, self.clock()), durable=True)

    def take_requests(self) -> Deferred:
        """Fires with the CLI's pending requests: (id, job_id, action)."""
        return self._submit(None, sqlops.take_requests, ())

    def answer(self, request_id: int, ok: bool, result: str) -> Deferred:
        """Record a request's answer (C{ok}, a text for people)."""
        return self._submit(None, sqlops.answer, (request_id, ok, result, self.clock()))

    def answer_of(self, request_id: int) -> Deferred:
        """Fires with C{(ok, result)} once the request is answered, else None."""
        return self._submit(None, sqlops.answer_of, (request_id,))

    # Retention --------------------------------------------------------------

    def purge(self, max_age: float, max_bytes: int) -> Deferred:
        """
        Remove finished jobs older than C{max_age} s, then the oldest past
        C{max_bytes} or while free space is below L{min_free_bytes}.
        """
        return self._submit(None, sqlops.purge,
                            (self.clock() - max_age, max_bytes, self.files_dir, self.min_free_bytes))

    def _submit(self, kind: str | None, fn: Callable | None, args: tuple, durable: bool = False,
                raw: bool = False, background: bool = False) -> Any:
        return self.writer.submit(Op(kind, fn, args, durable, None if background else Deferred(), raw))

    # Operations (writer thread) -------------------------------------------------

    def _open(self) -> str:
        if self.writer.conn is not None:
            if self.writer.error:  # damaged while open: a restart checks it again
                raise SpoolError(self.writer.error)
            return self.path
        try:
            if not self._holding:
                if not lock.hold(self.state_dir):
                    raise SpoolError(lock.busy_message(self.state_dir))
                self._holding = True
            os.makedirs(self.files_dir, mode=0o700, exist_ok=True)
            check.verify(self.state_dir)  # never start fresh over a damaged spool
            conn = connect(self.path)
            if self.max_pages is not None:
                conn.execute(f"PRAGMA max_page_count={int(self.max_pages)}")
            migrate(conn)
            # Acknowledged jobs whose index commit was lost, before anything else writes.
            replayed, jobs, torn = journal.replay(conn, self.journal_path)
            check.mark_open(conn, self.state_dir)
            os.chmod(self.path, 0o600)
            swept = _sweep_orphans(conn, self.files_dir)
            log_file = journal.Journal(self.journal_path)
            seq = journal.applied_seq(conn)
        except SpoolError as e:  # damaged, or another process holds the state_dir
            self.writer.error = str(e)
            raise
        except (OSError, sqlite3.Error) as e:
            self.writer.error = f"cannot open {self.path}: {describe(e)}"
            raise SpoolError(self.writer.error) from None
        if replayed:
            log.info("spool: {n} journal record(s) ({jobs} new job(s)) written into the index (the last run "
                     "was stopped before it had)", n=replayed, jobs=jobs)
        if torn:
            log.info("spool: ignored the journal's last {n} byte(s), a record never finished (never acknowledged)",
                     n=torn)
        if swept:
            log.info("spool: removed {n} payload file(s) of jobs never stored (an earlier run was stopped "
                     "while storing them)", n=swept)
        self.writer.opened(conn, log_file, seq)
        return self.path


def _sweep_orphans(conn: sqlite3.Connection, files_dir: str) -> int:
    """Remove payload files no row names: written by a run killed before its commit."""
    files = set(check.payload_files(os.path.dirname(files_dir)))
    if not files:
        return 0
    named = {os.path.basename(r[0]) for r in conn.execute("SELECT payload_path FROM jobs WHERE payload_path IS NOT NULL")}
    orphans = files - named
    for name in orphans:
        unlink(os.path.join(files_dir, name))
    return len(orphans)
