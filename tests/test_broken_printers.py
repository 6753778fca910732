"""
send_tcp against broken printers (real listeners on loopback): one that
resets 10% of connections mid-job, one that accepts but never reads, one
that trickles its replies.  Every job ends delivered byte-identical (the
printer's recorded bytes) or failed with a clear ${error} after its
retries, and nothing hangs.

Jobs go end to end: a client sends each job to a tcp trigger whose flow
forwards it with send_tcp and replies "OK" or "FAIL ${error}".
"""

from __future__ import annotations

import json
import random
import selectors
import socket
import struct
import time

import pytest
import pytest_twisted
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from zope.interface import implementer

from support import port_of


# Broken printers ---------------------------------------------------------------------


@implementer(IHalfCloseableProtocol)
class _BrokenProtocol(Protocol):
    def __init__(self, printer: "BrokenPrinter", index: int) -> None:
        self.printer = printer
        self.index = index
        self.data = bytearray()
        self.reset = False
        self.trickle: object = None

    def connectionMade(self) -> None:
        self.printer.open.add(self)
        if self.printer.never_read:
            self.transport.pauseProducing()  # accept, then never read a byte

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if self.index in self.printer.reset_connections and len(self.data) >= self.printer.reset_after and not self.reset:
            self.reset = True
            self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abortConnection()

    def readConnectionLost(self) -> None:
        reply = self.printer.reply
        if not self.printer.trickle_every:
            self.transport.write(reply)
            self.transport.loseConnection()
            return
        from twisted.internet.task import LoopingCall

        remaining = list(reply)

        def one_byte():
            if not remaining:
                self.trickle.stop()
                self.transport.loseConnection()
                return
            self.transport.write(bytes([remaining.pop(0)]))

        self.trickle = LoopingCall(one_byte)
        self.trickle.start(self.printer.trickle_every)

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()

    def connectionLost(self, reason=None) -> None:
        if self.trickle is not None and self.trickle.running:
            self.trickle.stop()
        self.printer.open.discard(self)
        self.printer.finished.append(self)


class BrokenPrinter(Factory):
    """
    A recording printer that misbehaves: C{reset_connections} (indexes)
    reset after C{reset_after} bytes; C{never_read} never reads; replies
    are written once the sender half-closes, one byte every
    C{trickle_every} seconds when set, then the printer closes (AppSocket).
    """

    def __init__(self, reset_connections=(), reset_after=4096, never_read=False, reply=b"", trickle_every=0.0):
        self.reset_connections = set(reset_connections)
        self.reset_after = reset_after
        self.never_read = never_read
        self.reply = reply
        self.trickle_every = trickle_every
        self.count = 0
        self.open: set[_BrokenProtocol] = set()
        self.finished: list[_BrokenProtocol] = []
        self.port = None

    def buildProtocol(self, addr):
        p = _BrokenProtocol(self, self.count)
        self.count += 1
        return p

    def listen(self, reactor) -> str:
        self.port = reactor.listenTCP(0, self, interface="127.0.0.1")
        # Small receive buffers: a printer that stops reading stops the sender within kilobytes.
        self.port.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 10)
        return f"127.0.0.1:{self.port.getHost().port}"

    def stop(self):
        for p in list(self.open):
            p.transport.abortConnection()
        return self.port.stopListening()

    def delivered(self) -> list[bytes]:
        """What arrived on connections that were not reset."""
        return [bytes(p.data) for p in self.finished if not p.reset]


@pytest.fixture
def printers(reactor):
    made = []

    def make(**kw) -> BrokenPrinter:
        p = BrokenPrinter(**kw)
        made.append(p)
        return p

    yield make
    for p in made:
        pytest_twisted.blockon(p.stop())


def forwarding_service(factory, destination: str, **send) -> tuple:
    send = {"type": "send_tcp", "destination": destination, "connect_timeout": 2, "retries": 3,
            "retry_delay": 0.05, "max_retry_delay": 0.2, "wait_for_eof": True, "eof_timeout": 5, **send}
    action = "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in send.items()) + " }"
    svc = factory(
        f"""
[[trigger]]
name = "in"
type = "tcp"
listen = "tcp:0:interface=127.0.0.1"
flow = "forward"
job_timeout = 0
idle_timeout = 120

[[flow]]
name = "forward"
actions = [ {action}, {{ type = "reply", data = "OK ${{job_id}}" }} ]
on_error = [ {{ type = "reply", data = "FAIL ${{error}}" }} ]
"""
    )
    return svc, port_of(svc, "in")


def send_jobs(port: int, jobs: list[bytes], timeout: float) -> list[bytes]:
    """Send every job on its own connection at once, half-close, collect each reply."""
    sel = selectors.DefaultSelector()
    replies: dict[int, bytearray] = {}
    for i, job in enumerate(jobs):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(job)
        s.shutdown(socket.SHUT_WR)
        s.setblocking(False)
        replies[i] = bytearray()
        sel.register(s, selectors.EVENT_READ, i)
    open_ = len(jobs)
    deadline = time.monotonic() + timeout
    while open_ and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.1):
            data = key.fileobj.recv(65536)
            if data:
                replies[key.data] += data
            else:
                sel.unregister(key.fileobj)
                key.fileobj.close()
                open_ -= 1
    for key in list(sel.get_map().values()):
        key.fileobj.close()
    sel.close()
    return [bytes(replies[i]) if i < len(jobs) else b"" for i in range(len(jobs))]


def make_jobs(count: int, seed: int, sizes=(1 << 10, 256 << 10)) -> list[bytes]:
    rnd = random.Random(seed)
    return [f"JOB{i:04d}|".encode() + rnd.randbytes(rnd.randint(*sizes)) for i in range(count)]


def judge(jobs, replies, printer) -> dict:
    """Every job delivered byte-identical or failed clearly; return the tallies."""
    arrived = printer.delivered()
    tally = {"delivered": 0, "failed": 0, "errors": set()}
    for job, reply in zip(jobs, replies):
        if reply.startswith(b"OK "):
            assert arrived.count(job) >= 1, f"{job[:8]!r} reported delivered but never arrived intact"
            tally["delivered"] += 1
        else:
            assert reply.startswith(b"FAIL "), f"{job[:8]!r}: no verdict (hung?): {reply[:200]!r}"
            error = reply[5:].decode()
            assert "127.0.0.1:" in error, error  # names the printer
            tally["failed"] += 1
            tally["errors"].add(error.split(" after ")[0].split(" (")[0])
    return tally


# Tests -------------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_printer_resetting_one_connection_in_ten_mid_job(service_factory, printers, reactor):
    count = 50
    printer = printers(reset_connections=range(3, 1000, 10), reset_after=4096, reply=b"DONE")
    svc, port = forwarding_service(service_factory, printer.listen(reactor))
    jobs = make_jobs(count, seed=1, sizes=(1 << 10, 2 << 20))
    started = time.monotonic()
    replies = yield deferToThread(send_jobs, port, jobs, 60.0)
    took = time.monotonic() - started
    tally = judge(jobs, replies, printer)
    resets = sum(p.reset for p in printer.finished)
    print(
        f"\n[resets] {count} jobs ({sum(map(len, jobs)) >> 10} KiB) in {took:.2f} s: delivered "
        f"byte-identical {tally['delivered']}, failed {tally['failed']} {sorted(tally['errors'])}; "
        f"printer connections {printer.count}, of them reset mid-job {resets}"
    )
    assert tally["delivered"] + tally["failed"] == count
    assert resets >= 4
    assert tally["delivered"] >= count - resets  # a reset costs a retry, at most the job
    assert printer.count == count + resets or tally["failed"]


@pytest_twisted.inlineCallbacks
def test_printer_that_never_reads_fails_every_job_clearly_without_hanging(service_factory, printers, reactor):
    printer = printers(never_read=True)
    svc, port = forwarding_service(
        service_factory, printer.listen(reactor), retries=1, eof_timeout=1, send_timeout=1
    )
    # Small jobs fit the kernel's buffers (the EOF never comes); large ones fill them
    # (in memory, and spilled to a file past spill_threshold and streamed).
    jobs = [b"small" * 20, b"M" * (512 << 10), b"F" * (3 << 20)]
    started = time.monotonic()
    replies = yield deferToThread(send_jobs, port, jobs, 60.0)
    took = time.monotonic() - started
    tally = judge(jobs, replies, printer)
    print(
        f"\n[never reads] {len(jobs)} jobs ({sum(map(len, jobs)) >> 10} KiB) in {took:.2f} s: "
        f"failed {tally['failed']} with {sorted(tally['errors'])}; replies {[r[:120] for r in replies]}"
    )
    assert tally["failed"] == len(jobs)
    assert took < 30


@pytest_twisted.inlineCallbacks
def test_printer_trickling_its_replies_is_waited_for_within_eof_timeout(service_factory, printers, reactor):
    count = 10
    printer = printers(reply=b"PAGES=1", trickle_every=0.05)
    svc, port = forwarding_service(service_factory, printer.listen(reactor), save_reply="answer", eof_timeout=2)
    jobs = make_jobs(count, seed=2, sizes=(100, 20 << 10))
    started = time.monotonic()
    replies = yield deferToThread(send_jobs, port, jobs, 60.0)
    took = time.monotonic() - started
    tally = judge(jobs, replies, printer)
    answers = [j.variables.get("answer") for j in svc.sink.history]
    print(
        f"\n[trickled replies] {count} jobs in {took:.2f} s (replies of 7 bytes at 20 bytes/s, "
        f"one printer connection at a time): delivered byte-identical {tally['delivered']}, "
        f"failed {tally['failed']}; back-channel kept intact {answers.count('PAGES=1')}"
    )
    assert tally["delivered"] == count
    assert answers.count("PAGES=1") == count


@pytest_twisted.inlineCallbacks
def test_printer_trickling_past_eof_timeout_fails_with_a_reply_timeout(service_factory, printers, reactor):
    printer = printers(reply=b"X" * 40, trickle_every=0.1)  # 4 s of reply
    svc, port = forwarding_service(service_factory, printer.listen(reactor), save_reply="answer", eof_timeout=0.5)
    jobs = make_jobs(3, seed=3, sizes=(100, 1000))
    started = time.monotonic()
    replies = yield deferToThread(send_jobs, port, jobs, 30.0)
    took = time.monotonic() - started
    tally = judge(jobs, replies, printer)
    print(f"\n[trickle past eof_timeout] {len(jobs)} jobs in {took:.2f} s: {sorted(tally['errors'])}")
    assert tally["failed"] == len(jobs)
    assert all(b"reply timeout" in r for r in replies)
    assert took < 10
