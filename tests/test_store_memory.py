"""
The IJobStore contract (tests/store_contract.py) on
L{rawsvc.spool.memory.MemoryStore}, written from the interface's docstrings
alone: it passes the whole suite, a "restart" being a stop and an open of
the same object (it keeps nothing across a process restart), and a
SpoolSink runs, resumes and retries jobs on it.
"""

from __future__ import annotations

import pytest_twisted
from zope.interface import implementer

from rawsvc.errors import ActionError
from rawsvc.flow import Flow
from rawsvc.interfaces import IAction
from rawsvc.spool.memory import MemoryStore
from rawsvc.spool.sink import SpoolSink
from store_contract import Clock, StoreContract, make_job


class TestMemoryStore(StoreContract):
    # Its jobs live as long as the object: a "restart" stops and opens the same
    # store again (a process restart would lose them: it is not durable).
    durable = True

    def make_store(self, path, clock):
        return MemoryStore(clock=clock)

    def reopen(self, store):
        return store

    def broken_store(self, path, clock):
        return MemoryStore(clock=clock, fail_open="the spool's disk is gone (a test)")


# The sink works on an engine written from the docstrings alone ---------------

@implementer(IAction)
class Printer:
    """Fails while C{broken}; notes each job it ran."""

    type_name = "printer"

    def __init__(self, broken: bool = False) -> None:
        self.broken = broken
        self.ran: list[str] = []

    def run(self, job):
        self.ran.append(job.job_id)
        if self.broken:
            raise ActionError("printer offline")
        job.variables["printed"] = "yes"


def started_sink(store, actions) -> SpoolSink:
    from twisted.internet import reactor

    sink = SpoolSink({"f": Flow("f", actions)}, store, reactor)
    sink.service.stop_grace = 0.05
    sink.service.startService()
    return sink


@pytest_twisted.inlineCallbacks
def test_a_spool_sink_on_a_memory_store_stores_runs_and_records_a_job():
    store = MemoryStore(clock=Clock())
    first, second = Printer(), Printer()
    sink = started_sink(store, [first, second])
    try:
        yield sink.service.started
        done = yield sink.submit(make_job(b"label"), "f")
        yield sink.drain_writes()
        [record] = yield store.load(job_id=done.job_id)
    finally:
        yield sink.service.stopService()
    assert done.state == "done"
    assert (first.ran, second.ran) == ([done.job_id], [done.job_id])
    assert (record.state, record.action_index, record.variables["printed"]) == ("done", 2, "yes")


@pytest_twisted.inlineCallbacks
def test_a_spool_sink_resumes_and_retries_through_a_memory_store():
    store = MemoryStore(clock=Clock())
    job = make_job(b"label")
    yield store.open()
    yield store.add(job, "f")  # stored, then the service stopped before its flow ran
    store.progress(job.job_id, 1, {**job.variables.snapshot(), "reply": "ACK"}, None, background=True)
    yield store.stop()
    first, second = Printer(), Printer(broken=True)
    sink = started_sink(store, [first, second])
    try:
        yield sink.service.started
        yield sink.drain()
        yield sink.drain_writes()
        failed = (yield store.load(job_id=job.job_id))[0]
        second.broken = False
        request = yield store.request(job.job_id, "retry")  # as `rawsvc retry` asks
        yield sink.apply_requests()
        yield sink.drain()
        yield sink.drain_writes()
        answer = yield store.answer_of(request)
        done = (yield store.load(job_id=job.job_id))[0]
    finally:
        yield sink.service.stopService()
    assert (first.ran, second.ran) == ([], [job.job_id, job.job_id])  # resumed at action 1, twice
    assert (failed.state, failed.last_error, failed.action_index) == ("failed", "printer offline", 1)
    assert answer == (True, f"job {job.job_id} (failed) queued again at action 1")
    assert (done.state, done.attempt, done.all_variables()["reply"]) == ("done", 3, "ACK")
