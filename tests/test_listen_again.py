"""
Listening again on real sockets: a printer whose port number was taken
while its port was closed logs it and listens again once it is free; a
printer whose port is taken at start fails the start; a paused tcp trigger
whose port was taken stays closed and says why.
"""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, globalLogPublisher

from printer_support import archive_flow, archived, printer, wait_for
from rawsvc.errors import ListenError
from rawsvc.triggers.port_machine import RELISTEN_DELAY
from pg_support import free_port as _free_port
from support import port_of, recv_all, start_service


@pytest.fixture
def logged():
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def _errors(events: list[dict]) -> list[dict]:
    return [e for e in events if e.get("log_level") == LogLevel.error]


def _squat(port: int) -> socket.socket:
    """Listen on C{port} ourselves (beside the printer's accepted connection: SO_REUSEADDR)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


def _print(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        return recv_all(s)


@pytest_twisted.inlineCallbacks
def test_a_printer_port_taken_while_closed_is_listened_on_again_once_free(service_factory, tmp_path, logged):
    jobs = tmp_path / "jobs"
    svc = service_factory(printer(busy="refuse") + archive_flow(jobs))
    trigger = svc.triggers["p"]
    port = port_of(svc, "p")
    first = socket.create_connection(("127.0.0.1", port), timeout=5)
    squatter = None
    try:
        yield deferToThread(first.sendall, b"first")
        yield wait_for(lambda: trigger.port is None)  # busy = refuse: the port closes
        yield trigger.port_settled()
        squatter = _squat(port)
        first.shutdown(socket.SHUT_WR)
        assert (yield deferToThread(recv_all, first)) == b""
        yield wait_for(lambda: _errors(logged), timeout=5)
        [line] = _errors(logged)
        assert line["log_format"].startswith("trigger {trigger}: cannot listen again on {listen}")
        assert "Address already in use" in line["e"] and line["s"] == RELISTEN_DELAY
        assert trigger.port is None and not trigger.listening
    finally:
        first.close()
        if squatter is not None:
            squatter.close()
    yield wait_for(lambda: trigger.port is not None, timeout=5 * RELISTEN_DELAY)
    assert trigger.port.getHost().port == port and trigger.listening
    yield deferToThread(_print, port, b"second")
    yield wait_for(lambda: archived(jobs) == [b"first", b"second"])


def test_a_printer_whose_port_is_taken_at_start_fails_the_start(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        text = printer(listen=f"tcp:{port}:interface=127.0.0.1") + archive_flow(tmp_path / "jobs")
        with pytest.raises(ListenError) as caught:
            start_service(tmp_path, text)
    assert str(caught.value) == (f"trigger 'p' cannot listen on 'tcp:{port}:interface=127.0.0.1': "
                                 f"Couldn't listen on 127.0.0.1:{port}: [Errno 98] Address already in use.")


@pytest_twisted.inlineCallbacks
def test_a_paused_tcp_trigger_whose_port_was_taken_stays_closed_and_says_why(service_factory, logged):
    port = _free_port()
    listen = f"tcp:{port}:interface=127.0.0.1"
    svc = service_factory(
        f'[[trigger]]\nname = "t"\ntype = "tcp"\nlisten = "{listen}"\nflow = "f"\n'
        '[[flow]]\nname = "f"\nactions = [ { type = "log" } ]\n'
    )
    trigger = svc.triggers["t"]
    yield trigger.pause()
    assert not trigger.listening
    with _squat(port):
        with pytest.raises(ListenError, match="cannot listen on"):  # the caller (the manhole) hears why
            yield trigger.resume()
        assert not trigger.listening and trigger.port is None
    [line] = _errors(logged)
    assert line["error"] == (f"trigger 't' cannot listen on '{listen}': "
                             f"Couldn't listen on 127.0.0.1:{port}: [Errno 98] Address already in use.")
    yield trigger.pause()
    yield trigger.resume()
    assert trigger.listening and trigger.port.getHost().port == port
