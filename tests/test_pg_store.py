"""
What L{rawsvc.spool.pg.PgStore} does beyond the store contract: its schema
(versioned, made once when two nodes open together), chunked payloads,
durable commits, a lost connection (the store says why, refuses, keeps a
final state and writes it once the database is back), and a password that
never shows.
"""

from __future__ import annotations

import os
import threading

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from pg_support import PgServer
from rawsvc.config import SERVICE_OPTIONS, loads
from rawsvc.errors import ConfigError
from rawsvc.job import Job, Payload
from rawsvc.spool.model import SpoolError
from rawsvc.spool.pg import PgStore
from rawsvc.spool.pg_schema import CHUNK, VERSION, describe, migrate
from store_contract import Clock, assert_readable, data_of, make_job

inlineCallbacks = pytest_twisted.inlineCallbacks


@pytest.fixture
def stores():
    made: list[PgStore] = []
    yield made
    for store in reversed(made):
        pytest_twisted.blockon(store.stop())


def new_store(stores, uri, tmp_path, node="n1") -> PgStore:
    from twisted.internet import reactor

    store = PgStore(uri, reactor, str(tmp_path / f"payloads-{len(stores)}"), node=node, clock=Clock())
    stores.append(store)
    return store


# Schema -------------------------------------------------------------------------

def test_two_nodes_migrating_together_make_the_schema_once(pg_server):
    import psycopg

    uri = pg_server.new_database()
    barrier, results, errors = threading.Barrier(4), [], []

    def one() -> None:
        try:
            with psycopg.connect(uri, autocommit=True) as conn:
                barrier.wait()
                results.append(migrate(conn))
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert sorted(results) == [(0, VERSION)] + [(VERSION, VERSION)] * 3  # one made it, the others found it
    assert pg_server.execute(uri, "SELECT version FROM rawsvc_schema") == [(VERSION,)]


@inlineCallbacks
def test_a_database_of_a_newer_rawsvc_is_refused_with_a_readable_reason(pg_server, stores, tmp_path):
    uri = pg_server.new_database()
    store = new_store(stores, uri, tmp_path)
    yield store.open()
    yield store.stop()
    pg_server.execute(uri, "UPDATE rawsvc_schema SET version = %s", (VERSION + 1,))
    with pytest.raises(SpoolError) as opened:
        yield store.open()
    assert "upgrade rawsvc" in str(opened.value)
    assert_readable(store.error)


# Payloads and commits -------------------------------------------------------------

@inlineCallbacks
def test_a_large_payload_is_stored_in_chunks_and_read_back_into_a_file(pg_server, stores, tmp_path):
    uri = pg_server.new_database()
    store = new_store(stores, uri, tmp_path)
    yield store.open()
    size = 2 * CHUNK + 123
    job = make_job(data_of(size), spill_dir=str(tmp_path))
    yield store.add(job, "f")
    rows = pg_server.execute(uri, "SELECT n, length(data) FROM rawsvc_payload_chunks WHERE job_id = %s ORDER BY n",
                             (job.job_id,))
    assert rows == [(0, CHUNK), (1, CHUNK), (2, 123)]
    [record] = yield store.load(job_id=job.job_id)
    assert record.payload is None and record.payload_path.startswith(store.files_dir)
    assert record.payload_bytes() == data_of(size)


@inlineCallbacks
def test_commits_are_synchronous_and_adds_in_one_turn_share_a_commit(pg_server, stores, tmp_path):
    store = new_store(stores, pg_server.new_database(), tmp_path)
    yield store.open()
    setting = yield store.worker.call("work", lambda conn: conn.execute("SHOW synchronous_commit").fetchone()[0])
    assert setting == "on"
    before = store.worker.batches
    from twisted.internet.defer import gatherResults

    yield gatherResults([store.add(make_job(b"%d" % i), "f") for i in range(50)])
    assert store.worker.batches - before < 10  # group commit, not one transaction per job


# A lost connection ---------------------------------------------------------------

@inlineCallbacks
def test_a_lost_database_refuses_writes_keeps_a_final_state_and_writes_it_once_back(tmp_path, stores):
    server = PgServer()
    try:
        server.start()
        uri = server.new_database()
        store = new_store(stores, uri, tmp_path)
        yield store.open()
        job = make_job(b"label")
        yield store.add(job, "f")
        yield deferToThread(server.stop, "immediate")

        with pytest.raises(SpoolError) as lost:  # the first write after the loss finds out
            yield store.add(make_job(b"lost"), "f")
        assert_readable(str(lost.value))
        assert store.error is not None and store.error == str(lost.value)
        assert store.error.startswith("lost the connection to postgresql://postgres@127.0.0.1:")
        store.finish(job.job_id, "done", None, 1, job.variables.snapshot(), ("p:9100", 5), background=True)
        yield store.flush()
        with pytest.raises(SpoolError):
            yield store.add(make_job(b"refused"), "f")  # at once, with the reason
        with pytest.raises(SpoolError):
            yield store.open()  # still down
        assert "Connection refused" in store.error

        yield deferToThread(server.start)
        yield store.open()
        assert store.error is None
        yield store.flush()
        [record] = yield store.load(job_id=job.job_id)
        assert (record.state, record.bytes_delivered) == ("done", 5)  # the kept final state, written
        assert [r.job_id for r in (yield store.query(limit=0))] == [job.job_id]  # nothing of the refused adds
    finally:
        for store in stores:
            yield store.stop()
        stores.clear()
        server.destroy()


@inlineCallbacks
def test_a_final_state_kept_through_an_outage_is_written_at_stop(tmp_path, stores):
    server = PgServer()
    try:
        server.start()
        uri = server.new_database()
        store = new_store(stores, uri, tmp_path)
        yield store.open()
        job = make_job(b"label")
        yield store.add(job, "f")
        yield deferToThread(server.stop, "immediate")
        store.finish(job.job_id, "failed", "no paper", 0, job.variables.snapshot(), None, background=True)
        yield store.flush()
        assert store.error is not None
        yield deferToThread(server.start)
        yield store.stop()  # never reopened: stop tries once more
        assert server.execute(uri, "SELECT state, last_error FROM rawsvc_jobs") == [("failed", "no paper")]
    finally:
        for store in stores:
            yield store.stop()
        stores.clear()
        server.destroy()


# Passwords ----------------------------------------------------------------------

def test_a_database_is_described_without_its_password():
    assert describe("postgresql://rawsvc:s3cret@db.example.com:5433/spool?sslmode=require") == \
        "postgresql://rawsvc@db.example.com:5433/spool?sslmode=require"
    assert describe("host=db user=rawsvc password=s3cret dbname=spool") == "postgresql://rawsvc@db/spool"
    assert "s3cret" not in describe("postgresql://:s3cret@/spool")


@inlineCallbacks
def test_a_failed_open_names_the_database_without_its_password(stores, tmp_path):
    from pg_support import free_port

    store = new_store(stores, f"postgresql://rawsvc:s3cret@127.0.0.1:{free_port()}/spool", tmp_path)
    with pytest.raises(SpoolError):
        yield store.open()
    assert store.error.startswith("cannot open the spool at postgresql://rawsvc@127.0.0.1:")
    assert "s3cret" not in store.error


# Config ---------------------------------------------------------------------------

FLOW = '[[flow]]\nname = "f"\n[[flow.actions]]\ntype = "log"\nmessage = "m"\n'


def test_spool_takes_true_false_or_a_postgresql_uri():
    assert SERVICE_OPTIONS.settings({"spool": "postgresql://u@h:5432/d"}).spool == "postgresql://u@h:5432/d"
    assert SERVICE_OPTIONS.settings({"spool": False}).spool is False
    for bad in ('"sqlite"', '"mysql://u@h/d"'):
        with pytest.raises(ConfigError) as e:
            loads(f"[service]\nspool = {bad}\n" + FLOW)
        assert "key 'spool': must be true, false or a PostgreSQL URI" in str(e.value), str(e.value)
    with pytest.raises(ConfigError) as e:
        loads("[service]\nspool = 1\n" + FLOW)
    assert "key 'spool': must be true or false or a string, not the number 1" in str(e.value)


def test_a_postgresql_spool_builds_a_pg_store(tmp_path):
    trigger = '[[trigger]]\nname = "t"\ntype = "tcp"\nlisten = "tcp:0:interface=127.0.0.1"\nflow = "f"\n'
    config = loads(f'[service]\nstate_dir = "{tmp_path}"\nspool = "postgresql://u:pw@127.0.0.1:1/d"\n' + FLOW + trigger)
    store = config.context.store
    assert isinstance(store, PgStore)
    assert store.where == "postgresql://u@127.0.0.1:1/d"
    assert store.files_dir == str(tmp_path / "pg-payloads")


# Lifetime -------------------------------------------------------------------------

@inlineCallbacks
def test_stop_and_open_in_one_turn_and_stop_twice(pg_server, stores, tmp_path):
    store = new_store(stores, pg_server.new_database(), tmp_path)
    for _ in range(5):  # a new thread each time, never a queue nobody reads
        yield store.open()
        job = make_job(b"x")
        yield store.add(job, "f")
        d = store.stop()
        again = store.stop()
        yield d
        yield again
    yield store.open()
    records = yield store.load()
    assert len(records) == 5  # every job back, adopted from the incarnations that left
    stopping = store.stop()
    with pytest.raises(SpoolError) as e:
        yield store.add(make_job(b"late"), "f")
    assert str(e.value) == "the spool is stopped"
    yield stopping


@inlineCallbacks
def test_a_stop_asked_while_opening_wins(pg_server, stores, tmp_path):
    store = new_store(stores, pg_server.new_database(), tmp_path)
    opening = store.open()
    stopping = store.stop()
    yield opening
    yield stopping
    with pytest.raises(SpoolError) as e:
        yield store.add(make_job(b"late"), "f")
    assert str(e.value) == "the spool is stopped"
    assert not store.worker.running


@inlineCallbacks
def test_memory_does_not_grow_with_job_size(pg_server, stores, tmp_path):
    import tracemalloc

    store = new_store(stores, pg_server.new_database(), tmp_path)
    yield store.open()
    size = 24 << 20
    spill = tmp_path / "incoming"
    spill.mkdir()
    payload = Payload(spool_dir=str(spill), threshold=0)  # as a trigger receives it: piece by piece, to a file
    for i in range(size // CHUNK):
        payload.write(bytes([i % 256]) * CHUNK)
    payload.close()
    job = Job(trigger="t", payload=payload, peer_host="10.0.0.7", peer_port=4242)
    tracemalloc.start()
    try:
        yield store.add(job, "f")
        _, stored_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        [record] = yield store.load(job_id=job.job_id)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert os.path.getsize(record.payload_path) == size
    with open(record.payload_path, "rb") as f:
        assert f.read(CHUNK) == bytes([0]) * CHUNK
    assert stored_peak < 8 * CHUNK and read_peak < 8 * CHUNK, (stored_peak, read_peak)  # not 24 MiB
