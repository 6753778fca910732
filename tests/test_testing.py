"""rawsvc.testing is public: its fake sender drives a real trigger."""

from __future__ import annotations

import pytest
import pytest_twisted

from rawsvc.testing import send_job
from support import port_of, start_service


@pytest_twisted.inlineCallbacks
def test_send_job_gets_the_triggers_reply(reactor, tmp_path):
    svc = start_service(
        tmp_path,
        '[[trigger]]\nname = "t"\ntype = "tcp"\nlisten = "tcp:0:interface=127.0.0.1"\nflow = "f"\n'
        '[[flow]]\nname = "f"\nactions = [ { type = "reply", data = "OK ${size}\\n" } ]\n',
    )
    try:
        reply = yield send_job(reactor, f"tcp:127.0.0.1:{port_of(svc, 't')}", b"hello")
        assert reply == b"OK 5\n"
    finally:
        yield svc.stopService()


@pytest_twisted.inlineCallbacks
def test_send_job_fails_when_nothing_listens(reactor):
    import socket

    from twisted.internet.error import ConnectionRefusedError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        yield send_job(reactor, f"tcp:127.0.0.1:{port}", b"x")


# Helpers for plugin authors ---------------------------------------------------------


def test_run_framer_collects_jobs_meta_and_the_unterminated_tail():
    from rawsvc.testing import FramedJob, run_framer
    from rawsvc.triggers.framing import DelimiterFramer

    run = run_framer(DelimiterFramer(b"\n"), [b"a\nb", b"c\n\nrest"])
    assert run.jobs == [FramedJob(b"a"), FramedJob(b"bc"), FramedJob(b"")]
    assert run.pending == b"rest" and run.replies == b"" and run.dropped == []


def test_run_framer_every_split_catches_a_framer_that_depends_on_the_split():
    from zope.interface import implementer

    from rawsvc.interfaces import IFramer
    from rawsvc.testing import run_framer_every_split
    from rawsvc.triggers.framing import END, Data

    @implementer(IFramer)
    class ChunkIsAJob:  # wrong: TCP may split a message anywhere
        def feed(self, data):
            return [Data(data), END]

        def end_of_input(self, how):
            return []

    with pytest.raises(AssertionError, match="fed byte by byte"):
        run_framer_every_split(ChunkIsAJob, b"abc")


def test_run_framer_every_split_passes_a_correct_framer():
    from rawsvc.testing import run_framer_every_split
    from rawsvc.triggers.framing import DelimiterFramer

    run = run_framer_every_split(lambda: DelimiterFramer(b"\r\n"), b"one\r\ntwo\r\n")
    assert run.payloads == [b"one", b"two"]


def test_load_trigger_and_connect_drive_a_trigger_without_sockets(tmp_path):
    from rawsvc.testing import connect, load_trigger

    trigger = load_trigger("tcp", tmp_path, execute_on="delimiter", delimiter="\n", refusal="NO ${reason}\n")
    proto, transport = connect(trigger)
    proto.dataReceived(b"hello\n")
    assert trigger.sink.payloads == [b"hello"]
    trigger.sink.finish(0, reply=b"OK\n")
    assert transport.value() == b"OK\n"
    trigger.reactor.advance(300)  # the trigger runs on the helper's Clock: idle_timeout
    assert transport.value() == b"OK\nNO idle for 300 s (idle_timeout)\n" and transport.disconnecting


@pytest_twisted.inlineCallbacks
def test_start_service_runs_a_real_service_on_loopback(reactor, tmp_path):
    from rawsvc.testing import start_service

    running = start_service(
        '[[trigger]]\nname = "t"\ntype = "tcp"\nlisten = "tcp:0:interface=127.0.0.1"\nflow = "f"\n'
        '[[flow]]\nname = "f"\nactions = [ { type = "reply", data = "GOT ${data}" } ]\n',
        tmp_path / "state",
    )
    try:
        assert (yield send_job(reactor, running.endpoint("t"), b"x")) == b"GOT x"
    finally:
        yield running.stop()


# FakePrinter: one connection at a time -------------------------------------------


def _raw_connect(port):
    import socket

    return socket.create_connection(("127.0.0.1", port), timeout=5)


@pytest_twisted.inlineCallbacks
def test_an_exclusive_fake_printer_resets_and_counts_a_second_concurrent_connection(reactor):
    from twisted.internet.task import deferLater

    from rawsvc.testing import FakePrinter

    closed = []
    printer = FakePrinter(exclusive=True, on_closed=closed.append)
    port = printer.listen()
    first = _raw_connect(port)
    try:
        first.sendall(b"first job")
        yield deferLater(reactor, 0.1, lambda: None)
        second = _raw_connect(port)  # the printer is busy with the first
        second.sendall(b"second job")
        yield deferLater(reactor, 0.1, lambda: None)
        with pytest.raises(ConnectionResetError):
            second.recv(10)
        second.close()
        first.shutdown(1)  # SHUT_WR: the first job ends
        yield printer.wait_for(1)
        assert first.recv(10) == b""
    finally:
        first.close()
        yield printer.stop()
    assert printer.printed == [b"first job"]  # the second sender's bytes are no job
    assert [j.overlapped for j in printer.overlaps] == [True] and printer.max_active == 1
    assert [j.bytes for j in closed] == [b"first job"]


@pytest_twisted.inlineCallbacks
def test_a_shared_fake_printer_takes_a_second_connection_and_still_counts_it(reactor):
    from twisted.internet.task import deferLater

    from rawsvc.testing import FakePrinter

    printer = FakePrinter()
    port = printer.listen()
    a, b = _raw_connect(port), _raw_connect(port)
    try:
        a.sendall(b"a")
        b.sendall(b"b")
        yield deferLater(reactor, 0.1, lambda: None)
        a.shutdown(1)
        b.shutdown(1)
        yield printer.wait_for(2)
    finally:
        a.close()
        b.close()
        yield printer.stop()
    assert sorted(printer.printed) == [b"a", b"b"]
    assert len(printer.overlaps) == 1 and printer.max_active == 2


@pytest_twisted.inlineCallbacks
def test_a_fake_printer_with_close_delay_answers_and_closes_that_long_after_eof(reactor):
    from rawsvc.testing import FakePrinter

    printer = FakePrinter(reply=b"done", close_delay=0.3)
    port = printer.listen()
    conn = _raw_connect(port)
    try:
        conn.sendall(b"job")
        conn.shutdown(1)
        [job] = yield printer.wait_for(1)
        assert conn.recv(10) == b"done"
    finally:
        conn.close()
        yield printer.stop()
    assert job.bytes == b"job" and job.closed - job.eof_at >= 0.29


@pytest_twisted.inlineCallbacks
def test_a_printer_that_refuses_when_busy_refuses_a_second_sender_before_it_sends_a_byte(reactor):
    """
    The cluster farm's printers (refuse_when_busy): while one job's
    connection is open a second sender's connect is refused, so nothing it
    writes can be acknowledged and lost; the same port takes the next job
    once the first one ended, also when its sender reset it.
    """
    import socket
    import struct

    from twisted.internet.task import deferLater

    from rawsvc.testing import FakePrinter

    printer = FakePrinter(refuse_when_busy=True)
    port = printer.listen()
    first = _raw_connect(port)
    try:
        first.sendall(b"first job")
        yield deferLater(reactor, 0.1, lambda: None)
        with pytest.raises(ConnectionRefusedError):
            _raw_connect(port)
        first.shutdown(1)  # SHUT_WR: the first job ends, the printer closes
        yield printer.wait_for(1)
        assert first.recv(10) == b""
        second = _raw_connect(port)  # the same port listens again
        yield deferLater(reactor, 0.1, lambda: None)
        second.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        second.close()  # a sender that resets: free again too
        yield printer.wait_for(2)
        third = _raw_connect(port)
        third.sendall(b"third job")
        third.shutdown(1)
        yield printer.wait_for(3)
        third.close()
    finally:
        first.close()
        yield printer.stop()
    assert printer.printed == [b"first job", b"third job"]
    assert len(printer.jobs) == 3 and printer.overlaps == [] and printer.max_active == 1
