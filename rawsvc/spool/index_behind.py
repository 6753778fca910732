"""
The spool writer's journal side (writer thread only): new jobs and final
states acknowledged at their journal record's C{fdatasync}, the SQLite
index written behind it.

A group's record is appended to the journal (L{rawsvc.spool.journal}) and
its writes acknowledged right then (L{IndexBehind.ack}); the index follows
in the same order, committed with C{synchronous=NORMAL} (no fsync): at once
when the group has other writes, else with the rows of the groups that
follow within L{INDEX_DELAY}, in one transaction (L{IndexBehind.write}).
Should an index commit fail (a full disk), its records stay in the journal
and in L{IndexBehind.unapplied}, written into the index before any other
write (L{IndexBehind.apply_unapplied}), every other write being refused
meanwhile.  The index is made durable (a checkpoint) when the journal is
emptied (L{IndexBehind.empty_journal}).

The writer (L{rawsvc.spool.writer.Writer}) owns one and shares its
connection, journal and counters with it; a group that cannot be journaled
goes back to the writer (C{commit_group}, C{fail_group}).
"""

from __future__ import annotations

import os
import sqlite3
import time
import weakref
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from rawsvc.spool import journal, records
from rawsvc.spool.index_apply import undo
from rawsvc.spool.ops import ADD, FINISH, Op, Results
from rawsvc.spool.schema import SpoolError, describe, spool_error

if TYPE_CHECKING:
    from rawsvc.spool.writer import Writer

log = Logger(namespace="rawsvc.spool")

#: Seconds between attempts to write final states, or journal records into the index, again after a
#: failed commit.
RETRY_INTERVAL = 1.0

#: Seconds the index may lag behind the journal (new jobs, progress and final
#: states alone; any read or other write first writes it): one transaction
#: for the rows of as many groups.
INDEX_DELAY = 0.05

#: Seconds the kill hook waits before the kill, for the reactor to send the acknowledgements.
KILL_DELAY = 0.5


class IndexBehind:
    """The rows acknowledged at the journal and not in the index yet; see the module docstring."""

    def __init__(self, writer: Writer) -> None:
        #: Its owner, held weakly: no cycle between the two, so a writer dropped is freed at once, as before.
        self._writer = weakref.ref(writer)
        #: Rows acknowledged at the journal, not yet in the index: (runs of rows, journal seq or None, record),
        #: how many writes they are, the new jobs' ids; written by L{write} from C{due} on.
        self.rows: list[tuple[list[tuple], int | None, journal.Record]] = []
        self.count = 0
        self.ids: set[str] = set()
        self.due = 0.0
        #: Journal records acknowledged whose index commit failed (a full disk): applied again, in order,
        #: every RETRY_INTERVAL s before any other write; until then every other write is refused.
        self.unapplied: list[journal.Record] = []
        self.unapplied_error = ""

    @property
    def writer(self) -> Writer:
        writer = self._writer()
        assert writer is not None  # it owns this one
        return writer

    def opened(self) -> None:
        """A new connection and journal: the open replayed the journal, nothing is behind."""
        self.unapplied = []
        self.rows, self.count, self.ids = [], 0, set()

    def ack(self, conn: sqlite3.Connection, ops: list[Op], log_file: journal.Journal, rows_only: bool) -> Results:
        """
        New jobs and final states acknowledged at their journal record's
        fdatasync (the batch's results so far handed back with them, one
        C{callFromThread}); the SQLite index is written behind, in the same
        order: at once when the group has other writes, else (C{rows_only})
        with the rows of the next groups, in one transaction (L{INDEX_DELAY},
        L{write}).  Should the index commit fail (a full disk), the record
        stays in the journal and in L{unapplied}, written into the index
        before any later write; the group's other writes fail.
        """
        writer = self.writer
        applier = writer.applier
        refused = applier.stored_twice(conn, ops, self.ids)
        if refused:
            ops = [op for op in ops if op not in refused]
        values: list[Any] = [None] * len(ops)
        try:
            items = applier.items(ops, values)
            applier.sync_files()  # before the record that names the files
        except Exception:  # a payload file not written (a full disk): each write on its own, in a transaction
            undo(ops)
            applier.forget()
            return [*refused.values(), *writer.commit_group(conn, ops, log_file)]
        inserts, finals = applier.rows
        seq = writer.journal_seq + 1
        try:
            if inserts or finals:
                # Someone waits for it (a new job): fdatasynced now; else soon (LAZY_SYNC).
                log_file.append(journal.encode(seq, inserts, finals),
                                sync=bool(inserts) or any(op.deferred is not None for op in ops))
        except OSError as e:
            writer.note_broken(log_file)
            error = spool_error(e)
            log.error("spool: journal write of {n} write(s) failed: {error}", n=len(ops), error=error)
            return [*refused.values(), *writer.fail_group(ops, error)]
        if inserts or finals:
            writer.journal_seq = seq
        acked: Results = []
        for i, op in enumerate(ops):
            if op.kind == ADD or op.kind == FINISH or rows_only:  # progress: in order before any read
                op.acked = True
                op.undo = None  # named by the record: kept
                if op.deferred is not None:
                    acked.append((op.deferred, True, values[i]))
        acked.extend(refused.values())
        writer.hand_back(acked)
        if writer.kill_after and inserts and log_file.records >= writer.kill_after:
            time.sleep(KILL_DELAY)  # test only (see KILL_AFTER_JOURNAL_ENV): the acknowledgements sent first
            os.kill(os.getpid(), 9)
        record = journal.Record(seq, inserts, finals)  # in the index's form only if it must be applied again
        if rows_only:
            if not self.rows:
                self.due = time.monotonic() + INDEX_DELAY
            self.rows.append(([rows for _, rows in items if rows is not None],
                              seq if inserts or finals else None, record))
            self.count += len(ops)
            self.ids.update(row[0] for row in inserts)
            return []
        sync = "FULL" if any(op.durable and op.kind is None for op in ops) else "NORMAL"
        try:
            applier.begin(conn, sync)
            try:
                out = applier.apply_items(conn, ops, items, values, False)
            except Exception as e:  # again, one savepoint per write that is not a run of rows
                writer.note_damage(e)
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE")
                out = applier.apply_items(conn, ops, items, values, True)
            if inserts or finals:
                journal.set_seq(conn, seq)
            conn.execute("COMMIT")
        except Exception as e:
            error = self.failed(conn, e, f"{len(ops)} write(s)", [record] if inserts or finals else [])
            return [(op.deferred, False, error) for op in ops if not op.acked]
        writer.batches += 1
        writer.commits_full += 1
        return out

    def failed(self, conn: sqlite3.Connection, e: Exception, what: str, kept: list) -> SpoolError:
        """
        An index transaction failed: roll it back, keep the journal C{kept}
        records to write again, refuse other writes meanwhile; the error as
        the spool reports it.
        """
        writer = self.writer
        writer.note_damage(e)
        error = spool_error(e)
        writer.applier.forget()
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        if not self.unapplied:
            log.error("spool: the index commit of {what} failed ({error}); the journal keeps them and they are "
                      "written into the index every {s:g} s until they can be; until then other writes are "
                      "refused", what=what, error=error, s=RETRY_INTERVAL)
        self.unapplied.extend(kept)
        self.unapplied_error = f"the spool's index cannot be written: {error}"
        return error

    def write(self) -> None:
        """
        The rows acknowledged at the journal and not yet in the index,
        written into it in one transaction; should it fail, their records
        go to L{unapplied}.
        """
        pending, self.rows = self.rows, []
        self.count = 0
        self.ids = set()
        writer = self.writer
        conn = writer.conn
        if not pending or conn is None:
            return
        seqs = [seq for _, seq, _ in pending if seq is not None]
        try:
            writer.applier.begin(conn, "NORMAL")
            records.write_behind(conn, [rows for runs, _, _ in pending for rows in runs])
            if seqs:
                journal.set_seq(conn, seqs[-1])
            conn.execute("COMMIT")
        except Exception as e:
            self.failed(conn, e, f"{len(seqs)} journal record(s)",
                        [record for _, seq, record in pending if seq is not None])
            return
        writer.batches += 1
        writer.commits_full += 1

    def apply_unapplied(self) -> bool:
        """The acknowledged records the index lacks, written into it in order; True once done."""
        writer = self.writer
        conn = writer.conn
        if conn is None:
            return False
        try:
            conn.execute("BEGIN IMMEDIATE")
            journal.apply(conn, self.unapplied)
            conn.execute("COMMIT")
        except Exception as e:
            writer.note_damage(e)
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            self.unapplied_error = f"the spool's index cannot be written: {spool_error(e)}"
            return False
        log.info("spool: {n} journal record(s) written into the index at last", n=len(self.unapplied))
        self.unapplied = []
        writer.batches += 1
        return True

    def sync_journal(self) -> None:
        """The journal's records fdatasynced (those of background final states wait up to LAZY_SYNC)."""
        log_file = self.writer.journal
        assert log_file is not None
        try:
            log_file.sync()
        except OSError as e:
            log.error("spool: the journal's fdatasync failed ({error}): final states of the last jobs may be "
                      "lost at a power loss (those jobs then run again)", error=describe(e))

    def grow_journal(self) -> None:
        """More space given to the journal ahead of its records."""
        log_file = self.writer.journal
        assert log_file is not None
        try:
            log_file.grow()
        except OSError as e:
            log.warn("spool: cannot give the journal more space ahead: {error}", error=describe(e))

    def empty_journal(self) -> None:
        """The index made durable, then the journal emptied (not while records wait for it)."""
        writer = self.writer
        log_file, conn = writer.journal, writer.conn
        if log_file is None or conn is None or not log_file.size or self.unapplied or self.rows:
            return
        try:
            journal.durable_index(conn)
            log_file.emptied()
        except (sqlite3.Error, OSError) as e:
            log.warn("spool: cannot empty the journal yet: {error}", error=spool_error(e))
