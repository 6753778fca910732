"""
The index written behind the journal (L{records.write_behind}): a job whose
new row is among the rows written is inserted as its later rows leave it,
and the index ends exactly as the rows written one run after another leave it.
"""

from __future__ import annotations

import sqlite3

import pytest

from rawsvc.spool import records
from rawsvc.spool.schema import COLUMNS, migrate


def _index() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.row_factory = sqlite3.Row
    migrate(conn)
    return conn


def _insert(job_id: str, now: float = 1.0, variables: str = '{"a": "1"}') -> tuple:
    return (job_id, "t", "f", "127.0.0.1", 9100, "utf-8", 3, 0.5, now, now, now, variables, b"abc", None)


def _progress(job_id: str, index: int, now: float, variables: str | None = None, dest: str | None = None,
              sent: int = 0) -> tuple:
    return records.progress_params(job_id, index, variables, now, dest, sent)


def _final(job_id: str, state: str, index: int, now: float, variables: str | None = None, dest: str | None = None,
           sent: int = 0, error: str | None = None) -> tuple:
    return records.finish_params(job_id, state, error, index, variables, dest, sent, now)


def _both(runs: list[tuple[list, list, list]], before: list[tuple] = ()) -> tuple[list, list]:
    """The index's rows after C{runs} written behind, and written run by run (after the rows C{before})."""
    out = []
    for write in (lambda conn: records.write_behind(conn, runs),
                  lambda conn: [records.write_rows(conn, *rows) for rows in runs]):
        conn = _index()
        if before:
            records.write_rows(conn, list(before), [], [])
        write(conn)
        out.append([tuple(r) for r in conn.execute(f"SELECT {', '.join(COLUMNS)}, payload FROM jobs ORDER BY seq")])
    return out[0], out[1]


def test_a_job_finished_within_the_delay_is_one_row_as_its_insert_and_final_state_leave_it():
    runs = [([_insert("j1")], [], []),
            ([], [], [_final("j1", "done", 2, 2.0, '{"a": "2"}', "printer:9100", 3)])]
    behind, in_order = _both(runs)
    assert behind == in_order
    [row] = behind
    assert row[COLUMNS.index("state")] == "done" and row[COLUMNS.index("bytes_delivered")] == 3


def test_progress_between_the_insert_and_the_final_state_adds_its_bytes_and_keeps_its_destination():
    runs = [([_insert("j1"), _insert("j2")], [], []),
            ([], [_progress("j1", 1, 2.0, '{"a": "p"}', "p1:9100", 5), _progress("j2", 1, 2.0)], []),
            ([_insert("j3")], [], [_final("j1", "done", 2, 3.0, None, None, 7)]),
            ([], [_progress("j2", 2, 4.0, None, None, 2)], [_final("j3", "failed", 0, 4.0, dest="", error="no route")])]
    behind, in_order = _both(runs)
    assert behind == in_order


def test_progress_after_a_final_state_leaves_the_job_finished():
    runs = [([_insert("j1")], [], [_final("j1", "done", 1, 2.0)]),
            ([], [_progress("j1", 5, 3.0, '{"b": "late"}', "late:1", 9)], [])]
    behind, in_order = _both(runs)
    assert behind == in_order


def test_a_job_stored_before_is_updated_as_run_by_run():
    before = [_insert("old")]
    runs = [([_insert("j1")], [_progress("old", 1, 2.0, None, "d:1", 4)], []),
            ([], [], [_final("old", "done", 2, 3.0, '{"x": "y"}', None, 1), _final("j1", "done", 1, 3.0)])]
    behind, in_order = _both(runs, before)
    assert behind == in_order


def test_a_final_state_written_before_its_jobs_insert_is_written_in_order():
    runs = [([], [], [_final("j1", "done", 1, 2.0)]), ([_insert("j1")], [], [])]
    behind, in_order = _both(runs)
    assert behind == in_order
    assert behind[0][COLUMNS.index("state")] == "running"


def test_a_job_id_inserted_twice_fails_as_run_by_run():
    runs = [([_insert("j1")], [], [_final("j1", "done", 1, 2.0)]), ([_insert("j1")], [], [])]
    with pytest.raises(sqlite3.IntegrityError):
        records.write_behind(_index(), runs)
