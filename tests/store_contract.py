"""
The contract of L{rawsvc.interfaces.IJobStore}, as tests every engine must pass.

Not collected by itself (no C{test_} prefix).  To check an engine, subclass
L{StoreContract} in a test module and fill in its hooks::

    from tests.store_contract import StoreContract

    class TestMyStore(StoreContract):
        durable = True                        # False: it forgets at a restart

        def make_store(self, path, clock):
            # A new store, not opened, empty, all of its own: keep its files
            # under `path` (a fresh folder), read time from `clock()`.
            return MyStore(...)

        def reopen(self, store):
            # Another store object over the same jobs as `store` (already
            # stopped): the same node restarted, or a second process.
            return MyStore(...)

        def broken_store(self, path, clock):
            # A store whose open() fails (say, a server nobody listens on).
            return MyStore(...)

C{tests/test_store_sqlite.py} (SQLite) and C{tests/test_store_memory.py}
(L{rawsvc.spool.memory.MemoryStore}) are two such modules.

B{The next engine (PostgreSQL).}  Start the server once per module with a
fixture of the subclass (C{initdb}/C{pg_ctl} as user C{postgres} on a free
loopback port: see PEERS.md), and let C{make_store} create a database (or
schema) of its own per call, so tests never see each other's jobs;
C{path} may hold the socket folder or go unused.  C{reopen} connects again
to the same database as the same node: a clean C{stop} lets its jobs go,
so the new store (the only live node) must find them in C{load()} as a
restart does.  C{broken_store} points at a port nothing listens on.  A
subclass may add tests of its own beside the contract's (claims, leases).

Every test gets a new L{Clock} (C{self.clock}) at L{Clock.START}; a store
made with it records those times, so tests move time instead of sleeping.
Stores made through L{StoreContract.new_store} and
L{StoreContract.restart} are stopped after the test.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.defer import gatherResults
from zope.interface.verify import verifyObject

from rawsvc.interfaces import IJobStore
from rawsvc.job import Job, Payload
from rawsvc.spool.model import FINISHED, UNFINISHED, SpoolError, StoredJob
from rawsvc.spool.records import BLOB_MAX

inlineCallbacks = pytest_twisted.inlineCallbacks

#: Payload sizes every engine must give back exactly: empty, tiny, around
#: SQLite's inline limit, and a few MiB.
SIZES = (0, 1, 255, BLOB_MAX, BLOB_MAX + 1, 3 << 20)


class Clock:
    """The time a store reads: C{clock()}; moved by the test with L{advance}."""

    START = 1_700_000_000.0

    def __init__(self) -> None:
        self.now = self.START

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def data_of(size: int, seed: int = 0) -> bytes:
    """C{size} bytes using every byte value (NUL, CR, LF, 0xFF ...)."""
    block = bytes((i * 7 + seed) % 256 for i in range(256))
    return (block * (size // 256 + 1))[:size]


def make_job(data: bytes = b"label", trigger: str = "t", spill_dir: str | None = None, **extra: str) -> Job:
    """A job as a trigger hands it over; C{spill_dir}: its payload in a temporary file there."""
    if spill_dir is None:
        payload = Payload(data)
    else:
        payload = Payload(spool_dir=spill_dir, threshold=0)
        payload.write(data)
    payload.close()
    return Job(trigger=trigger, payload=payload, peer_host="10.0.0.7", peer_port=4242, extra=dict(extra))


def comparable(variables: dict[str, str]) -> dict[str, str]:
    """Variables as the contract compares them: C{action_index} is the record's field, not a variable."""
    return {k: v for k, v in variables.items() if k != "action_index"}


def assert_readable(text: Any) -> None:
    """A message for people: text, no traceback, no Python repr."""
    assert isinstance(text, str) and text.strip(), text
    for sign in ("Traceback", "Error(", "<", "\\n", "b'"):
        assert sign not in text, text


class StoreContract:
    """See the module docstring.  Subclasses set the hooks; the tests are here."""

    #: False for an engine that keeps nothing across a restart: the tests
    #: that restart it are skipped.
    durable = True

    # Hooks ------------------------------------------------------------------

    def make_store(self, path: Any, clock: Clock) -> Any:
        raise NotImplementedError

    def reopen(self, store: Any) -> Any:
        raise NotImplementedError

    def broken_store(self, path: Any, clock: Clock) -> Any:
        raise NotImplementedError

    # Helpers ----------------------------------------------------------------

    @pytest.fixture(autouse=True)
    def _contract(self, tmp_path):
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        pytest_twisted.blockon(deferLater(reactor, 0, lambda: None))  # the reactor runs
        self.tmp_path = tmp_path
        self.clock = Clock()
        self.stores: list[Any] = []
        yield
        for store in reversed(self.stores):
            pytest_twisted.blockon(store.stop())

    def spill_dir(self) -> str:
        path = str(self.tmp_path / "incoming")
        os.makedirs(path, exist_ok=True)
        return path

    @defer.inlineCallbacks
    def new_store(self):
        """A new store, open."""
        store = self.make_store(self.tmp_path / "store", self.clock)
        self.stores.append(store)
        yield store.open()
        return store

    @defer.inlineCallbacks
    def restart(self, store):
        """Stop C{store}; a store reopened over its jobs, open (durable engines only)."""
        if not self.durable:
            pytest.skip("this engine keeps nothing across a restart (durable = False)")
        yield store.stop()
        again = self.reopen(store)
        self.stores.append(again)
        yield again.open()
        return again

    @defer.inlineCallbacks
    def one(self, store, job_id: str):
        """The record of C{job_id}."""
        found = yield store.load(job_id=job_id)
        assert len(found) == 1, found
        return found[0]

    @defer.inlineCallbacks
    def added(self, store, *jobs: Job, flow: str = "f"):
        """Add C{jobs} together (one reactor turn) and wait for all."""
        results = yield gatherResults([store.add(j, flow) for j in jobs])
        return results

    # Lifetime ---------------------------------------------------------------

    @inlineCallbacks
    def test_the_store_provides_ijobstore(self):
        store = yield self.new_store()
        assert verifyObject(IJobStore, store)

    @inlineCallbacks
    def test_open_names_where_the_jobs_are_kept_and_clears_error(self):
        store = self.make_store(self.tmp_path / "store", self.clock)
        self.stores.append(store)
        where = yield store.open()
        assert isinstance(where, str) and where
        assert store.error is None
        again = yield store.open()  # an open store: fires again
        assert again == where

    @inlineCallbacks
    def test_a_failing_open_sets_error_and_add_fails_with_a_readable_message(self):
        store = self.broken_store(self.tmp_path / "broken", self.clock)
        self.stores.append(store)
        with pytest.raises(SpoolError) as opened:
            yield store.open()
        assert_readable(store.error)
        assert str(opened.value) == store.error
        with pytest.raises(SpoolError) as added:
            yield store.add(make_job(), "f")
        assert_readable(str(added.value))
        with pytest.raises(SpoolError):
            yield store.load()

    @inlineCallbacks
    def test_writes_after_stop_fail_saying_the_spool_is_stopped(self):
        store = yield self.new_store()
        yield store.stop()
        with pytest.raises(SpoolError) as added:
            yield store.add(make_job(), "f")
        assert str(added.value) == "the spool is stopped"
        assert store.progress("x", 1, {}, None, background=True) is None  # logged, not raised
        yield store.flush()  # fires at once

    @inlineCallbacks
    def test_stop_then_open_again_keeps_every_job(self):
        store = yield self.new_store()
        a, b = make_job(b"a"), make_job(b"b")
        yield self.added(store, a, b)
        yield store.finish(b.job_id, "done", None, 1, b.variables.snapshot(), None)
        yield store.stop()
        yield store.open()
        assert [r.job_id for r in (yield store.load())] == [a.job_id]
        assert (yield self.one(store, b.job_id)).state == "done"

    @inlineCallbacks
    def test_flush_of_a_store_never_opened_fires(self):
        store = self.make_store(self.tmp_path / "store", self.clock)
        self.stores.append(store)
        assert (yield store.flush()) is None

    # add: durable, byte-identical -----------------------------------------------

    @inlineCallbacks
    def test_an_added_job_is_running_at_action_0_attempt_1(self):
        store = yield self.new_store()
        j = make_job(b"label", trigger="orders")
        assert j.state != "running"
        yield store.add(j, "label-flow")
        [r] = yield store.load()
        assert isinstance(r, StoredJob)
        assert (r.job_id, r.trigger, r.flow, r.state, r.action_index, r.attempt) == (
            j.job_id, "orders", "label-flow", "running", 0, 1)
        assert (r.peer_host, r.peer_port, r.encoding, r.size, r.received_at) == (
            "10.0.0.7", 4242, "utf-8", 5, j.received_at)
        assert r.queued_at == r.started_at == r.updated_at == Clock.START
        assert r.finished_at is None and r.last_error is None and r.next_try is None
        assert (r.destination, r.bytes_delivered, r.delivery_attempt) == (None, 0, 0)

    @pytest.mark.parametrize("size", SIZES)
    @inlineCallbacks
    def test_a_payload_comes_back_byte_identical(self, size):
        store = yield self.new_store()
        j = make_job(data_of(size))
        yield store.add(j, "f")
        r = yield self.one(store, j.job_id)
        assert r.size == size
        assert r.payload_bytes() == data_of(size)
        assert r.payload is None or r.payload_path is None
        if self.durable:
            store = yield self.restart(store)
            again = yield self.one(store, j.job_id)
            assert again.payload_bytes() == data_of(size)

    @inlineCallbacks
    def test_a_spilled_payload_is_copied_before_its_file_is_deleted(self):
        store = yield self.new_store()
        size = 2 * BLOB_MAX + 17
        j = make_job(data_of(size, seed=3), spill_dir=self.spill_dir())
        spilled = j.payload.path
        assert spilled is not None and not j.payload.in_memory
        yield store.add(j, "f")
        j.payload.discard()  # what the sink does with its temporary file
        assert not os.path.exists(spilled)
        assert (yield self.one(store, j.job_id)).payload_bytes() == data_of(size, seed=3)
        if self.durable:
            store = yield self.restart(store)
            assert (yield self.one(store, j.job_id)).payload_bytes() == data_of(size, seed=3)

    @inlineCallbacks
    def test_add_fires_with_none_or_a_file_of_the_payload(self):
        store = yield self.new_store()
        small, large = make_job(data_of(10)), make_job(data_of(BLOB_MAX * 3))
        results = yield self.added(store, small, large)
        for job, result in zip((small, large), results):
            assert result is None or isinstance(result, str)
            if result is not None:
                with open(result, "rb") as f:
                    assert f.read() == job.payload.bytes()

    @inlineCallbacks
    def test_adding_a_job_id_the_store_holds_fails(self):
        store = yield self.new_store()
        j = make_job(b"first")
        yield store.add(j, "f")
        twin = Job(trigger="t", payload=Payload(b"second"), job_id=j.job_id)
        with pytest.raises(SpoolError):
            yield store.add(twin, "f")
        assert (yield self.one(store, j.job_id)).payload_bytes() == b"first"

    @inlineCallbacks
    def test_an_added_job_is_back_after_a_restart_with_its_fields(self):
        store = yield self.new_store()
        j = make_job(b"\x00\r\n\xff", trigger="zebra1", pjl_job_name="label 1")
        yield store.add(j, "archive")
        store = yield self.restart(store)
        [r] = yield store.load()
        assert (r.job_id, r.trigger, r.flow, r.state, r.action_index, r.attempt, r.size) == (
            j.job_id, "zebra1", "archive", "running", 0, 1, 4)
        assert comparable(r.all_variables()) == comparable(j.variables.snapshot())
        assert r.payload_bytes() == b"\x00\r\n\xff"

    @inlineCallbacks
    def test_stop_writes_the_background_writes_first(self):
        store = yield self.new_store()
        j = make_job()
        yield store.add(j, "f")
        store.progress(j.job_id, 1, {**j.variables.snapshot(), "reply": "ACK"}, ("p:9100", 5), background=True)
        store = yield self.restart(store)  # no flush: stop applies it
        r = yield self.one(store, j.job_id)
        assert (r.action_index, r.bytes_delivered, r.all_variables()["reply"]) == (1, 5, "ACK")

    # Variables ----------------------------------------------------------------

    @inlineCallbacks
    def test_the_variables_of_the_latest_write_come_back(self):
        store = yield self.new_store()
        j = make_job(pjl_job_name="label 1", dropped="soon")
        yield store.add(j, "f")
        r = yield self.one(store, j.job_id)
        assert comparable(r.all_variables()) == comparable(j.variables.snapshot())
        later = {k: v for k, v in j.variables.snapshot().items() if k != "dropped"}
        later.update(reply="ACK 1", action_index="0", sku="A-1")
        store.progress(j.job_id, 1, later, None, background=True)
        yield store.flush()
        r = yield self.one(store, j.job_id)
        assert comparable(r.all_variables()) == comparable(later)
        assert "action_index" not in r.variables
        for name in ("job_id", "trigger", "peer_host", "peer_port", "size"):
            assert r.variables.get(name, r.all_variables()[name]) == later[name]

    @inlineCallbacks
    def test_a_variable_that_differs_from_its_field_is_kept(self):
        store = yield self.new_store()
        j = make_job(peer_host="printer-7.example")
        yield store.add(j, "f")
        r = yield self.one(store, j.job_id)
        assert r.peer_host == "10.0.0.7"
        assert r.all_variables()["peer_host"] == "printer-7.example"

    @inlineCallbacks
    def test_records_are_the_callers_own(self):
        store = yield self.new_store()
        j = make_job(error="old")
        yield store.add(j, "f")
        first = yield self.one(store, j.job_id)
        first.variables.pop("error")
        first.action_index = 9
        second = yield self.one(store, j.job_id)
        assert (second.variables.get("error"), second.action_index) == ("old", 0)

    # progress, started, finish ------------------------------------------------

    @inlineCallbacks
    def test_progress_records_the_next_action_and_adds_up_deliveries(self):
        store = yield self.new_store()
        j = make_job()
        yield store.add(j, "f")
        variables = j.variables.snapshot()
        assert store.progress(j.job_id, 1, variables, ("printer:9100", 10), background=True) is None
        store.progress(j.job_id, 2, variables, ("printer:9100", 5), background=True)
        store.progress(j.job_id, 3, variables, None, background=True)
        yield store.flush()
        r = yield self.one(store, j.job_id)
        assert (r.state, r.action_index, r.destination, r.bytes_delivered) == ("running", 3, "printer:9100", 15)

    @inlineCallbacks
    def test_the_latest_destination_is_kept(self):
        store = yield self.new_store()
        j = make_job()
        yield store.add(j, "f")
        yield store.progress(j.job_id, 1, j.variables.snapshot(), ("a:9100", 3))
        yield store.progress(j.job_id, 2, j.variables.snapshot(), ("b:9100", 4))
        r = yield self.one(store, j.job_id)
        assert (r.destination, r.bytes_delivered) == ("b:9100", 7)

    @inlineCallbacks
    def test_progress_without_background_fires_once_it_took_effect(self):
        store = yield self.new_store()
        j = make_job()
        yield store.add(j, "f")
        self.clock.advance(5)
        d = store.progress(j.job_id, 1, j.variables.snapshot(), None)
        assert d is not None
        yield d
        r = yield self.one(store, j.job_id)
        assert (r.action_index, r.updated_at) == (1, Clock.START + 5)

    @inlineCallbacks
    def test_flush_waits_for_every_background_write(self):
        store = yield self.new_store()
        jobs = [make_job(b"%d" % i) for i in range(20)]
        yield self.added(store, *jobs)
        for index in range(1, 51):
            for j in jobs:
                store.progress(j.job_id, index, j.variables.snapshot(), (f"p{index}:9100", 1), background=True)
        yield store.flush()
        records = yield store.load()
        assert {(r.action_index, r.destination, r.bytes_delivered) for r in records} == {(50, "p50:9100", 50)}

    @inlineCallbacks
    def test_started_counts_one_more_attempt_and_keeps_the_first_start(self):
        store = yield self.new_store()
        j = make_job()
        yield store.add(j, "f")
        self.clock.advance(60)
        assert store.started(j.job_id, 2, background=True) is None
        yield store.started(j.job_id, 2)
        r = yield self.one(store, j.job_id)
        assert (r.state, r.action_index, r.attempt, r.started_at) == ("running", 2, 3, Clock.START)
        assert r.updated_at == Clock.START + 60

    @inlineCallbacks
    def test_finish_records_the_final_state_durably(self):
        store = yield self.new_store()
        j = make_job()
        yield store.add(j, "f")
        self.clock.advance(2)
        variables = {**j.variables.snapshot(), "printer_reply": "OK"}
        d = store.finish(j.job_id, "done", None, 2, variables, ("printer:9100", 5))
        assert d is not None
        yield d
        assert (yield store.load()) == []
        r = yield self.one(store, j.job_id)
        assert (r.state, r.action_index, r.finished_at, r.last_error) == ("done", 2, Clock.START + 2, None)
        assert (r.destination, r.bytes_delivered) == ("printer:9100", 5)
        assert r.all_variables()["printer_reply"] == "OK"
        if self.durable:
            store = yield self.restart(store)
            assert (yield store.load()) == []
            assert (yield self.one(store, j.job_id)).state == "done"

    @inlineCallbacks
    def test_a_failed_job_keeps_its_error(self):
        store = yield self.new_store()
        j = make_job()
        yield store.add(j, "f")
        error = "send_tcp: printer:9100 refused the connection"
        yield store.finish(j.job_id, "failed", error, 1, {**j.variables.snapshot(), "error": error}, None)
        r = yield self.one(store, j.job_id)
        assert (r.state, r.last_error, r.action_index, r.variables["error"]) == ("failed", error, 1, error)

    @inlineCallbacks
    def test_a_background_finish_took_effect_by_flush(self):
        store = yield self.new_store()
        j = make_job()
        yield store.add(j, "f")
        assert store.finish(j.job_id, "done", None, 1, j.variables.snapshot(), None, background=True) is None
        yield store.flush()
        assert (yield self.one(store, j.job_id)).state == "done"

    @inlineCallbacks
    def test_progress_asked_for_before_the_final_state_never_lands_after_it(self):
        store = yield self.new_store()
        j = make_job()
        yield store.add(j, "f")
        variables = j.variables.snapshot()
        store.progress(j.job_id, 1, variables, ("printer:9100", 7), background=True)
        store.finish(j.job_id, "done", None, 2, variables, ("printer:9100", 3), background=True)
        yield store.flush()
        r = yield self.one(store, j.job_id)
        assert (r.state, r.action_index, r.bytes_delivered) == ("done", 2, 10)

    @inlineCallbacks
    def test_writes_to_a_finished_job_but_finish_change_nothing(self):
        store = yield self.new_store()
        j = make_job()
        yield store.add(j, "f")
        variables = j.variables.snapshot()
        store.finish(j.job_id, "done", None, 2, variables, ("printer:9100", 3), background=True)
        store.progress(j.job_id, 1, {**variables, "late": "1"}, ("other:9100", 5), background=True)
        store.started(j.job_id, 1, background=True)
        store.waiting(j.job_id, 2, "refused", Clock.START + 30)
        yield store.flush()
        r = yield self.one(store, j.job_id)
        assert (r.state, r.action_index, r.attempt) == ("done", 2, 1)
        assert (r.destination, r.bytes_delivered, r.next_try) == ("printer:9100", 3, None)
        assert "late" not in r.variables

    @inlineCallbacks
    def test_writes_to_a_job_the_store_does_not_hold_change_nothing(self):
        store = yield self.new_store()
        store.progress("nobody", 1, {}, None, background=True)
        store.started("nobody", 1, background=True)
        store.waiting("nobody", 1, "x", Clock.START)
        yield store.requeue("nobody", 0)
        yield store.flush()
        assert (yield store.load(job_id="nobody")) == []
        assert (yield store.query(limit=0)) == []

    # waiting ------------------------------------------------------------------

    @inlineCallbacks
    def test_a_waiting_delivery_round_trips(self):
        store = yield self.new_store()
        j = make_job()
        yield store.add(j, "f")
        assert store.waiting(j.job_id, 2, "printer:9100 refused the connection", Clock.START + 30) is None
        yield store.flush()
        r = yield self.one(store, j.job_id)
        assert (r.state, r.delivery_attempt, r.last_error, r.next_try) == (
            "waiting", 2, "printer:9100 refused the connection", Clock.START + 30)
        assert [x.job_id for x in (yield store.load())] == [j.job_id]  # still unfinished
        if self.durable:
            store = yield self.restart(store)
            r = yield self.one(store, j.job_id)
            assert (r.state, r.delivery_attempt, r.next_try) == ("waiting", 2, Clock.START + 30)
        store.waiting(j.job_id, 3, None, None)  # the next attempt, now
        yield store.flush()
        r = yield self.one(store, j.job_id)
        assert (r.state, r.delivery_attempt, r.next_try) == ("running", 3, None)

    @inlineCallbacks
    def test_progress_and_finish_end_a_wait(self):
        store = yield self.new_store()
        a, b = make_job(b"a"), make_job(b"b")
        yield self.added(store, a, b)
        store.waiting(a.job_id, 1, "busy", Clock.START + 30)
        store.waiting(b.job_id, 1, "busy", Clock.START + 30)
        store.progress(a.job_id, 1, a.variables.snapshot(), None, background=True)
        store.finish(b.job_id, "failed", "gave up", 0, b.variables.snapshot(), None, background=True)
        yield store.flush()
        ra, rb = (yield self.one(store, a.job_id)), (yield self.one(store, b.job_id))
        assert (ra.state, ra.next_try) == ("running", None)
        assert (rb.state, rb.next_try) == ("failed", None)

    @inlineCallbacks
    def test_a_queued_job_is_not_made_waiting(self):
        store = yield self.new_store()
        j = make_job()
        yield store.add(j, "f")
        yield store.finish(j.job_id, "failed", "x", 0, j.variables.snapshot(), None)
        yield store.requeue(j.job_id, 0)
        store.waiting(j.job_id, 1, "busy", Clock.START + 30)
        yield store.flush()
        assert (yield self.one(store, j.job_id)).state == "queued"

    # Unfinished jobs, requeue, cancel -------------------------------------------

    @inlineCallbacks
    def test_unfinished_jobs_come_back_in_arrival_order(self):
        store = yield self.new_store()
        first = [make_job(b"%d" % i) for i in range(5)]
        yield self.added(store, *first)
        later = make_job(b"later")
        yield store.add(later, "f")
        for j in first[1::2]:
            store.finish(j.job_id, "done", None, 1, j.variables.snapshot(), None, background=True)
        yield store.flush()
        expected = [first[0].job_id, first[2].job_id, first[4].job_id, later.job_id]
        records = yield store.load()
        assert [r.job_id for r in records] == expected
        assert [r.seq for r in records] == sorted(r.seq for r in records)
        assert all(r.state in UNFINISHED for r in records)
        if self.durable:
            store = yield self.restart(store)
            assert [r.job_id for r in (yield store.load())] == expected

    @inlineCallbacks
    def test_unfinished_jobs_come_back_with_their_payloads(self):
        store = yield self.new_store()
        jobs = [make_job(data_of(size, seed=size)) for size in (3, BLOB_MAX + 5)]
        yield self.added(store, *jobs)
        records = yield store.load()
        assert [r.payload_bytes() for r in records] == [j.payload.bytes() for j in jobs]

    @inlineCallbacks
    def test_requeue_makes_a_finished_job_unfinished_at_its_place(self):
        store = yield self.new_store()
        a, b, c = make_job(b"a"), make_job(b"b"), make_job(b"c")
        yield self.added(store, a, b, c)
        yield store.finish(b.job_id, "failed", "printer gone", 1, b.variables.snapshot(), None)
        assert [r.job_id for r in (yield store.load())] == [a.job_id, c.job_id]
        self.clock.advance(10)
        yield store.requeue(b.job_id, 1)
        records = yield store.load()
        assert [r.job_id for r in records] == [a.job_id, b.job_id, c.job_id]
        rb = records[1]
        assert (rb.state, rb.action_index, rb.finished_at, rb.updated_at) == ("queued", 1, None, Clock.START + 10)
        if self.durable:
            store = yield self.restart(store)
            assert [r.job_id for r in (yield store.load())] == [a.job_id, b.job_id, c.job_id]
        yield store.started(b.job_id, 1)
        rb = yield self.one(store, b.job_id)
        assert (rb.state, rb.attempt) == ("running", 2)

    @inlineCallbacks
    def test_cancel_ends_an_unfinished_job(self):
        store = yield self.new_store()
        a, b = make_job(b"a"), make_job(b"b")
        yield self.added(store, a, b)
        store.waiting(b.job_id, 1, "busy", Clock.START + 30)
        r = yield self.one(store, b.job_id)
        yield store.finish(b.job_id, "cancelled", "cancelled by an operator", r.action_index, r.variables, None)
        assert [x.job_id for x in (yield store.load())] == [a.job_id]
        rb = yield self.one(store, b.job_id)
        assert (rb.state, rb.last_error, rb.next_try) == ("cancelled", "cancelled by an operator", None)
        assert rb.finished_at is not None

    @inlineCallbacks
    def test_load_by_id_gives_a_job_in_any_state_and_nothing_for_an_unknown_one(self):
        store = yield self.new_store()
        a, b = make_job(b"a"), make_job(b"b")
        yield self.added(store, a, b)
        yield store.finish(b.job_id, "failed", "x", 0, b.variables.snapshot(), None)
        assert [r.state for r in (yield store.load(job_id=b.job_id))] == ["failed"]
        assert [r.payload_bytes() for r in (yield store.load(job_id=b.job_id))] == [b"b"]
        assert (yield store.load(job_id="0000000000000-000000000")) == []

    @inlineCallbacks
    def test_load_by_states_in_arrival_order(self):
        store = yield self.new_store()
        jobs = [make_job(b"%d" % i) for i in range(4)]
        yield self.added(store, *jobs)
        for j, state in zip(jobs, ("done", "failed", "done", "cancelled")):
            store.finish(j.job_id, state, None, 1, j.variables.snapshot(), None, background=True)
        yield store.flush()
        assert [r.job_id for r in (yield store.load(states=("done",)))] == [jobs[0].job_id, jobs[2].job_id]
        assert [r.job_id for r in (yield store.load(states=FINISHED))] == [j.job_id for j in jobs]

    # History ------------------------------------------------------------------

    @defer.inlineCallbacks
    def _history(self):
        store = yield self.new_store()
        jobs = [make_job(b"%d" % i, trigger=("orders" if i % 2 else "zebra1")) for i in range(6)]
        yield self.added(store, *jobs)
        for j in jobs[:4]:
            state = "done" if j.trigger == "orders" else "failed"
            store.finish(j.job_id, state, None, 1, j.variables.snapshot(), None, background=True)
        yield store.flush()
        return store, [j.job_id for j in jobs]

    @inlineCallbacks
    def test_history_is_newest_first_up_to_the_limit(self):
        store, ids = yield self._history()
        assert [r.job_id for r in (yield store.query())] == ids[::-1]
        assert [r.job_id for r in (yield store.query(limit=2))] == ids[:-3:-1]
        assert [r.job_id for r in (yield store.query(limit=0))] == ids[::-1]
        assert [r.job_id for r in (yield store.query(limit=None))] == ids[::-1]

    @inlineCallbacks
    def test_history_by_state_and_trigger(self):
        store, ids = yield self._history()
        assert [r.job_id for r in (yield store.query(states=["done"]))] == [ids[3], ids[1]]
        assert [r.job_id for r in (yield store.query(states=["failed", "running"]))] == [ids[5], ids[4], ids[2],
                                                                                         ids[0]]
        assert [r.job_id for r in (yield store.query(triggers=["zebra1"]))] == [ids[4], ids[2], ids[0]]
        assert [r.job_id for r in (yield store.query(states=["running"], triggers=["orders"]))] == [ids[5]]
        assert (yield store.query(states=["cancelled"])) == []
        assert [r.job_id for r in (yield store.query(states=UNFINISHED, limit=1))] == [ids[5]]

    @inlineCallbacks
    def test_history_by_id_prefix(self):
        store, ids = yield self._history()
        assert [r.job_id for r in (yield store.query(prefix=ids[2]))] == [ids[2]]
        assert (yield store.query(prefix="zz")) == []
        common = os.path.commonprefix(ids)
        assert [r.job_id for r in (yield store.query(prefix=common))] == ids[::-1]

    @inlineCallbacks
    def test_history_records_carry_their_fields_but_no_payload(self):
        store = yield self.new_store()
        j = make_job(b"payload", trigger="orders", pjl_job_name="x")
        yield store.add(j, "f")
        yield store.finish(j.job_id, "failed", "no paper", 1, j.variables.snapshot(), ("p:9100", 7))
        [r] = yield store.query()
        assert isinstance(r, StoredJob)
        assert (r.job_id, r.trigger, r.flow, r.state, r.last_error, r.size, r.bytes_delivered) == (
            j.job_id, "orders", "f", "failed", "no paper", 7, 7)
        assert r.payload is None
        assert r.all_variables()["pjl_job_name"] == "x"

    # Requests -----------------------------------------------------------------

    @inlineCallbacks
    def test_a_request_is_taken_until_it_is_answered(self):
        store = yield self.new_store()
        j = make_job()
        yield store.add(j, "f")
        retry = yield store.request(j.job_id, "retry")
        cancel = yield store.request(j.job_id, "cancel")
        assert isinstance(retry, int) and retry != cancel
        assert (yield store.take_requests()) == [(retry, j.job_id, "retry"), (cancel, j.job_id, "cancel")]
        assert (yield store.take_requests()) == [(retry, j.job_id, "retry"), (cancel, j.job_id, "cancel")]
        assert (yield store.answer_of(retry)) is None
        yield store.answer(retry, True, f"job {j.job_id} queued again at action 0")
        yield store.answer(cancel, False, f"job {j.job_id} is already done")
        assert (yield store.take_requests()) == []
        assert (yield store.answer_of(retry)) == (True, f"job {j.job_id} queued again at action 0")
        assert (yield store.answer_of(cancel)) == (False, f"job {j.job_id} is already done")
        assert (yield store.answer_of(cancel + retry + 100)) is None

    @inlineCallbacks
    def test_a_request_survives_a_restart(self):
        store = yield self.new_store()
        request = yield store.request("0000000000000-000000000", "cancel")
        store = yield self.restart(store)
        assert (yield store.take_requests()) == [(request, "0000000000000-000000000", "cancel")]

    # Retention ----------------------------------------------------------------

    @inlineCallbacks
    def test_purge_by_age_keeps_unfinished_and_younger_jobs(self):
        store = yield self.new_store()
        unfinished, old, young = make_job(b"u" * 10), make_job(b"o" * 20), make_job(b"y" * 30)
        yield self.added(store, unfinished, old, young)
        yield store.finish(old.job_id, "done", None, 1, old.variables.snapshot(), None)
        self.clock.advance(1000)
        yield store.finish(young.job_id, "failed", "x", 0, young.variables.snapshot(), None)
        self.clock.advance(1000)  # old finished 2000 s ago, young 1000 s ago
        assert (yield store.purge(2500, 1 << 30)) == (0, 0)
        assert (yield store.purge(1500, 1 << 30)) == (1, 20)
        self.clock.advance(10 ** 7)
        assert (yield store.load(job_id=old.job_id)) == []
        assert [r.job_id for r in (yield store.query())] == [young.job_id, unfinished.job_id]
        assert (yield store.purge(0, 1 << 30)) == (1, 30)
        assert [r.job_id for r in (yield store.load())] == [unfinished.job_id]

    @inlineCallbacks
    def test_purge_by_bytes_takes_the_oldest_finished_first(self):
        store = yield self.new_store()
        unfinished = make_job(b"u" * 1000)
        finished = [make_job(bytes([65 + i]) * 100) for i in range(3)]
        yield self.added(store, unfinished, *finished)
        for j in reversed(finished):  # the last added finishes first
            self.clock.advance(1)
            yield store.finish(j.job_id, "done", None, 1, j.variables.snapshot(), None)
        assert (yield store.purge(10 ** 9, 150)) == (2, 200)
        assert [r.job_id for r in (yield store.query())] == [finished[0].job_id, unfinished.job_id]
        assert (yield store.purge(10 ** 9, 0)) == (1, 100)
        assert [r.job_id for r in (yield store.query())] == [unfinished.job_id]

    @inlineCallbacks
    def test_purge_removes_large_payloads_too(self):
        store = yield self.new_store()
        j = make_job(data_of(BLOB_MAX * 2))
        path = yield store.add(j, "f")
        yield store.finish(j.job_id, "done", None, 1, j.variables.snapshot(), None)
        self.clock.advance(10)
        assert (yield store.purge(5, 1 << 30)) == (1, BLOB_MAX * 2)
        assert (yield store.load(job_id=j.job_id)) == []
        if path is not None:
            assert not os.path.exists(path)

    @inlineCallbacks
    def test_purge_removes_answered_requests_older_than_max_age(self):
        store = yield self.new_store()
        old, pending = (yield store.request("a", "retry")), (yield store.request("b", "retry"))
        yield store.answer(old, True, "done")
        self.clock.advance(100)
        recent = yield store.request("c", "cancel")
        yield store.answer(recent, False, "no job c in the spool")
        assert (yield store.purge(50, 1 << 30)) == (0, 0)
        assert (yield store.answer_of(old)) is None
        assert (yield store.answer_of(recent)) == (False, "no job c in the spool")
        assert (yield store.take_requests()) == [(pending, "b", "retry")]
