"""
The send_tcp action against real listeners on loopback.
"""

from __future__ import annotations

import os
import socket
import time

import pytest
import pytest_twisted

from rawsvc.client.address import Destination
from rawsvc.config import loads
from rawsvc.context import BuildContext
from rawsvc.errors import ConfigError
from rawsvc.job import Job, Payload
from rawsvc.testing import FakePrinter


def build(reactor, tmp_path, action: str, service: str = ""):
    """A config with one flow 'f' whose only action is C{action} (inline TOML)."""
    text = f"""
[service]
state_dir = "{tmp_path}/state"
{service}

[[flow]]
name = "f"
actions = [ {action} ]
"""
    config = loads(text, context=BuildContext(reactor=reactor))
    return config.flows["f"], config.context.destinations


def job(data: bytes = b"hello printer\n", **variables) -> Job:
    j = Job("test", Payload(data), extra=variables)
    j.payload.close()
    return j


@pytest.fixture
def printer():
    p = FakePrinter(reply=b"@PJL USTATUS JOB\r\nEND\r\n\x0c")
    yield p
    pytest_twisted.blockon(p.stop())


def sleep(reactor, seconds):
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


@pytest_twisted.inlineCallbacks
def test_reply_lands_in_the_save_reply_variable(reactor, tmp_path, printer):
    printer.listen()
    flow, _ = build(
        reactor, tmp_path,
        f'{{ type = "send_tcp", destination = "{printer.destination}", save_reply = "answer", wait_for_eof = true }}',
    )
    j = yield flow.run(job(b"\x1b%-12345X@PJL JOB\r\nhello\x00\xff"))
    assert j.state == "done", j.error
    assert printer.jobs[0].bytes == b"\x1b%-12345X@PJL JOB\r\nhello\x00\xff"
    assert j.variables["answer"] == "@PJL USTATUS JOB\r\nEND\r\n\x0c"


@pytest_twisted.inlineCallbacks
def test_sender_half_closes_after_the_last_byte(reactor, tmp_path, printer):
    printer.listen()
    flow, _ = build(reactor, tmp_path, f'{{ type = "send_tcp", destination = "{printer.destination}", wait_for_eof = true }}')
    j = yield flow.run(job())
    assert j.state == "done", j.error
    assert printer.jobs[0].eof_at is not None


@pytest_twisted.inlineCallbacks
def test_data_template_is_rendered_in_its_encoding(reactor, tmp_path, printer):
    printer.listen()
    flow, _ = build(
        reactor, tmp_path,
        f'{{ type = "send_tcp", destination = "{printer.destination}", data = "^XA^FD${{sku}} \u00e9^FS^XZ", encoding = "cp437" }}',
    )
    j = yield flow.run(job(sku="A-1"))
    assert j.state == "done", j.error
    yield printer.wait_for(1)
    assert printer.jobs[0].bytes == "^XA^FDA-1 \u00e9^FS^XZ".encode("cp437")


@pytest_twisted.inlineCallbacks
def test_destination_is_a_template(reactor, tmp_path, printer):
    printer.listen()
    flow, _ = build(reactor, tmp_path, '{ type = "send_tcp", destination = "${host}:${port}" }')
    j = yield flow.run(job(b"x", host="127.0.0.1", port=str(printer.port)))
    assert j.state == "done", j.error
    yield printer.wait_for(1)
    assert printer.jobs[0].bytes == b"x"


@pytest_twisted.inlineCallbacks
def test_large_spilled_payload_streams_from_its_file(reactor, tmp_path, printer, monkeypatch):
    printer.listen()
    flow, _ = build(reactor, tmp_path, f'{{ type = "send_tcp", destination = "{printer.destination}", wait_for_eof = true }}')
    payload = Payload(spool_dir=str(tmp_path / "spool"), threshold=1 << 16)
    blob = os.urandom(3 << 20)
    for i in range(0, len(blob), 1 << 16):
        payload.write(blob[i : i + (1 << 16)])
    payload.close()
    assert not payload.in_memory

    def no_whole_copy(self):
        raise AssertionError("the payload was read into memory")

    monkeypatch.setattr(Payload, "bytes", no_whole_copy)
    j = yield flow.run(Job("test", payload))
    assert j.state == "done", j.error
    assert printer.jobs[0].bytes == blob


@pytest_twisted.inlineCallbacks
def test_messages_sent_at_any_time_are_kept(reactor, tmp_path):
    printer = FakePrinter(greeting=b"READY;", reply=b"DONE")
    printer.listen()
    try:
        flow, _ = build(
            reactor, tmp_path,
            f'{{ type = "send_tcp", destination = "{printer.destination}", save_reply = "r", wait_for_eof = true }}',
        )
        j = yield flow.run(job())
        assert j.variables["r"] == "READY;DONE"
    finally:
        yield printer.stop()


@pytest_twisted.inlineCallbacks
def test_refused_connection_is_retried_then_delivered(reactor, tmp_path, printer):
    printer.refuse()
    flow, pool = build(
        reactor, tmp_path,
        f'{{ type = "send_tcp", destination = "{printer.destination}", retries = 8, retry_delay = 0.02, max_retry_delay = 0.05 }}',
    )
    d = flow.run(job(b"after the busy spell"))
    while pool.status()[printer.destination]["attempts"] < 3:
        yield sleep(reactor, 0.005)
    printer.accept()
    j = yield d
    assert j.state == "done", j.error
    yield printer.wait_for(1)
    assert [x.bytes for x in printer.jobs] == [b"after the busy spell"]
    status = pool.status()[printer.destination]
    assert status["retries"] >= 2 and status["delivered"] == 1 and status["failures"] == 0


@pytest_twisted.inlineCallbacks
def test_refused_after_every_retry_says_busy(reactor, tmp_path, printer):
    printer.refuse()
    flow, pool = build(
        reactor, tmp_path,
        f'{{ type = "send_tcp", destination = "{printer.destination}", retries = 2, retry_delay = 0.01 }}',
    )
    j = yield flow.run(job())
    assert j.state == "failed"
    assert j.error == f"connection refused by {printer.destination} (printer busy or not listening) (3 attempts)"
    assert pool.status()[printer.destination]["attempts"] == 3


@pytest_twisted.inlineCallbacks
def test_reset_mid_job_reports_the_bytes_written(reactor, tmp_path):
    printer = FakePrinter(reset_after=100_000)
    printer.listen()
    try:
        flow, _ = build(reactor, tmp_path, f'{{ type = "send_tcp", destination = "{printer.destination}", retries = 0 }}')
        j = yield flow.run(job(b"z" * 900_000))
        assert j.state == "failed"
        assert "reset mid-job" in j.error and "of 900000 bytes were written" in j.error
        written = int(j.error.split(" after ")[1].split(" of ")[0])
        assert 0 < written < 900_000
    finally:
        yield printer.stop()


@pytest_twisted.inlineCallbacks
def test_reset_is_retried_and_the_whole_job_resent(reactor, tmp_path):
    printer = FakePrinter(reset_after=50_000)
    printer.listen()
    printer.wait_for(1).addCallback(lambda _: setattr(printer, "reset_after", None))
    try:
        flow, _ = build(
            reactor, tmp_path,
            f'{{ type = "send_tcp", destination = "{printer.destination}", retry_delay = 0.01, wait_for_eof = true }}',
        )
        data = os.urandom(400_000)
        j = yield flow.run(job(data))
        assert j.state == "done", j.error
        assert printer.jobs[0].reset and printer.jobs[-1].bytes == data
    finally:
        yield printer.stop()


@pytest_twisted.inlineCallbacks
def test_disconnect_delay_is_honoured_when_the_printer_never_closes(reactor, tmp_path):
    printer = FakePrinter(reply=b"PAGES=1", close_on_eof=False)
    printer.listen()
    try:
        flow, _ = build(
            reactor, tmp_path,
            f'{{ type = "send_tcp", destination = "{printer.destination}", disconnect_delay = 0.3, save_reply = "r" }}',
        )
        started = time.monotonic()
        j = yield flow.run(job())
        elapsed = time.monotonic() - started
        assert j.state == "done", j.error
        assert j.variables["r"] == "PAGES=1"
        assert 0.28 <= elapsed < 2
    finally:
        yield printer.stop()


@pytest_twisted.inlineCallbacks
def test_eof_timeout_fails_with_reply_timeout_but_keeps_the_reply(reactor, tmp_path):
    printer = FakePrinter(reply=b"BUSY", close_on_eof=False)
    printer.listen()
    try:
        flow, _ = build(
            reactor, tmp_path,
            f'{{ type = "send_tcp", destination = "{printer.destination}", wait_for_eof = true, eof_timeout = 0.3, save_reply = "r" }}',
        )
        started = time.monotonic()
        j = yield flow.run(job(b"12345"))
        assert time.monotonic() - started >= 0.28
        assert j.state == "failed"
        assert j.error.startswith(f"reply timeout: {printer.destination} did not close the connection within 0.3 s")
        assert "all 5 bytes were written" in j.error
        assert j.variables["r"] == "BUSY"
    finally:
        yield printer.stop()


@pytest_twisted.inlineCallbacks
def test_without_half_close_the_printer_sees_no_eof_before_the_close(reactor, tmp_path):
    printer = FakePrinter(close_on_eof=False)
    printer.listen()
    try:
        flow, _ = build(
            reactor, tmp_path,
            f'{{ type = "send_tcp", destination = "{printer.destination}", half_close = false, disconnect_delay = 0.2 }}',
        )
        j = yield flow.run(job())
        assert j.state == "done", j.error
        assert printer.jobs[0].eof_at is None or printer.jobs[0].eof_at - printer.jobs[0].opened >= 0.15
    finally:
        yield printer.stop()


@pytest_twisted.inlineCallbacks
def test_connect_timeout(reactor, tmp_path):
    # A listener whose accept queue is full drops SYNs: connect times out.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        flow, _ = build(
            reactor, tmp_path,
            f'{{ type = "send_tcp", destination = "127.0.0.1:{port}", connect_timeout = 0.3, retries = 0 }}',
        )
        j = yield flow.run(job())
        assert j.state == "failed"
        assert j.error == f"connecting to 127.0.0.1:{port} timed out after 0.3 s"
    finally:
        for s in fillers:
            s.close()
        server.close()


@pytest_twisted.inlineCallbacks
def test_dns_failure(reactor, tmp_path):
    flow, _ = build(reactor, tmp_path, '{ type = "send_tcp", destination = "no-such-printer.invalid:9100", retries = 0 }')
    j = yield flow.run(job())
    assert j.state == "failed"
    assert j.error.startswith("cannot resolve 'no-such-printer.invalid' (no-such-printer.invalid:9100)")


@pytest_twisted.inlineCallbacks
def test_destination_outside_allowed_destinations_fails(reactor, tmp_path, printer):
    printer.listen()
    flow, _ = build(
        reactor, tmp_path, '{ type = "send_tcp", destination = "${host}:${port}" }',
        service='allowed_destinations = ["127.0.0.1:1-1000", "printers.example.com:9100"]',
    )
    j = yield flow.run(job(host="127.0.0.1", port=str(printer.port)))
    assert j.state == "failed"
    assert j.error == f"destination {printer.destination} is not in [service] allowed_destinations"
    assert printer.jobs == []


@pytest_twisted.inlineCallbacks
def test_default_allows_literal_destinations_and_loopback_only(reactor, tmp_path):
    flow, pool = build(reactor, tmp_path, '{ type = "send_tcp", destination = "${host}:9100" }')
    j = yield flow.run(job(host="192.0.2.7"))
    assert j.error == "destination 192.0.2.7:9100 is not in [service] allowed_destinations"
    assert pool.allow.allows_name(Destination.parse("[::1]:9100"))


@pytest_twisted.inlineCallbacks
def test_bad_rendered_destination_fails_the_action(reactor, tmp_path):
    flow, _ = build(reactor, tmp_path, '{ type = "send_tcp", destination = "${host}" }')
    j = yield flow.run(job(host="printer-without-port"))
    assert j.state == "failed"
    assert j.error.startswith("bad destination: 'printer-without-port' has no port")


@pytest.mark.parametrize(
    "action, service, expected",
    [
        ('{ type = "send_tcp", destination = "127.0.0.1:99999" }', "",
         "key 'destination': '127.0.0.1:99999': port 99999 is out of range 1-65535"),
        ('{ type = "send_tcp", destination = "::1:9100" }', "", "key 'destination': '::1:9100': write an IPv6 address in brackets"),
        ('{ type = "send_tcp", destination = "127.0.0.1:9100" }', 'allowed_destinations = ["10.0.0.0/33"]',
         "key 'allowed_destinations': [service] allowed_destinations: item 0: '10.0.0.0/33'"),
        ('{ type = "send_tcp", destination = "127.0.0.1:9100" }', 'allowed_destinations = ["host:9200-9100"]',
         "port range 9200-9100 is empty"),
        ('{ type = "send_tcp", destination = "10.1.2.3:9100" }', 'allowed_destinations = ["127.0.0.1"]',
         "key 'destination': 10.1.2.3:9100 is not in [service] allowed_destinations"),
        ('{ type = "send_tcp", destination = "x:1", save_reply = "9bad" }', "", "key 'save_reply'"),
        ('{ type = "send_tcp", destination = "x:1", retries = -1 }', "", "key 'retries': must be 0 or more"),
    ],
)
def test_config_errors_name_the_key(tmp_path, action, service, expected):
    with pytest.raises(ConfigError) as info:
        build(None, tmp_path, action, service)
    assert expected in str(info.value)


def test_retry_delay_longer_than_max_retry_delay_is_a_config_error(tmp_path):
    from rawsvc.config import loads
    from rawsvc.context import BuildContext
    from rawsvc.errors import ConfigError

    text = (
        f'[service]\nstate_dir = "{tmp_path}"\nspool = false\n[[flow]]\nname = "f"\n'
        'actions = [ { type = "send_tcp", destination = "127.0.0.1:9100", retry_delay = 60, max_retry_delay = 1 } ]\n'
    )
    with pytest.raises(ConfigError) as e:
        loads(text, "x.toml", BuildContext())
    assert "key 'retry_delay': 60 s is longer than max_retry_delay (1 s)" in str(e.value)


@pytest_twisted.inlineCallbacks
def test_outbound_connections_log_no_factory_start_or_stop_lines(reactor, tmp_path, printer):
    """Issue 19: one line per event an operator cares about, none per connection's factory."""
    from twisted.logger import formatEvent, globalLogPublisher

    printer.listen()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    refusing = f"127.0.0.1:{closed.getsockname()[1]}"
    closed.close()  # nothing listens there: refused
    flow, _ = build(
        reactor, tmp_path,
        f'{{ type = "send_tcp", destination = "${{to}}", wait_for_eof = true, retries = 1, retry_delay = 0.01 }}',
        service=f'allowed_destinations = ["{printer.destination}", "{refusing}"]',
    )
    lines: list[str] = []

    def observe(event):
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        done = yield flow.run(job(b"one", to=printer.destination))
        again = yield flow.run(job(b"two", to=printer.destination))
        refused = yield flow.run(job(b"three", to=refusing))
        yield sleep(reactor, 0.05)  # the connections' last events
    finally:
        globalLogPublisher.removeObserver(observe)
    assert (done.state, again.state, refused.state) == ("done", "done", "failed")
    assert sum("attempt 1: delivered" in line for line in lines) == 2  # the capture sees the pool's lines
    assert sum("attempt 2: refused" in line for line in lines) == 1
    assert [line for line in lines if "Starting factory" in line or "Stopping factory" in line] == []
