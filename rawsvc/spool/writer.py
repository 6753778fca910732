"""
The spool's writer thread: every write of the spool goes through it.

It takes everything queued since its last commit and writes it at once,
for as many jobs as arrived meanwhile (group commit).  The new jobs and
final states of a batch are made durable by the journal
(L{rawsvc.spool.journal}): one record, one C{writev}, one C{fdatasync}, and
they are acknowledged right then (L{IndexBehind.ack}: the results so far
go back to the reactor with one C{callFromThread}).  The SQLite index
follows in the same order, committed with C{synchronous=NORMAL} (no fsync):
the rows of groups of new jobs, progress and final states alone gather for
up to L{INDEX_DELAY} into one transaction; any read or other write first
writes them (so every read sees every acknowledged write).  The index is
made durable (a checkpoint) when the journal is emptied.  Should its commit
fail after the acknowledgement (a full disk), the records stay in the
journal and are written into the index again every L{RETRY_INTERVAL}
before anything else, every other write being refused meanwhile (a later
write of those jobs, or a read, would otherwise miss them; the next start
replays them too).  Other durable writes (the CLI's requests, a requeue)
are committed with C{synchronous=FULL}, their results after the commit;
the reactor never waits on the disk.

Runs of new jobs, progress and final states are written as one multi-row
statement each; should a write fail, the batch starts over with a savepoint
per write, so that it fails alone (L{rawsvc.spool.index_apply}).  A failed
commit (a full disk) fails the whole batch; the thread never dies.

This module keeps the thread, its queue, the batches and their results;
the journal side, and the index behind it, is L{rawsvc.spool.index_behind}.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
import time
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from rawsvc.spool import journal
from rawsvc.spool.check import mark_clean
from rawsvc.spool.index_apply import Applier
# INDEX_DELAY and KILL_DELAY stay importable from here with the other settings; PROGRESS is for the store.
from rawsvc.spool.index_behind import INDEX_DELAY, KILL_DELAY, RETRY_INTERVAL, IndexBehind
from rawsvc.spool.ops import ADD, FINISH, PROGRESS, Op, Results, deliver
from rawsvc.spool.schema import DB_NAME, SpoolError, describe, is_damage, spool_error

log = Logger(namespace="rawsvc.spool")

#: Most writes in one transaction.
MAX_BATCH = 2000
#: Writes a reactor turn hands over at once: a turn that makes more (a
#: thousand jobs completing together) lets the thread start on the first
#: ones while it makes the rest, rather than leave it idle until the end.
HAND_OVER = 256

#: Seconds a batch of background final states (no one waits for them) may
#: stay in the journal before its fdatasync, unless a batch that someone
#: waits for (a new job) comes first and fdatasyncs them with its own.  At
#: one job at a time this halves the fsyncs and keeps the final state's
#: fsync out of the next job's acknowledgement; a power loss within it
#: runs those jobs again (at least once), as losing their final state does.
LAZY_SYNC = 0.005

#: Test only (the kill-between-writes test): the writer SIGKILLs its own
#: process after the journal fdatasync of this many batches (at the first
#: with new jobs from then on) and its acknowledgements (L{KILL_DELAY}),
#: before their SQLite commit.  Read once, when a writer is made; unset in service.
KILL_AFTER_JOURNAL_ENV = "RAWSVC_TEST_KILL_AFTER_JOURNAL"

_STOP = object()


class Writer:
    """The thread, its queue and its connection; see the module docstring."""

    def __init__(self, reactor: Any, files_dir: str) -> None:
        self.reactor = reactor
        self.files_dir = files_dir
        self.conn: sqlite3.Connection | None = None
        #: Why the spool cannot store jobs, once opening it failed; else None.
        self.error: str | None = None
        #: Lists of writes (one per reactor turn), or (_STOP, Deferred).
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        #: This reactor turn's writes, handed over at its end.
        self._pending: list[Op] = []
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.commits_full = 0
        #: The rows of each group's writes, written into the index.
        self.applier = Applier(files_dir)
        #: Final states whose group was lost (see L{_lost}), written again first.
        self._retry: list[Op] = []
        self._retry_error = ""
        #: The journal (once open) and the last sequence number written to it.
        self.journal: journal.Journal | None = None
        self.journal_seq = 0
        #: The batch's results not yet handed back (see L{hand_back}).
        self._results: Results = []
        self._handed: list[Results] = []
        #: The journal side: what is acknowledged and not in the index yet.
        self.behind = IndexBehind(self)
        #: Test only: see L{KILL_AFTER_JOURNAL_ENV}.
        self.kill_after = int(os.environ.get(KILL_AFTER_JOURNAL_ENV) or 0)

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="rawsvc-spool", daemon=True)
            self._thread.start()

    def stop(self) -> Deferred:
        """Write everything queued, close, end the thread."""
        d: Deferred = Deferred()
        if self._thread is None:
            d.callback(None)
            return d
        self._hand_over()
        self._queue.put((_STOP, d))
        self._thread = None
        return d

    def submit(self, op: Op) -> Deferred | None:
        if self._thread is None:
            error = SpoolError("the spool is stopped")
            if op.deferred is None:
                log.error("spool write failed: {error}", error=error)
                return None
            op.deferred.errback(error)
        else:
            pending = self._pending
            if not pending:
                self.reactor.callLater(0, self._hand_over)
            pending.append(op)
            if len(pending) >= HAND_OVER:
                self._queue.put(pending)
                self._pending = []
        return op.deferred

    def _hand_over(self) -> None:
        """
        (Reactor thread) The writes of one reactor turn go to the thread
        together (by L{HAND_OVER} at most): it wakes once per turn, not at
        the first write of a turn to fight the reactor for the GIL over the rest.
        """
        if self._pending:
            self._queue.put(self._pending)
            self._pending = []

    def opened(self, conn: sqlite3.Connection, log_file: journal.Journal | None = None, seq: int = 0) -> None:
        """(Writer thread) C{conn} (and C{log_file}, the journal) from now on."""
        self.conn = conn
        self.applier.synchronous = ""
        self.error = None
        if self.journal is not None and self.journal is not log_file:
            self.journal.close()
        self.journal = log_file
        self.journal_seq = seq
        self.behind.opened()
        self.applier.newest = None

    # The thread -------------------------------------------------------------

    def _loop(self) -> None:
        stopping: Deferred | None = None
        while stopping is None:
            try:
                timeout = self._timeout()
                item = self._queue.get() if timeout is None else self._queue.get(timeout=timeout)
            except queue.Empty:
                item = []
                if self.journal is not None and self.journal.unsynced:
                    self.behind.sync_journal()
                if self.behind.rows and time.monotonic() >= self.behind.due:
                    self._write_index()
                if not (self._retry or self.behind.unapplied):
                    continue
            if self.behind.unapplied:
                self.behind.apply_unapplied()
            ops, self._retry = self._retry, []  # final states not yet written go first, in order
            retried = len(ops)
            while True:
                if isinstance(item, tuple):
                    stopping = item[1]
                    break
                ops.extend(item)
                if len(ops) >= MAX_BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            self._results, self._handed = [], []
            try:
                self._run_batch(ops)
                results = self._results
            except BaseException as e:  # never let the writer thread die
                log.failure("spool writer: unexpected error")
                handed = {id(d) for done in self._handed for d, _, _ in done}
                results = [(op.deferred, False, spool_error(e)) for op in ops
                           if not op.acked and id(op.deferred) not in handed]
            self._results = []
            if results:
                self.reactor.callFromThread(deliver, results)
            if self.behind.rows and (self.behind.count >= MAX_BATCH or time.monotonic() >= self.behind.due):
                self._write_index()
            if self.journal is not None:
                if self.journal.size >= journal.ROTATE_BYTES:
                    self._write_index()
                    self.behind.empty_journal()
                elif self.journal.wants_space():
                    self.behind.grow_journal()
            if retried and not self._retry:
                log.info("spool: {n} final state(s) written at last", n=retried)
                self._retry_error = ""
        self._write_index()
        if self.behind.unapplied and not self.behind.apply_unapplied():
            log.error("spool: {n} journal record(s) still not in the index ({error}); the next start writes them "
                      "into it", n=len(self.behind.unapplied), error=self.behind.unapplied_error)
        if self._retry:
            log.error("spool: the final state of {n} job(s) could not be written ({error}); they run again at the "
                      "next start: {jobs}", n=len(self._retry), error=self._retry_error,
                      jobs=", ".join(op.args[0] for op in self._retry))
            self._retry = []
        if self.conn is not None:
            try:
                mark_clean(self.conn)
            except sqlite3.Error as e:
                log.warn("spool: cannot mark the spool closed cleanly: {error}", error=spool_error(e))
            else:
                self.behind.empty_journal()
            if self.journal is not None:
                self.behind.sync_journal()
                self.journal.close()
                self.journal = None
            try:
                self.conn.close()
            except sqlite3.Error:
                pass
            self.conn = None
        log.info("spool closed after {batches} transaction(s), {full} fsynced", batches=self.batches,
                 full=self.commits_full)
        self.reactor.callFromThread(stopping.callback, None)

    def _timeout(self) -> float | None:
        """Seconds to wait for writes before the next thing due (None: nothing is)."""
        due: list[float] = []
        if self.journal is not None and self.journal.unsynced:
            due.append(LAZY_SYNC)
        if self.behind.rows:
            due.append(max(0.0, self.behind.due - time.monotonic()))
        if self._retry or self.behind.unapplied:
            due.append(RETRY_INTERVAL)
        return min(due) if due else None

    def _run_batch(self, ops: list[Op]) -> None:
        """The batch's writes, their results into C{self._results} (those not handed back yet)."""
        group: list[Op] = []
        for op in ops:
            if op.raw:
                done = self._run_group(group)
                self._write_index()  # a flush, an open: after the index holds every write before it
                self._results.extend(done)  # after the group: it may have handed the list back
                group = []
                self.applier.newest = None  # any other write may add jobs: L{Applier.stored_twice} looks again
                try:
                    assert op.fn is not None  # only a row of a run has no fn; raw ops have one
                    self._results.append((op.deferred, True, op.fn(*op.args)))
                except Exception as e:
                    self._results.append((op.deferred, False, e))
            else:
                group.append(op)
        done = self._run_group(group)
        self._results.extend(done)

    # Groups (the journal side, IndexBehind, calls the public ones) ----------

    def hand_back(self, results: Results) -> None:
        """(Writer thread) The results so far, then C{results}, to the reactor with one C{callFromThread}."""
        self._results.extend(results)
        if self._results:
            self.reactor.callFromThread(deliver, self._results)
            self._handed.append(self._results)
            self._results = []

    def _run_group(self, ops: list[Op]) -> Results:
        if not ops:
            return []
        conn = self.conn
        if conn is None:
            e = SpoolError(self.error or "not open")
            return [(op.deferred, False, e) for op in ops]
        log_file = self.journal
        rows_only = log_file is not None and all(op.kind is not None for op in ops)
        if not rows_only:
            self._write_index()  # a read, any other write: after the rows before it
        if self.behind.unapplied:  # the index cannot take writes: refused (see L{IndexBehind.apply_unapplied})
            return self._lost(ops, SpoolError(self.behind.unapplied_error))
        self.applier.rows = ([], [])
        if log_file is not None and (rows_only or any(op.kind == ADD or op.kind == FINISH for op in ops)):
            return self.behind.ack(conn, ops, log_file, rows_only)
        return self.commit_group(conn, ops, log_file)

    def commit_group(self, conn: sqlite3.Connection, ops: list[Op], log_file: journal.Journal | None) -> Results:
        """The group applied and committed, then answered (without a journal, or nothing to journal)."""
        self.applier.rows = ([], [])
        try:
            # New jobs and final states are made durable by the journal.
            sync = "FULL" if any(op.durable and (op.kind is None or log_file is None) for op in ops) else "NORMAL"
            self.applier.begin(conn, sync)
        except sqlite3.Error as e:
            self.note_damage(e)
            return self._lost(ops, spool_error(e))
        try:
            values = self.applier.apply_all(conn, ops)
            # Background writes that succeeded have no one to tell.
            out: Results = [(op.deferred, True, value) for op, value in zip(ops, values) if op.deferred is not None]
        except Exception as e:
            self.note_damage(e)
            one_by_one = self.applier.one_by_one(conn, ops)
            if isinstance(one_by_one, SpoolError):
                return self.fail_group(ops, one_by_one)
            out = one_by_one
        cut_to: int | None = None
        try:
            self.applier.sync_files()  # before the record that names the files
            inserts, finals = self.applier.rows
            if log_file is not None and (inserts or finals):
                seq = self.journal_seq + 1
                journal.set_seq(conn, seq)
                cut_to = log_file.size
                try:
                    # Someone waits for it (a new job): fdatasynced now; else soon (LAZY_SYNC).
                    log_file.append(journal.encode(seq, inserts, finals),
                                    sync=bool(inserts) or any(op.deferred is not None for op in ops))
                except OSError:
                    cut_to = None  # cut back already
                    self.note_broken(log_file)
                    raise
                self.journal_seq = seq
                if self.kill_after and log_file.records >= self.kill_after:
                    os.kill(os.getpid(), 9)  # test only: see KILL_AFTER_JOURNAL_ENV
            conn.execute("COMMIT")
            self.batches += 1
            self.commits_full += sync == "FULL" or cut_to is not None
        except Exception as e:  # the transaction is rolled back, whatever failed
            self.note_damage(e)
            error = spool_error(e)
            log.error("spool: commit of {n} write(s) failed: {error}", n=len(ops), error=error)
            if cut_to is not None and log_file is not None:  # journaled, not committed: not stored
                self.journal_seq -= 1
                try:
                    log_file.cut(cut_to)
                except OSError as cut_error:
                    self.error = f"{log_file.path} cannot be cut back: {describe(cut_error)}; new jobs are refused"
                    log.critical("spool: {error}", error=self.error)
            return self.fail_group(ops, error)
        return out

    def _write_index(self) -> None:
        """(Writer thread) The rows acknowledged at the journal written into the index (L{IndexBehind.write})."""
        # By this name for bench/spool_writer_cpu.py, which runs it on other trees' writers too.
        self.behind.write()

    def note_broken(self, log_file: journal.Journal) -> None:
        """(Writer thread) A journal that cannot be written any more: the spool refuses new jobs from now on."""
        if log_file.broken and not self.error:
            self.error = f"{log_file.broken}; new jobs are refused: restart the service"
            log.critical("spool: {error}", error=self.error)

    def note_damage(self, e: BaseException) -> None:
        """(Writer thread) A damaged database file: the spool refuses new jobs from now on."""
        if is_damage(e) and not self.error:
            db = os.path.join(os.path.dirname(self.files_dir), DB_NAME)
            self.error = (f"{db} is damaged ({e}); new jobs are refused: stop the service and run "
                          f"rawsvc spool check --state-dir {os.path.dirname(db)}")
            log.critical("spool: {error}", error=self.error)

    def fail_group(self, ops: list[Op], error: SpoolError) -> Results:
        """(Writer thread) The group's transaction rolled back, its payload files removed; see L{_lost}."""
        assert self.conn is not None
        self.applier.forget()
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        for op in ops:
            if op.undo is not None:
                op.undo()
        return self._lost(ops, error)

    def _lost(self, ops: list[Op], error: SpoolError) -> Results:
        """
        The whole group is lost (a full disk): final states without a caller
        are kept and written again (every L{RETRY_INTERVAL} s, and at stop),
        so that a job delivered is not run again at the next start; the
        other writes fail.
        """
        again = [op for op in ops if op.kind == FINISH and op.deferred is None]
        if again:
            if not self._retry_error:
                log.error("spool: {n} final state(s) not written ({error}); trying again every {s:g} s",
                          n=len(again), error=error, s=RETRY_INTERVAL)
            self._retry_error = str(error)
            self._retry.extend(again)
        return [(op.deferred, False, error) for op in ops if not (op.kind == FINISH and op.deferred is None)]

