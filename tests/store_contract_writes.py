"""
The IJobStore contract, part 1: lifetime, C{add} (durable, byte-identical),
variables, C{progress}/C{started}/C{finish}, C{waiting}.  Run through
L{store_contract.StoreContract}.
"""

from __future__ import annotations

import os

import pytest
from zope.interface.verify import verifyObject

from rawsvc.interfaces import IJobStore
from rawsvc.job import Job, Payload
from rawsvc.spool.model import SpoolError, StoredJob
from rawsvc.spool.records import BLOB_MAX
from store_contract_base import SIZES, Clock, ContractBase, assert_readable, comparable, data_of, inlineCallbacks, make_job


class WritesContract(ContractBase):
    """Lifetime and writes."""

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
    def test_a_held_delivery_round_trips_unfinished(self):
        """A held job (its printer not ready) is unfinished: load gives it back, a restart keeps it."""
        from rawsvc.interfaces import IHoldStore

        store = yield self.new_store()
        if not IHoldStore.providedBy(store):
            return
        j = make_job()
        yield store.add(j, "f")
        assert store.held(j.job_id, 1, "paper out", Clock.START + 5) is None
        yield store.flush()
        r = yield self.one(store, j.job_id)
        assert (r.state, r.delivery_attempt, r.last_error, r.next_try) == ("held", 1, "paper out", Clock.START + 5)
        assert [x.job_id for x in (yield store.load())] == [j.job_id]
        if self.durable:
            store = yield self.restart(store)
            assert [x.state for x in (yield store.load())] == ["held"]
        store.waiting(j.job_id, 2, None, None)  # checked again: running
        yield store.flush()
        r = yield self.one(store, j.job_id)
        assert (r.state, r.delivery_attempt, r.next_try) == ("running", 2, None)

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
