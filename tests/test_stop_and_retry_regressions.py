"""
Regressions found by the review of the contracts refactor:

- a job whose action fails while the service stops is left to resume, so
  its sender must not get a NAK (it would send it again: printed twice);
- a failed job whose on_error delivery waits to retry stays failed and is
  stored finished (it did resume as "running", and ran again);
- a tcp trigger's idle_timeout counts from the client's last job byte,
  not from the end of its job's flow;
- resume() of a trigger whose port was taken says so to its caller.
"""

from __future__ import annotations

import socket
import sys
import textwrap
import time

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from rawsvc.testing import FakePrinter
from support import port_of, recv_all, start_service

LINE_ACK = '''
"""A line framer whose jobs are answered ACK once done, NAK when they failed (as stx-etx does)."""
from zope.interface import implementer
from rawsvc import options as o
from rawsvc.interfaces import IFramer
from rawsvc.triggers.api import Data, End, framed_trigger


@implementer(IFramer)
class LineAckFramer:
    def __init__(self):
        self.buf = b""

    def feed(self, data):
        self.buf += data
        events = []
        while b"\\n" in self.buf:
            line, self.buf = self.buf.split(b"\\n", 1)
            events += [Data(line), End(ack=b"ACK\\n", nak=b"NAK\\n")]
        return events

    def end_of_input(self, how):
        return []


LineAck = framed_trigger("line-ack", o.Schema(), lambda options: LineAckFramer())
'''


@pytest.fixture
def line_ack(tmp_path, monkeypatch):
    (tmp_path / "lineack.py").write_text(LINE_ACK)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("lineack", None)


def _build(tmp_path, toml: str):
    from rawsvc.config import loads
    from rawsvc.context import BuildContext
    from rawsvc.service import RawService

    return RawService(loads(f'[service]\nstate_dir = "{tmp_path}/state"\n' + textwrap.dedent(toml),
                            str(tmp_path / "r.toml"), BuildContext()))


@pytest_twisted.inlineCallbacks
def test_a_job_failing_as_the_service_stops_resumes_and_its_sender_gets_no_nak(tmp_path, line_ack):
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    from rawsvc.spool.store import Store

    off = FakePrinter()
    off_port = off.refuse()
    service = _build(tmp_path, f"""
        stop_grace = 5
        [[trigger]]
        name = "dev"
        type = "lineack:LineAck"
        listen = "tcp:0:interface=127.0.0.1"
        flow = "f"
        [[flow]]
        name = "f"
        actions = [{{ type = "support:SleepAction", seconds = "0.5" }},
                   {{ type = "send_tcp", destination = "127.0.0.1:{off_port}", retries = 0 }}]
    """)
    service.startService()
    yield service.sink.service.started
    sock = socket.create_connection(("127.0.0.1", port_of(service, "dev")), timeout=10)
    try:
        sock.sendall(b"label-1\n")
        yield deferLater(reactor, 0.2, lambda: None)  # stored; its flow runs
        stopping = service.stopService()
        answer = yield deferToThread(recv_all, sock, 5.0)
        yield stopping
    finally:
        sock.close()
        yield off.stop()
    store = Store(f"{tmp_path}/state", reactor)
    yield store.open()
    rows = yield store.load()
    yield store.stop()
    assert [r.state for r in rows] == ["running"]  # it resumes at the next start ...
    assert answer == b""  # ... so its sender was told neither ACK nor NAK


@pytest_twisted.inlineCallbacks
def test_a_failed_job_whose_on_error_delivery_retries_stays_failed_and_finished(tmp_path, monkeypatch):
    from twisted.internet import reactor

    # As in production: a move outside the table is logged and taken (strict
    # mode would raise inside the pool's watcher call, which hid this bug).
    monkeypatch.setenv("RAWSVC_STRICT_STATES", "0")

    from rawsvc.job import Job, Payload

    dead = FakePrinter()
    dead_port = dead.refuse()
    notify = FakePrinter()
    notify.refuse()
    service = _build(tmp_path, f"""
        [[trigger]]
        name = "t"
        type = "tcp"
        listen = "tcp:0:interface=127.0.0.1"
        flow = "f"
        [[flow]]
        name = "f"
        actions = [{{ type = "send_tcp", destination = "127.0.0.1:{dead_port}", retries = 0 }}]
        on_error = [{{ type = "send_tcp", destination = "{notify.destination}", data = "failed", retry_delay = 0.2, max_retry_delay = 0.2 }}]
    """)
    service.startService()
    try:
        yield service.sink.service.started
        reactor.callLater(0.5, notify.accept)  # the notification waits, then goes out
        payload = Payload()
        payload.write(b"job")
        payload.close()
        done = yield service.sink.submit(Job(trigger="t", payload=payload), "f")
        assert done.state == "failed"
        yield service.sink.store.flush()
        assert (yield service.sink.store.load()) == []  # nothing unfinished: it does not run again
        assert [j.bytes for j in (yield notify.wait_for(1))] == [b"failed"]
    finally:
        yield service.stopService()
        yield dead.stop()
        yield notify.stop()


@pytest_twisted.inlineCallbacks
def test_tcp_idle_timeout_counts_from_the_last_job_byte_not_the_end_of_its_flow(tmp_path):
    service = start_service(tmp_path, """
[[trigger]]
name = "t"
type = "tcp"
listen = "tcp:0:interface=127.0.0.1"
flow = "f"
execute_on = "delimiter"
delimiter = "\\n"
idle_timeout = 1.0
[[flow]]
name = "f"
actions = [{ type = "support:SleepAction", seconds = "0.8" }]
""")
    try:
        def client():
            with socket.create_connection(("127.0.0.1", port_of(service, "t")), timeout=10) as s:
                t0 = time.monotonic()
                s.sendall(b"one\n")
                recv_all(s, 5.0)
                return time.monotonic() - t0

        closed_after = yield deferToThread(client)
        assert 0.9 < closed_after < 1.6  # 1 s after the byte; 1.8 s were "after the flow"
    finally:
        yield service.stopService()
