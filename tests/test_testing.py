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
