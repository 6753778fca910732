"""rawsvc jobs / job / retry / cancel, on a spool written by a live SpoolSink."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread
from zope.interface import implementer

from rawsvc.cli import main
from rawsvc.errors import ActionError
from rawsvc.flow import Flow
from rawsvc.interfaces import IAction
from rawsvc.job import Job, Payload
from rawsvc.spool.sink import SpoolSink
from rawsvc.spool.store import Store


@pytest.fixture(scope="module", autouse=True)
def reactor_running():
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    pytest_twisted.blockon(deferLater(reactor, 0, lambda: None))


@implementer(IAction)
class Flaky:
    """Fails while C{broken} is true."""

    type_name = "flaky"

    def __init__(self) -> None:
        self.broken = True
        self.ran: list[str] = []

    def run(self, job):
        self.ran.append(job.job_id)
        if self.broken:
            raise ActionError("printer offline")


@pytest.fixture
def live(tmp_path, reactor):
    action = Flaky()
    sink = SpoolSink({"f": Flow("f", [action])}, Store(str(tmp_path), reactor), reactor)
    sink.service.stop_grace = 0.05
    sink.service.startService()
    yield sink, action
    pytest_twisted.blockon(sink.service.stopService())


def submit(sink, data: bytes, trigger: str = "t"):
    payload = Payload(data)
    payload.close()
    return sink.submit(Job(trigger=trigger, payload=payload), "f")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest_twisted.inlineCallbacks
def test_jobs_lists_newest_first_and_filters(tmp_path, live, capsys):
    sink, action = live
    a = yield submit(sink, b"one", "orders")
    action.broken = False
    b = yield submit(sink, b"two", "labels")
    yield sink.drain_writes()
    code, out, _ = yield deferToThread(run_cli, capsys, "jobs", "--state-dir", str(tmp_path), "--json")
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert [(r["job_id"], r["state"]) for r in records] == [(b.job_id, "done"), (a.job_id, "failed")]
    assert records[1]["last_error"] == "printer offline"
    code, out, _ = yield deferToThread(run_cli, capsys, "jobs", "--state-dir", str(tmp_path), "--trigger", "orders")
    assert a.job_id in out and b.job_id not in out
    code, out, _ = yield deferToThread(run_cli, capsys, "jobs", "--state-dir", str(tmp_path), "--state", "done")
    assert b.job_id in out and a.job_id not in out


@pytest_twisted.inlineCallbacks
def test_job_shows_one_job_by_id_prefix(tmp_path, live, capsys):
    sink, action = live
    action.broken = False
    j = yield submit(sink, b"\x00label\xff")
    yield sink.drain_writes()
    code, out, _ = yield deferToThread(run_cli, capsys, "job", "--state-dir", str(tmp_path), j.job_id[:18], "--json")
    assert code == 0
    record = json.loads(out)
    assert record["job_id"] == j.job_id and record["state"] == "done" and record["size"] == 7
    code, out, err = yield deferToThread(run_cli, capsys, "job", "--state-dir", str(tmp_path), "nope")
    assert code == 1 and "no job nope" in err


@pytest_twisted.inlineCallbacks
def test_retry_is_applied_by_the_running_service(tmp_path, live, capsys):
    sink, action = live
    j = yield submit(sink, b"label")
    assert j.state == "failed"
    action.broken = False
    code, out, _ = yield deferToThread(run_cli, capsys, "retry", "--state-dir", str(tmp_path), j.job_id)
    assert code == 0 and "queued again" in out
    yield sink.drain()
    yield sink.drain_writes()
    assert action.ran == [j.job_id, j.job_id]
    code, out, _ = yield deferToThread(run_cli, capsys, "job", "--state-dir", str(tmp_path), j.job_id, "--json")
    assert json.loads(out)["state"] == "done"


@pytest_twisted.inlineCallbacks
def test_cancel_of_a_finished_job_says_so(tmp_path, live, capsys):
    sink, action = live
    j = yield submit(sink, b"label")
    code, out, _ = yield deferToThread(run_cli, capsys, "cancel", "--state-dir", str(tmp_path), j.job_id)
    assert code == 0 and "already failed" in out


@pytest_twisted.inlineCallbacks
def test_a_request_without_a_running_service_waits_for_its_next_start(tmp_path, capsys, reactor):
    sink = SpoolSink({"f": Flow("f", [Flaky()])}, Store(str(tmp_path), reactor), reactor)
    sink.service.stop_grace = 0.05
    sink.service.startService()
    j = yield submit(sink, b"label")
    yield sink.service.stopService()
    code, out, _ = yield deferToThread(run_cli, capsys, "cancel", "--state-dir", str(tmp_path), j.job_id, "--wait", "0")
    assert code == 0 and "next start" in out


def test_no_spool_is_a_clear_error(tmp_path, capsys):
    code, _, err = run_cli(capsys, "jobs", "--state-dir", str(tmp_path / "nowhere"))
    assert code == 1 and "no spool at" in err


@implementer(IAction)
class SetsVariables:
    type_name = "sets"

    def run(self, job):
        job.variables["sku"] = "A\\d 1"
        job.variables["note"] = 'two\r\nlines "quoted"'


@pytest_twisted.inlineCallbacks
def test_job_prints_variables_as_people_read_them_not_as_reprs(tmp_path, reactor, capsys):
    sink = SpoolSink({"f": Flow("f", [SetsVariables()])}, Store(str(tmp_path), reactor), reactor)
    sink.service.startService()
    try:
        j = yield submit(sink, b"label")
        yield sink.drain_writes()
    finally:
        yield sink.service.stopService()
    code, out, _ = yield deferToThread(run_cli, capsys, "job", "--state-dir", str(tmp_path), j.job_id)
    assert code == 0
    lines = out.splitlines()
    assert '  sku = "A\\d 1"' in lines
    assert '  note = "two\\r\\nlines \\"quoted\\""' in lines
