"""
No needless reprint: a printer that resets the connection after its kernel
acknowledged every byte has the job; sending it again would print it twice.
Only a reset while bytes were still unacknowledged is retried.

The printers here are plain blocking sockets in a thread that read, then
close with C{SO_LINGER} (1, 0), which sends a reset instead of a FIN.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time

import pytest
import pytest_twisted

from rawsvc.compat import AckProbe
from rawsvc.config import loads
from rawsvc.context import BuildContext
from rawsvc.job import Job, Payload


class ResettingPrinter:
    """
    Accepts connections one at a time; reads until EOF (C{mode="eof"}) or
    until C{half} bytes (C{mode="half"}, only for the first connection),
    then resets.  C{received} holds each connection's bytes.
    """

    def __init__(self, mode: str = "eof", half: int = 0) -> None:
        self.mode = mode
        self.half = half
        self.received: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def destination(self) -> str:
        return f"127.0.0.1:{self.port}"

    def printed(self, job: bytes) -> int:
        """Connections that took the whole job (a printer prints those)."""
        return sum(1 for r in self.received if r == job)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(10)
            got = bytearray()
            try:
                limit = self.half if self.mode == "half" and not self.received else None
                while limit is None or len(got) < limit:
                    chunk = conn.recv(min(65536, limit - len(got)) if limit else 65536)
                    if not chunk:
                        break
                    got += chunk
            except OSError:
                pass
            self.received.append(bytes(got))
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(5)


@pytest.fixture
def resetting():
    printers: list[ResettingPrinter] = []

    def make(**kw) -> ResettingPrinter:
        p = ResettingPrinter(**kw)
        printers.append(p)
        return p

    yield make
    for p in printers:
        p.stop()


def flow_to(reactor, tmp_path, printer: ResettingPrinter, extra: str):
    text = f"""
[service]
state_dir = "{tmp_path}/state"
spill_threshold = 65536

[[flow]]
name = "f"
actions = [ {{ type = "send_tcp", destination = "{printer.destination}", retry_delay = 0.05, max_retry_delay = 0.1, {extra} }} ]
"""
    return loads(text, context=BuildContext(reactor=reactor)).flows["f"]


def job_of(data: bytes, tmp_path) -> Job:
    j = Job("test", Payload(spool_dir=str(tmp_path), threshold=65536))
    j.payload.write(data)
    j.payload.close()
    return j


@pytest.mark.parametrize("extra", ["wait_for_eof = true", "disconnect_delay = 1"])
@pytest_twisted.inlineCallbacks
def test_ten_small_jobs_to_a_printer_that_resets_after_eof_print_once_each(reactor, tmp_path, resetting, extra):
    printer = resetting(mode="eof")
    flow = flow_to(reactor, tmp_path, printer, extra)
    jobs = [f"label {i:02d} ".encode() + bytes(range(256))[: 100 - 9] for i in range(10)]
    states = []
    for data in jobs:
        j = yield flow.run(job_of(data, tmp_path))
        states.append((j.state, j.error))
    assert states == [("done", None)] * 10
    assert [printer.printed(d) for d in jobs] == [1] * 10  # before the fix: up to 4 each
    assert len(printer.received) == 10


@pytest_twisted.inlineCallbacks
def test_a_large_streamed_job_to_a_printer_that_resets_after_eof_prints_once(reactor, tmp_path, resetting):
    printer = resetting(mode="eof")
    flow = flow_to(reactor, tmp_path, printer, "wait_for_eof = true")
    data = os.urandom(5 << 20)
    j = job_of(data, tmp_path)
    assert not j.payload.in_memory  # streamed from its spill file
    j = yield flow.run(j)
    assert (j.state, j.error) == ("done", None)
    assert printer.printed(data) == 1 and len(printer.received) == 1


@pytest_twisted.inlineCallbacks
def test_a_reset_halfway_is_retried_and_the_whole_job_prints_once(reactor, tmp_path, resetting):
    data = os.urandom(3 << 20)
    printer = resetting(mode="half", half=1 << 20)
    flow = flow_to(reactor, tmp_path, printer, "wait_for_eof = true")
    j = yield flow.run(job_of(data, tmp_path))
    assert (j.state, j.error) == ("done", None)
    assert len(printer.received) == 2, [len(r) for r in printer.received]
    assert len(printer.received[0]) == 1 << 20  # the first attempt was cut off
    assert printer.printed(data) == 1  # the retry sent the whole job


def test_the_probe_counts_acknowledged_bytes_after_a_reset(resetting):
    """
    The compatibility check: TCP_INFO's byte count survives the reset that
    empties the send queue, read through a duplicate of the descriptor.
    """
    printer = resetting(mode="eof")
    s = socket.create_connection(("127.0.0.1", printer.port))

    class Transport:  # what AckProbe asks of a transport
        def getHandle(self):
            return s

    probe = AckProbe.of(Transport())
    assert probe.acked() == 0
    s.sendall(b"x" * 100_000)
    deadline = time.monotonic() + 5
    while probe.acked() != 100_000 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert probe.acked() == 100_000
    s.shutdown(socket.SHUT_WR)
    with pytest.raises(ConnectionResetError):
        while s.recv(100):
            pass
    s.close()  # as Twisted does before telling the protocol
    assert probe.acked() in (100_000, 100_001)  # and perhaps our FIN
    probe.close()
