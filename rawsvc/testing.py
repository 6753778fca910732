"""
Test doubles for rawsvc users and for rawsvc's own tests: test a plugin the
way rawsvc tests its own triggers and actions.

L{FakePrinter} is a real TCP listener (on loopback) that records every job
it receives byte for byte, answers on the back-channel, and can behave like
a busy, broken or slow printer: refuse connections, reset mid-job, or never
close.  Given a L{FakeStatus}, it answers status queries (Zebra C{~HS},
C{@PJL INFO STATUS}) from conditions a test switches (paper out, paused,
head open, ribbon out, offline), as a printer whose state a pre-flight
check asks.

L{send_job} is the fake sender: it connects to a trigger the way label
software or C{nc -N} does, sends one job, half-closes (or not), and fires
with everything the trigger answered until it closed.

For a framer (L{rawsvc.interfaces.IFramer}): L{run_framer} and
L{run_framer_every_split}.  For a trigger's connections without sockets:
L{load_trigger}, L{connect}, L{StubSink}, L{StubTransport}.  For a real
service on loopback: L{start_service}.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from typing import Any, cast

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from rawsvc._testing import (
    FramedJob,
    FramerRun,
    HeldJob,
    RunningService,
    StubSink,
    StubTransport,
    connect,
    load_trigger,
    run_framer,
    run_framer_every_split,
    start_service,
)
from rawsvc.compat import stream_transport

__all__ = [
    "FakePrinter", "FakeStatus", "FramedJob", "FramerRun", "HeldJob", "ReceivedJob", "RunningService", "StubSink",
    "StubTransport", "connect", "load_trigger", "run_framer", "run_framer_every_split", "send_job",
    "start_service",
]

log = Logger(namespace="rawsvc.testing")

# --- FakePrinter (the outbound client's peer) ---------------------------------


@attrs.define(eq=False)
class ReceivedJob:
    """One connection to a L{FakePrinter}: what arrived, and when."""

    peer: str
    opened: float
    data: bytearray = attrs.field(factory=bytearray)
    eof_at: float | None = None
    closed: float | None = None
    reset: bool = False
    #: The status queries it answered ("~HS", "@PJL INFO STATUS"); their bytes are not in C{data}.
    queries: list[str] = attrs.field(factory=list)
    #: It opened while another connection to the same printer was open.
    overlapped: bool = False

    @property
    def bytes(self) -> bytes:
        return bytes(self.data)


_UEL = b"\x1b%-12345X"
_STX, _ETX, _CRLF = b"\x02", b"\x03", b"\r\n"


@attrs.define
class FakeStatus:
    """
    The conditions of a L{FakePrinter} that answers status queries; switch
    them while a test runs.  C{pjl_code} overrides the PJL status code.
    """

    paper_out: bool = False
    paused: bool = False
    head_open: bool = False
    ribbon_out: bool = False
    offline: bool = False
    pjl_code: int | None = None

    @property
    def ready(self) -> bool:
        return not (self.paper_out or self.paused or self.head_open or self.ribbon_out or self.offline)

    def host_status(self) -> bytes:
        """The Zebra C{~HS} answer: three C{STX fields ETX CR LF} lines, in one piece."""
        line1 = f"030,{int(self.paper_out)},{int(self.paused or self.offline)},1245,000,0,0,0,000,0,0,0"
        line2 = f"000,0,{int(self.head_open)},{int(self.ribbon_out)},1,2,6,0,00000000,1,000"
        return b"".join(_STX + line.encode("ascii") + _ETX + _CRLF for line in (line1, line2, "1234,0"))

    def pjl_status(self) -> bytes:
        """The C{@PJL INFO STATUS} reply (header, CODE, DISPLAY, ONLINE, form feed)."""
        if self.pjl_code is not None:
            code, display = self.pjl_code, f"{self.pjl_code}"
        elif self.paper_out:
            code, display = 41100, "LOAD PAPER"
        elif self.head_open:
            code, display = 40021, "CLOSE COVER"
        elif self.offline or self.paused:
            code, display = 10002, "OFFLINE"
        else:
            code, display = 10001, "00 READY"
        online = "FALSE" if self.offline or self.paused else "TRUE"
        return (f'@PJL INFO STATUS\r\nCODE={code}\r\nDISPLAY="{display}"\r\nONLINE={online}\r\n\x0c'
                .encode("ascii"))

    def answer(self, data: bytes) -> tuple[bytes, bytes, list[str]]:
        """
        C{data} without the status queries in it (as rawsvc's pre-flight
        sends them: C{~HS}; C{@PJL INFO STATUS} between UELs), the answers,
        and the queries' names.
        """
        answers: list[bytes] = []
        names: list[str] = []
        pjl = _UEL + b"@PJL INFO STATUS\r\n" + _UEL
        while pjl in data:
            data = data.replace(pjl, b"", 1)
            answers.append(self.pjl_status())
            names.append("@PJL INFO STATUS")
        while b"~HS" in data:
            data = data.replace(b"~HS", b"", 1)
            answers.append(self.host_status())
            names.append("~HS")
        return data, b"".join(answers), names


@implementer(IHalfCloseableProtocol)
class _FakePrinterProtocol(Protocol):
    def __init__(self, printer: "FakePrinter") -> None:
        self.printer = printer
        self.job: ReceivedJob | None = None
        self._delayed: Any = None

    def connectionMade(self) -> None:
        peer = stream_transport(self).getPeer()
        self.job = ReceivedJob(f"{peer.host}:{peer.port}", time.monotonic())
        if not self.printer._opened(self):
            self.reset()
            return
        if self.printer.greeting:
            stream_transport(self).write(self.printer.greeting)

    def dataReceived(self, data: bytes) -> None:
        assert self.job is not None
        if self.job.overlapped and self.printer.exclusive:
            return
        status = self.printer.status
        if status is not None:
            data, answer, names = status.answer(data)
            self.job.queries += names
            if answer:
                stream_transport(self).write(answer)
        self.job.data += data
        limit = self.printer.reset_after
        if limit is not None and len(self.job.data) >= limit and not self.job.reset:
            self.reset()

    def reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0), like a printer giving up."""
        assert self.job is not None
        self.job.reset = True
        try:
            # A FakePrinter listens on plain TCP: the handle is the socket.
            sock = cast(socket.socket, stream_transport(self).getHandle())
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        except OSError:
            pass
        stream_transport(self).abortConnection()

    def readConnectionLost(self) -> None:
        assert self.job is not None
        self.job.eof_at = time.monotonic()
        if self.printer.close_delay:
            self._delayed = self.printer.reactor.callLater(self.printer.close_delay, self._job_done)
        else:
            self._job_done()

    def _job_done(self) -> None:
        self._delayed = None
        if self.printer.reply:
            stream_transport(self).write(self.printer.reply)
        if self.printer.close_on_eof:
            # Listening again before the close: whoever learns of the job's end from it finds the
            # printer ready (a sender that connects before the close is a real second connection).
            self.printer._free()
            stream_transport(self).loseConnection()

    def writeConnectionLost(self) -> None:
        stream_transport(self).loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if self._delayed is not None and self._delayed.active():
            self._delayed.cancel()
        self._delayed = None
        self.printer._closed(self)


class FakePrinter(Factory):
    """
    A recording raw-TCP printer.

    @param reply: written once the sender half-closes (the job's end).
    @param greeting: written as soon as a connection opens (a status line a
        printer sends unasked).
    @param close_on_eof: close after the sender's EOF (AppSocket style); when
        false the printer never closes, and the sender must.
    @param reset_after: reset the connection once this many bytes arrived.
    @param status: answer status queries from these conditions (L{FakeStatus}).
    @param close_delay: seconds between the sender's EOF and the reply and
        close (a printer busy printing the job).
    @param exclusive: take one connection at a time, as a real printer
        does: a connection that opens while another is open is reset at once
        and is not a job (it is in C{overlaps} all the same).
    @param refuse_when_busy: take one connection at a time by not listening
        while one is open, as an AppSocket printer that is busy does (CUPS'
        socket backend reads "connection refused" as busy): a second sender
        is refused before it sends a byte.  The listening port is the same
        again once the connection ends (implies C{exclusive}, for a second
        connection accepted before the listener closed).
    @param on_closed: called with each job (L{ReceivedJob}) once its
        connection has closed (for a test that records jobs as they end).

    C{jobs} lists every connection; C{max_active} is the most connections
    that were ever open at once; C{overlaps} lists every connection that
    opened while another one was open (with C{exclusive}: each a second
    sender at a busy printer, a failure for a test that promises one
    connection per printer).  Start with L{listen} (or L{refuse} then
    L{accept}) and always L{stop}.
    """

    def __init__(
        self,
        reply: bytes = b"",
        greeting: bytes = b"",
        close_on_eof: bool = True,
        reset_after: int | None = None,
        reactor: Any = None,
        status: FakeStatus | None = None,
        close_delay: float = 0.0,
        exclusive: bool = False,
        on_closed: Callable[[ReceivedJob], None] | None = None,
        refuse_when_busy: bool = False,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.reply = reply
        self.greeting = greeting
        self.close_on_eof = close_on_eof
        self.reset_after = reset_after
        self.status = status
        self.close_delay = close_delay
        self.exclusive = exclusive or refuse_when_busy
        self.refuse_when_busy = refuse_when_busy
        self.on_closed = on_closed
        self.interface = "127.0.0.1"
        self._paused: Deferred[None] | None = None  # refuse_when_busy: the listener closing meanwhile
        self._relisten: Any = None
        self._stopped = False
        self._switched_off = False
        self.jobs: list[ReceivedJob] = []
        self.overlaps: list[ReceivedJob] = []
        self.active = 0
        self.max_active = 0
        self.port: int = 0
        self._listening: Any = None
        self._refusing: socket.socket | None = None
        self._protocols: set[_FakePrinterProtocol] = set()
        self._waiters: list[tuple[int, Deferred[list[ReceivedJob]]]] = []

    def buildProtocol(self, addr: Any) -> _FakePrinterProtocol:
        return _FakePrinterProtocol(self)

    @property
    def printed(self) -> list[bytes]:
        """The bytes of each connection that brought data (status-only connections left out)."""
        return [j.bytes for j in self.jobs if j.data]

    @property
    def destination(self) -> str:
        return f"127.0.0.1:{self.port}"

    def listen(self, port: int = 0, interface: str = "127.0.0.1") -> int:
        """Listen now; returns the port."""
        self._listening = self.reactor.listenTCP(port, self, interface=interface)
        self.port = self._listening.getHost().port
        self.interface = interface
        self._switched_off = False
        return self.port

    def _busy(self) -> None:
        """refuse_when_busy: a connection opened; stop listening until it ends."""
        if self._listening is not None and self._paused is None:
            listening, self._listening = self._listening, None
            self._paused = listening.stopListening() or succeed(None)

    def _free(self) -> None:
        """refuse_when_busy: listen on the same port again (once the closed listener is gone)."""
        if not self.refuse_when_busy or self._stopped or self._switched_off or self._paused is None:
            return
        paused, self._paused = self._paused, None
        paused.addCallback(lambda _: self._listen_again(200))
        paused.addErrback(lambda f: log.failure("fake printer: stopping to listen failed", f))

    def _listen_again(self, tries: int) -> None:
        self._relisten = None
        if self._stopped or self._switched_off or self._listening is not None:
            return
        try:
            self._listening = self.reactor.listenTCP(self.port, self, interface=self.interface)
        except CannotListenError as e:  # another socket took the port meanwhile
            if tries <= 1:
                log.error("fake printer: cannot listen on port {port} again: {error}; it stays off",
                          port=self.port, error=e)
                return
            self._relisten = self.reactor.callLater(0.005, self._listen_again, tries - 1)

    def refuse(self, interface: str = "127.0.0.1") -> int:
        """
        Hold a port (bound, not listening) so that connections to it are
        refused, like a printer that is busy; L{accept} starts listening.
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((interface, 0))
        self._refusing = sock
        self.port = sock.getsockname()[1]
        return self.port

    def accept(self) -> None:
        """Stop refusing: listen on the port L{refuse} held."""
        sock, self._refusing = self._refusing, None
        assert sock is not None, "accept() follows refuse()"
        sock.listen(50)
        sock.setblocking(False)
        try:
            self._listening = self.reactor.adoptStreamPort(sock.fileno(), socket.AF_INET, self)
        finally:
            sock.close()

    def wait_for(self, count: int) -> Deferred[list[ReceivedJob]]:
        """Fires with C{jobs} once C{count} connections have closed."""
        d: Deferred[list[ReceivedJob]] = Deferred()
        self._waiters.append((count, d))
        self._check_waiters()
        return d

    def switch_off(self) -> Deferred[None]:
        """
        Stop listening (connections to the port are refused from now on);
        connections already open finish their job.
        """
        self._switched_off = True  # refuse_when_busy: a job's end does not listen again
        listening, self._listening = self._listening, None
        stopped = listening.stopListening() if listening is not None else None
        if stopped is not None:
            return stopped
        d: Deferred[None] = Deferred()
        d.callback(None)
        return d

    def stop(self) -> Deferred[None]:
        """Stop listening and drop every open connection."""
        self._stopped = True
        if self._relisten is not None and self._relisten.active():
            self._relisten.cancel()
        self._relisten = None
        if self._refusing is not None:
            self._refusing.close()
            self._refusing = None
        for p in list(self._protocols):
            stream_transport(p).abortConnection()
        listening, self._listening = self._listening, None
        if self._paused is not None:  # refuse_when_busy: the listener is closing already
            paused, self._paused = self._paused, None
            return paused
        d: Deferred[None] = Deferred()
        if listening is not None:
            stopped = listening.stopListening()
            if stopped is not None:
                return stopped
        d.callback(None)
        return d

    def _opened(self, p: _FakePrinterProtocol) -> bool:
        """Count a new connection; False when it is to be turned away (exclusive and busy)."""
        assert p.job is not None
        if self.active:
            p.job.overlapped = True
            self.overlaps.append(p.job)
            if self.exclusive:
                return False
        if self.refuse_when_busy:
            self._busy()
        self.jobs.append(p.job)
        self._protocols.add(p)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        return True

    def _closed(self, p: _FakePrinterProtocol) -> None:
        if p in self._protocols:
            self._protocols.discard(p)
            self.active -= 1
            if not self.active:
                self._free()  # the sender closed or reset it
            assert p.job is not None
            p.job.closed = time.monotonic()
            if self.on_closed is not None:
                self.on_closed(p.job)
            self._check_waiters()

    def _check_waiters(self) -> None:
        done = sum(1 for j in self.jobs if j.closed is not None)
        for item in list(self._waiters):
            count, d = item
            if done >= count:
                self._waiters.remove(item)
                d.callback(self.jobs)


# --- send_job (a trigger's peer) ----------------------------------------------


@implementer(IHalfCloseableProtocol)
class _SenderProtocol(Protocol):
    def __init__(self, data: bytes, half_close: bool, done: Deferred) -> None:
        self.data = data
        self.half_close = half_close
        self.done = done
        self.received: list[bytes] = []

    def connectionMade(self) -> None:
        stream_transport(self).write(self.data)
        if self.half_close:
            stream_transport(self).loseWriteConnection()

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def readConnectionLost(self) -> None:
        stream_transport(self).loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.done.called:
            self.done.callback(b"".join(self.received))


def send_job(
    reactor: Any,
    endpoint: str,
    data: bytes,
    half_close: bool = True,
    timeout: float = 10.0,
) -> Deferred[bytes]:
    """
    Send C{data} as one job to the client endpoint string C{endpoint}
    (C{"tcp:127.0.0.1:9200"}); fires with the bytes the trigger answered
    before closing, or fails on connection errors and after C{timeout}.
    """
    from twisted.internet.endpoints import clientFromString
    from twisted.internet.protocol import Factory as _Factory

    done: Deferred[bytes] = Deferred()
    connecting = clientFromString(reactor, endpoint).connect(
        _Factory.forProtocol(lambda: _SenderProtocol(data, half_close, done))
    )

    def connect_failed(f: Failure) -> None:
        if not done.called:
            done.errback(f)

    connecting.addErrback(connect_failed)

    def too_slow() -> None:
        if not done.called:
            connecting.addCallback(lambda p: p.transport.abortConnection())
            done.errback(TimeoutError(f"no answer from {endpoint} within {timeout} s"))

    call = reactor.callLater(timeout, too_slow)

    def stop_timer(result: Any) -> Any:
        if call.active():
            call.cancel()
        return result

    return done.addBoth(stop_timer)
