"""
A group's writes applied to the spool's SQLite index (writer thread only).

Runs of new jobs, progress and final states are written as one multi-row
statement each (L{records.write_rows}): fewer SQLite calls, so fewer
hand-overs of the GIL to and from the reactor thread.  Their insert and
final-state rows are gathered for the group's journal record as they are
built (L{Applier.rows}); a payload too large for a blob goes into its own
file first.  Should a write fail, the group starts over with a savepoint
per write (L{Applier.one_by_one}), so that it fails alone.  A new job whose
id is stored already is refused before the journal (L{Applier.stored_twice}).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from typing import Any

from rawsvc.spool import records
from rawsvc.spool.files import fsync_dir, unlink, write_file
from rawsvc.spool.ops import ADD, PROGRESS, Op, Results
from rawsvc.spool.schema import SpoolError, spool_error

#: In order: (None, rows) for a run of rows, (index of the write, None) for any other write.
Items = list[tuple[int | None, tuple | None]]


def runs(ops: list[Op]) -> Iterator[tuple[int | None, list[int]]]:
    """
    The group's writes in order: C{(None, run)} for each run of row writes
    (the indexes of consecutive ops with a kind), C{(i, [])} for each other
    op.  A run is yielded before the op that ends it.
    """
    run: list[int] = []
    for i, op in enumerate(ops):
        if op.kind is not None:
            run.append(i)
            continue
        if run:
            yield None, run
            run = []
        yield i, []
    if run:
        yield None, run


class Applier:
    """The rows of a group's writes, and how they are written into the index; see the module docstring."""

    def __init__(self, files_dir: str) -> None:
        self.files_dir = files_dir
        self.variables = records.LeanVariables()
        #: This group's insert rows and final-state rows, for its journal record.
        self.rows: tuple[list[tuple], list[tuple]] = ([], [])
        #: Payload files written into C{files_dir} since its last fsync (L{sync_files}).
        self.dir_dirty = False
        #: No job id in the index (or acknowledged for it) sorts after this one (None: not known now);
        #: see L{stored_twice}.
        self.newest: str | None = None
        #: The connection's C{PRAGMA synchronous} as last set ("": not known).
        self.synchronous = ""

    def begin(self, conn: sqlite3.Connection, sync: str) -> None:
        """A transaction begun, to be committed with C{synchronous=sync} (C{FULL}: fsynced; C{NORMAL}: not)."""
        if sync != self.synchronous:
            conn.execute(f"PRAGMA synchronous={sync}")
            self.synchronous = sync
        conn.execute("BEGIN IMMEDIATE")

    def forget(self) -> None:
        """A group failed: what was last written of each job's variables is not known any more."""
        self.variables.forget()

    def sync_files(self) -> None:
        """The payload files written since the last call made durable: before the record that names them."""
        if self.dir_dirty:
            fsync_dir(self.files_dir)
            self.dir_dirty = False

    def stored_twice(self, conn: sqlite3.Connection, ops: list[Op],
                     behind: set[str]) -> dict[Op, tuple[Any, bool, Any]]:
        """
        The new jobs whose id the index holds already (or C{behind}, the ids
        acknowledged and not yet in the index, or an earlier job of the
        group has), with their failure: checked before the journal, as the
        index's C{UNIQUE} constraint would after it.  An id that sorts after
        every id the index holds or was given (L{newest}) is new without a
        look: this process's ids grow with time (L{rawsvc.job.new_job_id}),
        so only ids from elsewhere (a resumed or copied job) are looked up.
        """
        ids = [op.args[0].job_id for op in ops if op.kind == ADD]
        if not ids:
            return {}
        newest = self.newest
        if newest is None:
            top = conn.execute("SELECT max(job_id) FROM jobs").fetchone()[0]
            newest = "" if top is None else top if isinstance(top, str) else None  # a blob sorts after any text
        older = newest is None
        if newest is not None:
            for job_id in ids:
                if job_id > newest:
                    newest = job_id
                else:
                    older = True
            self.newest = newest
        if not older:
            return {}
        held: set[str] = set()
        for start in range(0, len(ids), 900):
            chunk = ids[start:start + 900]
            sql = f"SELECT job_id FROM jobs WHERE job_id IN ({', '.join('?' * len(chunk))})"
            held.update(row[0] for row in conn.execute(sql, chunk))
        held.update(job_id for job_id in ids if job_id in behind)  # acknowledged, the index behind
        if not held and len(set(ids)) == len(ids):
            return {}
        refused: dict[Op, tuple[Any, bool, Any]] = {}
        error = spool_error(sqlite3.IntegrityError("UNIQUE constraint failed: jobs.job_id"))
        for op in ops:
            if op.kind == ADD:
                job_id = op.args[0].job_id
                if job_id in held:
                    refused[op] = (op.deferred, False, error)
                held.add(job_id)
        return refused

    def items(self, ops: list[Op], values: list[Any]) -> Items:
        """
        The group's writes in order, each run of rows built (see L{run_rows});
        the values of new jobs (their payload file, if any) into C{values}.
        """
        return [(None, self.run_rows(ops, run, values)) if i is None else (i, None) for i, run in runs(ops)]

    def apply_items(self, conn: sqlite3.Connection, ops: list[Op], items: Items, values: list[Any],
                    savepoints: bool) -> Results:
        """
        (In a transaction) L{items}' writes, in order; the results of those
        not acknowledged yet.  With C{savepoints}, a write other than a run
        of rows fails alone; a run that fails fails them all.
        """
        failed: set[int] = set()
        for i, rows in items:
            if rows is not None:
                records.write_rows(conn, *rows)
                continue
            assert i is not None
            op = ops[i]
            assert op.fn is not None  # an op without a kind has its fn
            self.newest = None  # it may add jobs: L{stored_twice} looks again
            if not savepoints:
                values[i] = op.fn(conn, *op.args)
                continue
            try:
                conn.execute("SAVEPOINT op")
                values[i] = op.fn(conn, *op.args)
                conn.execute("RELEASE op")
            except Exception as e:
                if not rollback_to_savepoint(conn):
                    raise  # the whole transaction is gone (a full disk)
                values[i] = spool_error(e)
                failed.add(i)
        return [(op.deferred, i not in failed, values[i]) for i, op in enumerate(ops)
                if not op.acked and (op.deferred is not None or i in failed)]

    def one_by_one(self, conn: sqlite3.Connection, ops: list[Op]) -> Results | SpoolError:
        """Start the group over, one savepoint per write; a L{SpoolError} when all are lost."""
        undo(ops)
        self.variables.forget()
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.execute("BEGIN IMMEDIATE")
        out: Results = []
        inserts, finals = self.rows = ([], [])
        for op in ops:
            had = len(inserts), len(finals)
            try:
                conn.execute("SAVEPOINT op")
                value = self.apply_all(conn, [op])[0]
                conn.execute("RELEASE op")
            except Exception as e:
                del inserts[had[0]:], finals[had[1]:]
                if op.undo is not None:
                    op.undo()
                    op.undo = None
                if not rollback_to_savepoint(conn):
                    # SQLite rolled the whole transaction back (a full disk
                    # does): every write of the group is lost, so all fail.
                    return spool_error(e)
                out.append((op.deferred, False, spool_error(e)))
            else:
                out.append((op.deferred, True, value))
        return out

    def apply_all(self, conn: sqlite3.Connection, ops: list[Op]) -> list[Any]:
        """Every write, in order, with runs of new jobs, progress and final states one statement each."""
        values: list[Any] = [None] * len(ops)
        for i, run in runs(ops):
            if i is None:
                records.write_rows(conn, *self.run_rows(ops, run, values))
                continue
            op = ops[i]
            assert op.fn is not None  # an op without a kind (not a row of a run) has its fn
            self.newest = None  # it may add jobs: L{stored_twice} looks again
            values[i] = op.fn(conn, *op.args)
        return values

    def run_rows(self, ops: list[Op], run: list[int], values: list[Any]) -> tuple[list, list, list]:
        """
        The rows of a run (also added to the group's journal rows, L{rows}):
        New jobs, then progress, then final states.  Within a run only a
        job's latest progress matters, and none at all when its final state
        is in the run too (before it: the bytes each one delivered add up;
        after it: ignored, as the statement of a later batch ignores it).
        """
        lean = self.variables
        inserts = []
        progress: dict[str, list] = {}
        finals: dict[str, list] = {}
        for i in run:
            op = ops[i]
            if op.kind == ADD:
                job, flow, variables, now = op.args
                if variables is None:
                    variables = job.variables.snapshot()
                blob, path = self._payload(job)
                if path is not None:
                    values[i] = path
                    op.undo = lambda path=path: unlink(path)
                inserts.append(records.insert_params(job, flow, now, lean.for_insert(job, variables), blob, path))
                continue
            if op.kind == PROGRESS:
                job_id, index, variables, delivery, now = op.args
                latest = [index, variables, now]
            else:
                job_id, state, error, index, variables, delivery, now = op.args
                latest = [state, error, index, variables, now]
            dest, sent = delivery or (None, 0)
            if op.kind == PROGRESS and job_id in finals:
                continue  # progress of a finished job changes nothing (as in a later batch)
            earlier = progress.pop(job_id, None) or finals.pop(job_id, None)
            if earlier is not None:
                dest, sent = dest or earlier[-2], sent + earlier[-1]
            (progress if op.kind == PROGRESS else finals)[job_id] = latest + [dest, sent]
        progress_rows = [
            records.progress_params(job_id, index, lean.for_update(job_id, variables, False), now, dest, sent)
            for job_id, (index, variables, now, dest, sent) in progress.items()
        ]
        final_rows = [
            records.finish_params(job_id, state, error, index, lean.for_update(job_id, variables, True), dest, sent, now)
            for job_id, (state, error, index, variables, now, dest, sent) in finals.items()
        ]
        journaled_inserts, journaled_finals = self.rows
        journaled_inserts.extend(inserts)
        for row, (_, _, _, variables, _, _, _) in zip(final_rows, finals.values()):
            # Plain values for marshal (a state is a StrEnum); variables unchanged since the
            # last write (None in the index row), which the journal may not hold: whole.
            journaled_finals.append((row[0], str(row[1]), None if row[2] is None else str(row[2]), row[3],
                                     dict(variables) if row[4] is None else row[4]) + row[5:])
        return inserts, progress_rows, final_rows

    def _payload(self, job: Any) -> tuple[bytes | None, str | None]:
        """The payload as a blob, or (larger) in its own file, fsynced."""
        payload = job.payload
        if payload.in_memory and payload.size <= records.BLOB_MAX:
            return payload.bytes(), None
        target = os.path.join(self.files_dir, f"{job.job_id}.job")
        write_file(payload.bytes() if payload.in_memory else payload.path, target)
        self.dir_dirty = True
        return None, target


def undo(ops: list[Op]) -> None:
    """What the writes did outside the transaction (a payload file written) undone, once."""
    for op in ops:
        if op.undo is not None:
            op.undo()
            op.undo = None


def rollback_to_savepoint(conn: sqlite3.Connection) -> bool:
    """Undo one write; False when the whole transaction is already gone."""
    if not conn.in_transaction:
        return False
    try:
        conn.execute("ROLLBACK TO op")
        conn.execute("RELEASE op")
        return True
    except sqlite3.Error:
        return False
