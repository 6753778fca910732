"""The console's job list reads one page, not the spool: checked on a spool of 1,000,000 jobs."""

from __future__ import annotations

import sqlite3

import pytest

from rawsvc.spool import browse
from rawsvc.spool.schema import connect, migrate

N = 1_000_000


@pytest.fixture(scope="module")
def spool(tmp_path_factory):
    path = tmp_path_factory.mktemp("million") / "spool.db"
    conn = connect(str(path))
    migrate(conn)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    # Generated in SQL (a Python loop of 1,000,000 rows takes most of a minute on a busy machine).
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
        " INSERT INTO jobs (job_id, trigger, flow, state, received_at, queued_at, updated_at, destination, variables)"
        " SELECT printf('job-%07d', i), CASE i % 2 WHEN 1 THEN 'front' ELSE 'back' END, 'f',"
        " CASE i % 5 WHEN 3 THEN 'failed' WHEN 4 THEN 'cancelled' ELSE 'done' END,"
        " 1e9 + i, 1e9 + i, 1e9 + i, '10.0.0.' || (i % 3) || ':9100', '{\"order\": \"' || i || '\"}' FROM n",
        (N - 1,),
    )
    conn.execute("COMMIT")
    yield conn
    conn.close()


def steps(conn: sqlite3.Connection, f) -> tuple[object, int]:
    """C{f()}'s result and how many thousand SQLite VM steps it took (a measure of rows visited, not time)."""
    count = [0]

    def tick() -> int:
        count[0] += 1
        return 0

    conn.set_progress_handler(tick, 1000)
    try:
        return f(), count[0]
    finally:
        conn.set_progress_handler(None, 0)


def test_the_first_page_and_a_page_deep_in_the_spool_cost_the_same_few_rows(spool):
    first, cost_first = steps(spool, lambda: browse.page_jobs(spool, limit=50))
    assert [r["job_id"] for r in first[:2]] == ["job-0999999", "job-0999998"] and len(first) == 51
    cursor = 500_000
    deep, cost_deep = steps(spool, lambda: browse.page_jobs(spool, before=cursor, limit=50))
    assert deep[0]["seq"] == cursor - 1
    assert cost_first < 50 and cost_deep < 50  # a full scan of 1,000,000 rows takes tens of thousands


def test_filters_walk_newest_first_and_stop_at_the_page_end(spool):
    rows, cost = steps(spool, lambda: browse.page_jobs(
        spool, states=("failed",), triggers=("front",), destinations=("10.0.0.1:9100",), limit=20))
    assert len(rows) == 21 and {(r["state"], r["trigger"], r["destination"]) for r in rows} == {
        ("failed", "front", "10.0.0.1:9100")}
    assert cost < 200


def test_text_and_time_range(spool):
    rows = browse.page_jobs(spool, text='"order": "999990"', limit=5)
    assert [r["job_id"] for r in rows] == ["job-0999990"]
    rows = browse.page_jobs(spool, text="job-09999", limit=3)  # in the id; newest first
    assert [r["job_id"] for r in rows] == ["job-0999999", "job-0999998", "job-0999997", "job-0999996"]
    rows = browse.page_jobs(spool, since=1e9 + 10, until=1e9 + 20, before=30, limit=50)
    assert [r["seq"] for r in rows] == list(range(20, 10, -1))


def test_the_plan_walks_the_primary_key(spool):
    plan = " ".join(r[3] for r in spool.execute(
        "EXPLAIN QUERY PLAN SELECT seq FROM jobs WHERE state IN ('failed') AND seq < 5 ORDER BY seq DESC LIMIT 51"))
    assert "INTEGER PRIMARY KEY" in plan and "TEMP B-TREE" not in plan
