"""
How the spool writes: progress coalesced within a batch, variables written
lean (and not at all when unchanged), background writes, the schema's
migration; each time what a restart or the CLI reads back.
"""

from __future__ import annotations

import json
import sqlite3

import pytest
import pytest_twisted
from zope.interface import implementer

from rawsvc.flow import Flow
from rawsvc.interfaces import IAction
from rawsvc.job import Job, Payload
from rawsvc.spool.records import full_variables
from rawsvc.spool.sink import SpoolSink
from rawsvc.spool.schema import UNFINISHED_SQL
from rawsvc.spool.store import Store, db_path


@pytest.fixture(scope="module", autouse=True)
def reactor_running():
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    pytest_twisted.blockon(deferLater(reactor, 0, lambda: None))


@implementer(IAction)
class Record:
    type_name = "record"

    def __init__(self, sets: dict[str, str] | None = None) -> None:
        self.seen: list[str] = []
        self.sets = sets or {}

    def run(self, job):
        self.seen.append(job.job_id)
        job.variables.update(self.sets)
        return None


def job(data: bytes = b"label", **kw) -> Job:
    payload = Payload(data)
    payload.close()
    return Job(trigger="t", payload=payload, peer_host="10.0.0.7", peer_port=4242, **kw)


def row(state_dir, job_id: str) -> sqlite3.Row:
    conn = sqlite3.connect(db_path(str(state_dir)))
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    finally:
        conn.close()


@pytest.fixture
def store(tmp_path, reactor):
    s = Store(str(tmp_path), reactor)
    s.start()
    pytest_twisted.blockon(s.open())
    yield s
    pytest_twisted.blockon(s.stop())


def run_sink(state_dir, flows, reactor) -> SpoolSink:
    sink = SpoolSink(flows, Store(str(state_dir), reactor), reactor)
    sink.service.stop_grace = 0.05
    sink.service.startService()
    return sink


@pytest_twisted.inlineCallbacks
def test_progress_of_one_batch_keeps_the_latest_action_and_adds_up_the_bytes(tmp_path, store):
    j = job()
    yield store.add(j, "f")
    store.progress(j.job_id, 1, {**j.variables.snapshot(), "first": "1"}, ("printer:9100", 10), background=True)
    store.progress(j.job_id, 2, {**j.variables.snapshot(), "second": "2"}, ("printer:9100", 5), background=True)
    yield store.flush()
    r = row(tmp_path, j.job_id)
    assert (r["state"], r["action_index"], r["bytes_delivered"], r["destination"]) == ("running", 2, 15, "printer:9100")
    assert json.loads(r["variables"])["second"] == "2"


@pytest_twisted.inlineCallbacks
def test_a_restart_resumes_at_the_action_of_the_latest_coalesced_progress(tmp_path, store, reactor):
    j = job()
    yield store.add(j, "f")
    for index in (1, 2):
        store.progress(j.job_id, index, {**j.variables.snapshot(), f"after_{index}": "yes"}, None, background=True)
    yield store.stop()
    actions = [Record(), Record(), Record()]
    sink = run_sink(tmp_path, {"f": Flow("f", actions)}, reactor)
    try:
        yield sink.service.started
        yield sink.drain()
        yield sink.drain_writes()
    finally:
        yield sink.service.stopService()
    assert [a.seen for a in actions] == [[], [], [j.job_id]]
    assert row(tmp_path, j.job_id)["state"] == "done"
    store.start()  # for the fixture's stop


@pytest_twisted.inlineCallbacks
def test_progress_and_final_state_in_one_batch_end_in_the_final_state(tmp_path, store):
    j = job()
    yield store.add(j, "f")
    variables = j.variables.snapshot()
    store.progress(j.job_id, 1, variables, ("printer:9100", 7), background=True)
    store.finish(j.job_id, "done", None, 2, variables, ("printer:9100", 3), background=True)
    store.progress(j.job_id, 1, variables, None, background=True)  # late: never undoes the final state
    yield store.flush()
    r = row(tmp_path, j.job_id)
    assert (r["state"], r["action_index"], r["bytes_delivered"]) == ("done", 2, 10)
    assert r["finished_at"] is not None


@pytest_twisted.inlineCallbacks
def test_variables_the_columns_give_back_are_not_stored_but_shown(tmp_path, store):
    j = job(extra={"pjl_job_name": "label 1"})
    yield store.add(j, "f")
    yield store.flush()  # acknowledged at the journal's fdatasync: the index just behind
    r = row(tmp_path, j.job_id)
    stored = json.loads(r["variables"])
    assert "job_id" not in stored and "peer_host" not in stored and "size" not in stored
    assert stored["pjl_job_name"] == "label 1"
    assert stored["received_at"] == j.variables["received_at"]
    shown = full_variables(r)
    assert {k: shown[k] for k in ("job_id", "trigger", "peer_host", "peer_port", "size")} == {
        "job_id": j.job_id, "trigger": "t", "peer_host": "10.0.0.7", "peer_port": "4242", "size": "5",
    }


@pytest_twisted.inlineCallbacks
def test_a_variable_a_trigger_set_unlike_its_column_is_kept(tmp_path, store):
    j = job(extra={"peer_host": "printer-7.example"})
    yield store.add(j, "f")
    yield store.flush()  # acknowledged at the journal's fdatasync: the index just behind
    assert json.loads(row(tmp_path, j.job_id)["variables"])["peer_host"] == "printer-7.example"


@pytest_twisted.inlineCallbacks
def test_unchanged_variables_are_not_written_again(tmp_path, store):
    j = job()
    yield store.add(j, "f")
    changed = {**j.variables.snapshot(), "reply": "ACK", "action_index": "0"}
    store.progress(j.job_id, 1, changed, None, background=True)
    yield store.flush()
    before = row(tmp_path, j.job_id)["variables"]
    conn = sqlite3.connect(db_path(str(tmp_path)))
    conn.execute("UPDATE jobs SET variables = '{\"marker\": \"kept\"}' WHERE job_id = ?", (j.job_id,))
    conn.commit()
    conn.close()
    store.finish(j.job_id, "done", None, 2, {**changed, "action_index": "1"}, None, background=True)
    yield store.flush()
    r = row(tmp_path, j.job_id)
    assert json.loads(before)["reply"] == "ACK"
    assert (r["state"], r["variables"]) == ("done", '{"marker": "kept"}')  # NULL: the row kept its value


@pytest_twisted.inlineCallbacks
def test_a_resumed_job_has_its_variables_back_from_columns_and_json(tmp_path, reactor):
    seen = {}

    @implementer(IAction)
    class Look:
        type_name = "look"

        def run(self, j):
            seen.update(j.variables.snapshot())

    first = run_sink(tmp_path, {"f": Flow("f", [Record(), Record()])}, reactor)
    j = job(extra={"pjl_job_name": "label 1"})
    # Stored, and its progress after action 0 (which saved a reply), then a stop before action 1.
    yield first.service.started
    yield first.store.add(j, "f")
    first.store.progress(j.job_id, 1, {**j.variables.snapshot(), "reply": "ACK 1"}, None, background=True)
    yield first.service.stopService()

    second = run_sink(tmp_path, {"f": Flow("f", [Record(), Look()])}, reactor)
    try:
        yield second.service.started
        yield second.drain()
    finally:
        yield second.service.stopService()
    for name, value in {"job_id": j.job_id, "trigger": "t", "peer_host": "10.0.0.7", "peer_port": "4242",
                        "size": "5", "pjl_job_name": "label 1", "reply": "ACK 1",
                        "received_at": j.variables["received_at"]}.items():
        assert seen[name] == value, name


@pytest_twisted.inlineCallbacks
def test_an_older_spool_loses_the_indexes_no_query_needs(tmp_path, reactor):
    conn = sqlite3.connect(db_path(str(tmp_path)))
    conn.executescript("""
        CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL UNIQUE,
            trigger TEXT NOT NULL, flow TEXT NOT NULL, state TEXT NOT NULL, peer_host TEXT NOT NULL DEFAULT '',
            peer_port INTEGER NOT NULL DEFAULT 0, encoding TEXT NOT NULL DEFAULT 'utf-8',
            size INTEGER NOT NULL DEFAULT 0, received_at REAL NOT NULL, queued_at REAL NOT NULL,
            started_at REAL, updated_at REAL NOT NULL, finished_at REAL,
            action_index INTEGER NOT NULL DEFAULT 0, attempt INTEGER NOT NULL DEFAULT 0, last_error TEXT,
            destination TEXT, bytes_delivered INTEGER NOT NULL DEFAULT 0,
            variables TEXT NOT NULL DEFAULT '{}', payload BLOB, payload_path TEXT);
        CREATE INDEX jobs_by_state ON jobs (state, seq);
        CREATE INDEX jobs_by_finish ON jobs (finished_at);
    """)
    conn.close()
    store = Store(str(tmp_path), reactor)
    store.start()
    try:
        yield store.open()
    finally:
        yield store.stop()
    conn = sqlite3.connect(db_path(str(tmp_path)))
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    plan = conn.execute(
        f"EXPLAIN QUERY PLAN SELECT * FROM jobs WHERE {UNFINISHED_SQL} ORDER BY seq"
    ).fetchall()
    conn.close()
    assert "jobs_by_state" not in names and "jobs_by_finish" not in names
    assert "jobs_unfinished" in names
    assert "jobs_unfinished" in " ".join(str(r[-1]) for r in plan)


def test_variables_unchanged_but_for_the_action_index_are_not_written_again():
    from rawsvc.spool.records import LeanVariables

    lean = LeanVariables()
    j = job()
    variables = j.variables.snapshot()
    lean.for_insert(j, variables)
    assert lean.for_update(j.job_id, {**variables, "action_index": "3"}, False) is None
    assert lean.for_update(j.job_id, {k: v for k, v in variables.items() if k != "action_index"}, True) is None


def test_a_changed_variable_is_written_lean_at_the_final_state():
    from rawsvc.spool.records import LeanVariables

    lean = LeanVariables()
    j = job()
    variables = j.variables.snapshot()
    lean.for_insert(j, variables)
    written = lean.for_update(j.job_id, {**variables, "reply": "OK", "action_index": "1"}, True)
    assert written is not None and json.loads(written)["reply"] == "OK" and "job_id" not in json.loads(written)
