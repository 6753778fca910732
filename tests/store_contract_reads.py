"""
The IJobStore contract, part 2: unfinished jobs, C{requeue}, cancel, reads
by id and state, history, the CLI's requests, retention.  Run through
L{store_contract.StoreContract}.
"""

from __future__ import annotations

import os

from twisted.internet import defer

from rawsvc.spool.model import FINISHED, UNFINISHED, StoredJob
from rawsvc.spool.records import BLOB_MAX
from store_contract_base import Clock, ContractBase, data_of, inlineCallbacks, make_job


class ReadsContract(ContractBase):
    """Unfinished jobs, reads, requests and retention."""

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
