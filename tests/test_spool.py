"""The durable spool (rawsvc.spool): store, group commit, resume, retention, refusals."""

from __future__ import annotations

import os
import socket
import sqlite3
import stat
import time

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.threads import deferToThread
from zope.interface import implementer
from zope.interface.verify import verifyObject

from rawsvc.flow import Flow
from rawsvc.interfaces import IAction, IJobSink
from rawsvc.job import Job, Payload
from rawsvc.spool import journal
from rawsvc.spool.sink import SenderGone, SpoolSink
from rawsvc.spool.store import BLOB_MAX, Store, db_path


@pytest.fixture(scope="module", autouse=True)
def reactor_running():
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    pytest_twisted.blockon(deferLater(reactor, 0, lambda: None))


@implementer(IAction)
class Record:
    """Notes each job it runs; optionally waits for the test to fire it."""

    type_name = "record"

    def __init__(self, hold: bool = False) -> None:
        self.seen: list[str] = []
        self.hold = hold
        self.pending: list[Deferred] = []

    def run(self, job):
        self.seen.append(job.job_id)
        if self.hold:
            d: Deferred = Deferred()
            self.pending.append(d)
            return d
        return None


@implementer(IAction)
class Reply:
    type_name = "reply"

    def __init__(self) -> None:
        self.channels: list = []

    def run(self, job):
        self.channels.append(job.reply_channel)
        return job.reply_channel.reply(b"OK\n")


def rows(state_dir) -> list[sqlite3.Row]:
    conn = sqlite3.connect(db_path(str(state_dir)))
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM jobs ORDER BY seq").fetchall()
    finally:
        conn.close()


def make_sink(state_dir, flows, reactor, **kw) -> SpoolSink:
    store = Store(str(state_dir), reactor, max_pages=kw.pop("max_pages", None))
    sink = SpoolSink(flows, store, reactor, **kw)
    sink.service.stop_grace = 0.05  # jobs held by a test are left to resume
    sink.service.startService()
    return sink


def job(data: bytes = b"label", **kw) -> Job:
    payload = Payload(data)
    payload.close()
    return Job(trigger="t", payload=payload, **kw)


@pytest.fixture
def sinks():
    started: list[SpoolSink] = []
    yield started
    for sink in started:
        if sink.service.running:
            pytest_twisted.blockon(sink.service.stopService())


def test_spool_sink_provides_ijobsink(tmp_path, reactor):
    sink = SpoolSink({}, Store(str(tmp_path), reactor), reactor)
    assert verifyObject(IJobSink, sink)


@pytest_twisted.inlineCallbacks
def test_a_job_is_on_disk_before_its_flow_runs(tmp_path, reactor, sinks):
    seen_on_disk = []

    @implementer(IAction)
    class Look:
        type_name = "look"

        def run(self, j):
            # In the journal (fdatasynced: the job is acknowledged) or already in the index behind it.
            journaled = journal.read(journal.journal_path(str(tmp_path)))[0]
            in_journal = {row[0] for record in journaled for row in record.inserts}
            seen_on_disk.extend({r["job_id"] for r in rows(tmp_path)} | in_journal)

    sink = make_sink(tmp_path, {"f": Flow("f", [Look()])}, reactor)
    sinks.append(sink)
    j = job()
    done = yield sink.submit(j, "f")
    assert done.state == "done"
    assert seen_on_disk == [j.job_id]


@pytest_twisted.inlineCallbacks
def test_concurrent_jobs_share_commits(tmp_path, reactor, sinks):
    sink = make_sink(tmp_path, {"f": Flow("f", [Record()])}, reactor)
    sinks.append(sink)
    yield sink.service.started
    before = sink.store.commits_full
    jobs = yield gatherResults([sink.submit(job(b"%d" % i), "f") for i in range(500)])
    assert {j.state for j in jobs} == {"done"}
    yield sink.service.stopService()
    assert sink.store.commits_full - before < 100  # 1,000 durable writes (store + final)
    assert [r["state"] for r in rows(tmp_path)] == ["done"] * 500


@pytest_twisted.inlineCallbacks
def test_small_payloads_in_the_database_large_ones_in_private_files(tmp_path, reactor, sinks):
    sink = make_sink(tmp_path, {"f": Flow("f", [Record()])}, reactor)
    sinks.append(sink)
    small, large = job(b"s" * 100), job(b"L" * (BLOB_MAX + 1))
    yield gatherResults([sink.submit(small, "f"), sink.submit(large, "f")])
    r_small, r_large = rows(tmp_path)
    assert r_small["payload"] == b"s" * 100 and r_small["payload_path"] is None
    assert r_large["payload"] is None
    with open(r_large["payload_path"], "rb") as f:
        assert f.read() == b"L" * (BLOB_MAX + 1)
    assert stat.S_IMODE(os.stat(r_large["payload_path"]).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(r_large["payload_path"])).st_mode) == 0o700


@pytest_twisted.inlineCallbacks
def test_a_spilled_payload_moves_into_the_spool_and_survives_the_job(tmp_path, reactor, sinks):
    sink = make_sink(tmp_path / "state", {"f": Flow("f", [Record()])}, reactor)
    sinks.append(sink)
    payload = Payload(spool_dir=str(tmp_path / "tmp"), threshold=10)
    payload.write(b"x" * 1000)
    payload.close()
    temp = payload.path
    done = yield sink.submit(Job(trigger="t", payload=payload), "f")
    assert done.state == "done"
    assert not os.path.exists(temp)
    (row,) = rows(tmp_path / "state")
    assert open(row["payload_path"], "rb").read() == b"x" * 1000


@pytest_twisted.inlineCallbacks
def test_progress_is_recorded_after_each_action(tmp_path, reactor, sinks):
    second = Record(hold=True)
    sink = make_sink(tmp_path, {"f": Flow("f", [Record(), second, Record()])}, reactor)
    sinks.append(sink)
    j = job()
    d = sink.submit(j, "f")
    while not second.pending:
        yield deferLater(reactor)
    yield sink.drain_writes()
    (row,) = rows(tmp_path)
    assert (row["state"], row["action_index"], row["attempt"]) == ("running", 1, 1)
    second.pending[0].callback(None)
    yield d
    yield sink.drain_writes()
    (row,) = rows(tmp_path)
    assert (row["state"], row["action_index"], row["finished_at"] is not None) == ("done", 3, True)


def deferLater(reactor, seconds: float = 0.01):
    from twisted.internet.task import deferLater as later

    return later(reactor, seconds, lambda: None)


@pytest_twisted.inlineCallbacks
def test_unfinished_jobs_resume_in_order_at_the_first_action_not_done(tmp_path, reactor, sinks):
    first, second = Record(), Record(hold=True)
    sink = make_sink(tmp_path, {"f": Flow("f", [first, second])}, reactor)
    jobs = [job(b"%d" % i) for i in range(3)]
    for j in jobs:
        sink.submit(j, "f")
    while len(second.pending) < 3:
        yield deferLater(reactor)
    yield sink.service.stopService()  # as good as a crash: nothing was finished

    first2, second2, new = Record(), Record(), Record()
    sink2 = make_sink(tmp_path, {"f": Flow("f", [first2, second2]), "g": Flow("g", [new])}, reactor)
    sinks.append(sink2)
    fresh = job(b"new")
    yield sink2.submit(fresh, "f")
    yield sink2.drain()
    yield sink2.drain_writes()
    ids = [j.job_id for j in jobs]
    assert first2.seen == [fresh.job_id]  # resumed jobs skip the action they had done
    assert second2.seen == ids + [fresh.job_id]  # in their original order, before the new one
    assert [r["state"] for r in rows(tmp_path)] == ["done"] * 4
    assert [r["attempt"] for r in rows(tmp_path)] == [2, 2, 2, 1]


@pytest_twisted.inlineCallbacks
def test_a_resumed_job_skips_its_replies(tmp_path, reactor, sinks):
    hold = Record(hold=True)
    sink = make_sink(tmp_path, {"f": Flow("f", [hold, Reply()])}, reactor)
    sink.submit(job(), "f")
    while not hold.pending:
        yield deferLater(reactor)
    yield sink.service.stopService()
    reply = Reply()
    sink2 = make_sink(tmp_path, {"f": Flow("f", [Record(), reply])}, reactor)
    sinks.append(sink2)
    yield sink2.service.started
    yield sink2.drain()
    yield sink2.drain_writes()
    assert [type(c) for c in reply.channels] == [SenderGone]
    assert rows(tmp_path)[0]["state"] == "done"


@pytest_twisted.inlineCallbacks
def test_retry_and_cancel(tmp_path, reactor, sinks):
    hold = Record(hold=True)
    sink = make_sink(tmp_path, {"f": Flow("f", [hold])}, reactor)
    sinks.append(sink)
    j = job()
    d = sink.submit(j, "f")
    while not hold.pending:
        yield deferLater(reactor)
    assert "stops before its next action" in (yield sink.cancel(j.job_id))
    hold.pending[0].callback(None)
    assert (yield d).state == "done"  # the running action was not interrupted
    hold.hold = False
    failed = Record()
    sink.flows["g"] = sink._wrap(Flow("g", [_Fail()]))
    j2 = yield sink.submit(job(), "g")
    assert j2.state == "failed"
    yield sink.drain_writes()
    sink.flows["g"] = sink._wrap(Flow("g", [failed]))
    message = yield sink.retry(j2.job_id)
    assert "queued again at action 0" in message
    yield sink.drain()
    yield sink.drain_writes()
    assert failed.seen == [j2.job_id]
    assert rows(tmp_path)[1]["state"] == "done"
    assert "already done" in (yield sink.cancel(j2.job_id))
    with pytest.raises(KeyError):
        yield sink.retry("no-such-job")


@implementer(IAction)
class _Fail:
    type_name = "fail"

    def run(self, j):
        from rawsvc.errors import ActionError

        raise ActionError("printer on fire")


@pytest_twisted.inlineCallbacks
def test_retention_purges_old_finished_jobs_and_their_files(tmp_path, reactor, sinks):
    sink = make_sink(tmp_path, {"f": Flow("f", [Record()])}, reactor, retention_days=1, retention_mb=1)
    sinks.append(sink)
    big = [job(b"B" * 300_000) for _ in range(5)]
    yield gatherResults([sink.submit(j, "f") for j in big + [job(b"new")]])
    yield sink.drain_writes()
    files = [r["payload_path"] for r in rows(tmp_path) if r["payload_path"]]
    conn = sqlite3.connect(db_path(str(tmp_path)))
    conn.execute("UPDATE jobs SET finished_at = ? WHERE job_id = ?", (time.time() - 2 * 86400, big[0].job_id))
    conn.commit()
    conn.close()
    yield sink.purge()
    left = [r["job_id"] for r in rows(tmp_path)]
    # the old one by age; then the oldest until the rest fit in 1 MB
    assert left == [j.job_id for j in big[2:]] + [left[-1]]
    assert not os.path.exists(files[0]) and not os.path.exists(files[1])
    assert os.path.exists(files[2])


@pytest_twisted.inlineCallbacks
def test_a_full_disk_refuses_new_jobs_and_keeps_accepted_ones(tmp_path, reactor, sinks):
    flow = Record()
    sink = make_sink(tmp_path, {"f": Flow("f", [flow])}, reactor, max_pages=40)
    sinks.append(sink)
    accepted = yield sink.submit(job(b"a" * 1000), "f")
    assert accepted.state == "done"
    results = []
    for i in range(100):
        results.append((yield sink.submit(job(b"x" * 30_000), "f")))
        if results[-1].state == "refused":
            break
        # Acknowledged at the journal's fdatasync, the job reaches the index
        # behind (within INDEX_DELAY): let it, so the index's full disk is met
        # within the 100 jobs however fast the disk (CI's ran them all first).
        yield sink.drain_writes()
    refused = results[-1]
    assert refused.state == "refused"
    assert refused.error.startswith("spool unavailable: ")
    assert "full" in refused.error
    assert refused.job_id not in flow.seen  # its flow never ran
    assert rows(tmp_path)[0]["job_id"] == accepted.job_id


@pytest_twisted.inlineCallbacks
def test_an_unwritable_state_dir_refuses_jobs_with_the_reason(tmp_path, reactor, sinks):
    (tmp_path / "file").write_text("not a directory")
    flow = Record()
    sink = make_sink(tmp_path / "file" / "state", {"f": Flow("f", [flow])}, reactor)
    sinks.append(sink)
    yield sink.service.started
    counters = type("C", (), {"jobs_refused": 0, "jobs_received": 0})()
    j = yield sink.submit(job(), "f", counters)
    assert j.state == "refused"
    assert j.error.startswith("spool unavailable: cannot open ")
    assert "Not a directory" in j.error
    assert flow.seen == [] and counters.jobs_refused == 1


@pytest_twisted.inlineCallbacks
def test_the_tcp_trigger_writes_the_refusal_when_the_spool_is_unavailable(tmp_path, reactor):
    from support import port_of, recv_all
    from rawsvc.config import loads
    from rawsvc.context import BuildContext
    from rawsvc.service import RawService

    (tmp_path / "file").write_text("x")
    config = loads(f"""
[service]
state_dir = "{tmp_path}/state"
[[trigger]]
name = "t"
type = "tcp"
listen = "tcp:0:interface=127.0.0.1"
flow = "f"
refusal = "ERR ${{reason}}\\n"
[[flow]]
name = "f"
actions = [ {{ type = "reply", data = "OK\\n" }} ]
""", str(tmp_path / "rawsvc.toml"), BuildContext())
    svc = RawService(config)
    assert isinstance(svc.sink, SpoolSink)
    svc.sink.store = Store(str(tmp_path / "file" / "state"), reactor)  # unwritable
    svc.startService()
    try:
        yield svc.sink.service.started
        port = port_of(svc, "t")

        def client():
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"label")
                s.shutdown(socket.SHUT_WR)
                return recv_all(s)

        answer = yield deferToThread(client)
        assert answer.startswith(b"ERR spool unavailable: cannot open ")
        assert svc.triggers["t"].counters.jobs_refused == 1
    finally:
        yield svc.stopService()
