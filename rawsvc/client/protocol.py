"""
The outbound printer client: one connection that sends one job.

A delivery's states are its L{rawsvc.client.machine.Delivery} machine's;
the protocol tells it C{connected} and C{written} (the attempt moves from
C{sending} to C{draining}: every byte handed over, waiting for the
printer's acknowledgements, then the write side half-closed, reading the
back-channel until EOF, the disconnect delay or the EOF timeout), and asks
it whether it is draining.

L{SendProtocol} does the I/O of one attempt: it writes the job (small jobs
in one write, spilled jobs streamed from their file with L{FileSender}),
calls C{loseWriteConnection()}, keeps everything the printer says at any
time, and fires C{finished} with an L{AttemptResult} saying how it ended.

A printer that stops taking bytes (its window stays shut: jammed, offline,
or a peer that never reads) is given C{send_timeout} seconds of no progress
and then the attempt is aborted (L{Ending.STALLED}); without that, a job
streamed from its file would wait for ever and hold its destination's queue.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, BinaryIO, Union

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure
from zope.interface import implementer

from rawsvc.compat import AckProbe, kernel_unacked, reset_if_abandoned, stream_transport, unsent_bytes
from rawsvc.client.machine import Delivery, State

log = Logger(namespace="rawsvc.client")

#: What is sent: bytes, or a callable opening a binary file to stream.
Source = Union[bytes, Callable[[], BinaryIO]]

#: Back-channel bytes kept per job; more is dropped (and said so in the log).
MAX_REPLY = 1 << 20

#: Seconds a closing connection may take to flush before it is aborted.
CLOSE_GRACE = 10.0



class _FileSender(FileSender):
    """FileSender with 256 KiB reads: a quarter of the Python work per byte of its 16 KiB."""

    CHUNK_SIZE = 1 << 18

@attrs.frozen
class SendSettings:
    """How one job is sent (the C{send_tcp} options, minus what and where)."""

    connect_timeout: float = 10.0
    disconnect_delay: float = 0.0
    wait_for_eof: bool = False
    eof_timeout: float = 30.0
    half_close: bool = True
    retries: int = 3
    retry_delay: float = 1.0
    max_retry_delay: float = 30.0
    #: Seconds without any buffered byte reaching the kernel before the attempt is aborted (0: never).
    send_timeout: float = 300.0
    #: The status check before each attempt: "off", "zpl" (~HS) or "pjl" (L{rawsvc.client.preflight}).
    preflight: str = "off"
    #: Seconds the printer has to answer the status check.
    preflight_timeout: float = 10.0


class Ending(enum.Enum):
    """How an attempt that connected ended."""

    EOF = "eof"  # the printer closed: the job is done (AppSocket)
    DELAY = "delay"  # the disconnect delay ran out, we closed
    SENT = "sent"  # no delay, no EOF wait: closed once written
    EOF_TIMEOUT = "eof_timeout"  # wait_for_eof, and the printer never closed
    RESET = "reset"  # the connection broke before every byte was written
    RESET_DRAINING = "reset_draining"  # it broke after every byte was written
    SOURCE_ERROR = "source_error"  # the job's file could not be read
    STALLED = "stalled"  # the printer took no byte for send_timeout seconds


@attrs.frozen
class AttemptResult:
    ending: Ending
    written: int
    total: int | None
    reply: bytes
    error: str = ""


#: The error of an attempt this node aborted itself, its cluster lease lost (the printer did not reset it).
FENCED = "aborted by this node: it lost its cluster lease"

#: Seconds between looks at the kernel's send queue while draining.
ACK_POLL = 0.02
#: The first look for the printer's acknowledgement of the last byte (doubling up to ACK_POLL).
ACK_POLL_FIRST = 0.001


@implementer(IHalfCloseableProtocol)
class SendProtocol(Protocol):
    """Send one job and read the back-channel; see the module docstring."""

    def __init__(
        self,
        reactor: Any,
        source: Source,
        settings: SendSettings,
        machine: Delivery,
        total: int | None = None,
    ) -> None:
        self.reactor = reactor
        self.source = source
        self.settings = settings
        self.machine = machine
        self.total = len(source) if isinstance(source, bytes) else total
        self.finished: Deferred[AttemptResult] = Deferred()
        self._reply: list[bytes] = []
        self._reply_len = 0
        self._handed = 0
        self._file: BinaryIO | None = None
        self._peer_eof = False
        self._ending: Ending | None = None
        self._error = ""
        self._timer: Any = None
        self._abort_timer: Any = None
        self._lost = False
        self._stillborn = False  # connected after its delivery ended: aborted, reported to nobody
        self._stall_timer: Any = None
        self._progress = 0
        self._stalled = False
        #: Bytes the kernel still held unacknowledged at the last look (None: unknown).
        self._unacked: int | None = None
        self._acked_all = False
        self._ack_poll: Any = None
        #: The kernel's count of bytes the printer acknowledged (Linux TCP_INFO), readable after a reset.
        self._probe = AckProbe(None)
        self._ack_progress: tuple[int, float] = (-1, 0.0)
        #: Our EOF is out (half-close); a fenced node aborted the connection itself (L{_fenced}).
        self._half_closed = False
        self._fence_cut = False

    @property
    def _draining(self) -> bool:
        """Every byte is handed to the transport (asked of the delivery's machine)."""
        return self.machine.state is State.DRAINING

    # I/O ------------------------------------------------------------------

    def connectionMade(self) -> None:
        if self.machine.state is State.DONE:
            # The delivery already ended (a fence cancelled the attempt while it connected):
            # nobody waits for this connection, and not one byte may go out on it.
            self._stillborn = True
            reset_if_abandoned(self.transport, True)  # a reset: an empty clean close looks like an empty job
            stream_transport(self).abortConnection()
            return
        self.machine.connected()
        self.machine.transport = self.transport
        if self.machine.cut_off():
            # A fenced cluster node: not one byte may go out once the lease is lost.
            self._ending = Ending.RESET
            self._error = "aborted before sending: this node lost its cluster lease"
            reset_if_abandoned(self.transport, True)
            stream_transport(self).abortConnection()
            return
        self._probe = AckProbe.of(self.transport)
        if self._probe.acked() is not None:
            # Until the printer acknowledged every byte, a close we did not
            # mean (the process killed) resets: a printer must not take the
            # part it got for a whole job.
            reset_if_abandoned(self.transport, True)
        if self.machine.abandoned:
            # A fenced cluster node cut this delivery off while its connection was being made
            # (nothing to abort then): not one byte, another node may hold the printer's line now.
            self._ending = Ending.RESET
            self._error = "cut off while connecting (this node fenced itself): nothing sent"
            reset_if_abandoned(self.transport, True)
            stream_transport(self).abortConnection()
            return
        if self.settings.send_timeout > 0:
            self._stall_timer = self.reactor.callLater(self.settings.send_timeout, self._check_progress)
        if isinstance(self.source, bytes):
            self._handed = len(self.source)
            stream_transport(self).write(self.source)
            self._all_written()
            return
        try:
            self._file = self.source()
        except OSError as e:
            self._ending = Ending.SOURCE_ERROR
            self._error = f"cannot read the job's data: {e.strerror or e}"
            stream_transport(self).abortConnection()
            return
        d = _FileSender().beginFileTransfer(self._file, self.transport, self._count)
        d.addCallbacks(lambda _: self._all_written(), self._stream_stopped)

    def _count(self, chunk: bytes) -> bytes:
        if self._fenced():
            return b""
        self._handed += len(chunk)
        return chunk

    def _fenced(self) -> bool:
        """
        A cluster node past its lease deadline: abort before one more byte
        (or the half-close that would end a job cleanly) goes out.  Asked
        before each write and each close, not only by the lease's timer: a
        process that wakes from a freeze handles its sockets' events before
        its timers, and the printer must not get a whole job from a zombie.
        """
        if self._fence_cut:
            return True
        if self._ending is not None or self._lost or not self.machine.cut_off():
            return False
        # No ending of ours: connectionLost tells, as for the fence's own abort (DestinationPool.abort_all),
        # a reset before every byte was acknowledged (not sent) from one after (delivered, the finish fenced).
        self._fence_cut = True
        reset_if_abandoned(self.transport, True)
        stream_transport(self).abortConnection()
        return True

    def _stream_stopped(self, failure: Failure) -> None:
        # The transport stopped the producer: connectionLost says why.
        self._close_file()

    def dataReceived(self, data: bytes) -> None:
        room = MAX_REPLY - self._reply_len
        if room <= 0:
            return
        if len(data) > room:
            log.warn("back-channel reply longer than {limit} bytes; the rest is dropped", limit=MAX_REPLY)
            data = data[:room]
        self._reply.append(data)
        self._reply_len += len(data)

    def _all_written(self) -> None:
        self._close_file()
        if self._ending is not None or self._lost:
            return
        self.machine.written()
        if self._probe.acked() is not None:
            # Half-close (or close) only once the printer's kernel acknowledged
            # every byte.  Closed earlier, a job whose tail is still in our
            # send queue counts as delivered even if the printer resets before
            # it took that tail; and a printer that resets as soon as it reads
            # our EOF sends no ACK of its own first (Linux delays the ACK of a
            # FIN) while the reset's acknowledgement is not counted, so the
            # reset would look like a job cut short and print it twice.
            self._ack_progress = (-1, self.reactor.seconds())
            self._await_acks(ACK_POLL_FIRST)
            return
        self._drain()

    def _await_acks(self, delay: float) -> None:
        self._ack_poll = None
        if self._lost or self._ending is not None or self._fenced():
            return
        acked = self._probe.acked()
        now = self.reactor.seconds()
        if acked is None or acked >= self._handed:
            self._drain()
            return
        last, since = self._ack_progress
        if acked != last:
            self._ack_progress = (acked, now)
        elif self.settings.send_timeout > 0 and now - since >= self.settings.send_timeout:
            # The printer took nothing more for send_timeout seconds with the
            # job's tail still unacknowledged: not delivered (retried), never
            # closed as if it were.
            self._stalled = True
            log.warn("printer acknowledged nothing for {seconds} s with {n} bytes outstanding; aborting",
                     seconds=self.settings.send_timeout, n=self._handed - acked)
            stream_transport(self).abortConnection()
            return
        self._ack_poll = self.reactor.callLater(delay, self._await_acks, min(delay * 2, ACK_POLL))

    def _drain(self) -> None:
        """Every byte is written: half-close, then wait for EOF or the delay, or close."""
        if self._fenced():
            return
        reset_if_abandoned(self.transport, False)
        if self.settings.half_close:
            half_close = getattr(self.transport, "loseWriteConnection", None)
            if half_close is not None:
                half_close()
                self._half_closed = True
        self._poll_acks()
        # The EOF timeout and the disconnect delay (and the stall and close
        # timers) are timers on transport events, not on a Deferred, so they
        # are callLater, not Deferred.addTimeout; connectionLost cancels them.
        if self._peer_eof:
            self._close(Ending.EOF)
        elif self.settings.wait_for_eof:
            self._timer = self.reactor.callLater(self.settings.eof_timeout, self._close, Ending.EOF_TIMEOUT)
        elif self.settings.disconnect_delay > 0:
            self._timer = self.reactor.callLater(self.settings.disconnect_delay, self._close, Ending.DELAY)
        else:
            self._close(Ending.SENT)

    def _poll_acks(self) -> None:
        """
        While draining, watch the kernel's send queue empty: once it has, every
        byte reached the printer, and a reset after that does not lose data.
        """
        self._ack_poll = None
        if self._lost or self._probe.acked() is not None:
            return  # the probe tells at connectionLost what the printer acknowledged
        self._unacked = kernel_unacked(self.transport)
        if self._unacked is None:
            return
        if self._unacked == 0 and unsent_bytes(self.transport) == 0:
            self._acked_all = True
            return
        self._ack_poll = self.reactor.callLater(ACK_POLL, self._poll_acks)

    def readConnectionLost(self) -> None:
        self._peer_eof = True
        if self._draining and self._ending is None:
            self._close(Ending.EOF)

    def writeConnectionLost(self) -> None:
        pass

    def _close(self, ending: Ending) -> None:
        self._cancel_timer()
        # Past the lease, a close that would end the job at the printer is a reset instead; after
        # our EOF (the job's end is out already) or the printer's, there is nothing left to cut.
        if self._ending is not None or (ending is not Ending.EOF and not self._half_closed and self._fenced()):
            return
        self._ending = ending
        # loseConnection waits for the buffer to flush; a printer that stopped
        # reading must not hold the connection (and its queue) for ever.
        self._abort_timer = self.reactor.callLater(CLOSE_GRACE, stream_transport(self).abortConnection)
        stream_transport(self).loseConnection()

    def _check_progress(self) -> None:
        """
        Every C{send_timeout} seconds: when bytes wait in our buffer and none
        of them reached the kernel since the last look, the printer has
        stopped reading; give up on this attempt.
        """
        self._stall_timer = None
        if self._lost:
            return
        unsent = unsent_bytes(self.transport)
        flushed = self._handed - unsent
        if unsent > 0 and flushed <= self._progress:
            self._stalled = True
            log.warn(
                "printer took no data for {seconds} s after {written} bytes; aborting",
                seconds=self.settings.send_timeout, written=flushed,
            )
            stream_transport(self).abortConnection()
            return
        self._progress = flushed
        self._stall_timer = self.reactor.callLater(self.settings.send_timeout, self._check_progress)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _close_file(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self._lost = True
        if self._stillborn:
            return
        self.machine.transport = None
        self._cancel_timer()
        if self._stall_timer is not None and self._stall_timer.active():
            self._stall_timer.cancel()
        self._stall_timer = None
        if self._ack_poll is not None and self._ack_poll.active():
            self._ack_poll.cancel()
        self._ack_poll = None
        if self._abort_timer is not None and self._abort_timer.active():
            self._abort_timer.cancel()
        self._close_file()
        acked = self._probe.acked()
        self._probe.close()
        written = self._handed - unsent_bytes(self.transport)
        clean = reason.check(ConnectionDone) is not None
        if acked is not None:
            # Handed to the kernel is not received: what the printer's kernel
            # acknowledged is (after a reset, or the printer's own close).
            if not clean or self._ending is Ending.EOF:
                written = min(written, acked)
            acked_all = acked >= self._handed
        else:
            if not clean and not self._acked_all and self._unacked:
                written -= self._unacked
            acked_all = written >= self._handed and (self._acked_all or self._unacked is None)
        ending = self._ending
        error = self._error
        if ending in (Ending.DELAY, Ending.SENT, Ending.EOF, Ending.EOF_TIMEOUT) and not clean and written < self._handed:
            ending = None  # the close did not flush: the printer reset meanwhile
        if self._stalled and written < self._handed:
            ending = Ending.STALLED
            error = f"the printer took no data for {self.settings.send_timeout:g} s (send_timeout)"
        elif ending is None:
            # The fence aborts a node's printer connections itself (worker.fence): not the printer's reset.
            error = FENCED if self.machine.abandoned and reason.check(ConnectionAborted) else _reason_text(reason)
            if self._draining and acked_all:
                ending = Ending.RESET_DRAINING
            else:
                ending = Ending.RESET
        elif ending is Ending.EOF and written < self._handed:
            ending = Ending.RESET
            error = "the printer closed the connection before taking every byte"
        result = AttemptResult(ending, max(written, 0), self.total, b"".join(self._reply), error)
        d, self.finished = self.finished, Deferred()
        d.callback(result)


def _reason_text(reason: Failure) -> str:
    if reason.check(ConnectionDone):
        return "the printer closed the connection"
    value = reason.value
    assert value is not None  # a Failure always carries its exception
    text = str(value)
    inner = getattr(value, "osError", None) or (value.args[0] if value.args else None)
    if isinstance(inner, OSError) and inner.strerror:
        return inner.strerror.lower()
    return text or type(value).__name__
