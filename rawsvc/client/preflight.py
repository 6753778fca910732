"""
The pre-flight status check of C{send_tcp} (C{preflight = "zpl" | "pjl"}):
ask the printer whether it can print before the job is sent.

The check is a short status connection of its own, made while the delivery
holds its printer's queue (L{rawsvc.client.queues.DestinationQueue}), so it
and the job's connection follow each other and are never open at once: the
one-connection-per-printer rule holds.  It writes the query, reads until
the answer is complete (or C{preflight_timeout} runs out), half-closes and
waits a moment for the printer to close (so the printer has let the status
connection go before the job's connects) and closes; the
job then goes on a connection of its own, as it would without a check, so
that the job's bytes and their acknowledgement are counted exactly as
always.

- C{zpl} sends C{~HS} and reads the three C{STX ... ETX} lines of Zebra's
  host status: paper out, pause (line 1), head open and ribbon out
  (line 2), corrupt RAM, under or over temperature (line 1) are "not ready".
- C{pjl} sends C{@PJL INFO STATUS} between two UELs and reads up to the
  form feed: C{ONLINE=FALSE}, C{CODE=10002} (not ready) and codes from
  30000 up (auto-continuable errors, intervention required) are "not
  ready"; other 1xxxx codes (ready, toner low ...) and 2xxxx parser errors
  (about earlier jobs) are ready.

A printer that does not answer in time is not ready either ("no status
answer"): a job is never sent to a printer whose state is unknown.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from rawsvc.compat import stream_transport

#: The values of C{preflight}.
KINDS = ("off", "zpl", "pjl")

STX, ETX = b"\x02", b"\x03"
UEL = b"\x1b%-12345X"

#: What each kind writes.
QUERIES = {"zpl": b"~HS", "pjl": UEL + b"@PJL INFO STATUS\r\n" + UEL}

#: Bytes of a status answer kept at most; more is no answer we know.
MAX_ANSWER = 4096


@attrs.frozen
class Readiness:
    """What a status answer said: ready, or not with a C{reason} for people."""

    ready: bool
    reason: str = ""


READY = Readiness(True)


def _flag(fields: list[str], index: int) -> bool:
    return len(fields) > index and fields[index].strip() == "1"


def zpl_complete(answer: bytes) -> bool:
    """Whether C{answer} holds the three lines of a C{~HS} answer."""
    return answer.count(ETX) >= 3


def parse_host_status(answer: bytes) -> Readiness:
    """Readiness from a Zebra C{~HS} answer (three C{STX fields ETX} lines)."""
    lines = []
    for part in answer.split(STX)[1:]:
        body, sep, _ = part.partition(ETX)
        if sep:
            lines.append(body.decode("ascii", "replace").split(","))
    if len(lines) < 2:
        return Readiness(False, "the printer's ~HS answer is incomplete")
    one, two = lines[0], lines[1]
    reasons = []
    if _flag(one, 1):
        reasons.append("paper out")
    if _flag(one, 2):
        reasons.append("paused")
    if _flag(two, 2):
        reasons.append("head open")
    if _flag(two, 3):
        reasons.append("ribbon out")
    if _flag(one, 9):
        reasons.append("corrupt RAM")
    if _flag(one, 10):
        reasons.append("under temperature")
    if _flag(one, 11):
        reasons.append("over temperature")
    return Readiness(False, ", ".join(reasons)) if reasons else READY


def pjl_complete(answer: bytes) -> bool:
    """Whether C{answer} holds a whole C{@PJL INFO STATUS} reply (up to its form feed)."""
    start = answer.find(b"@PJL INFO STATUS")
    return start >= 0 and answer.find(b"\x0c", start) >= 0


def parse_pjl_status(answer: bytes) -> Readiness:
    """Readiness from an C{@PJL INFO STATUS} reply (C{CODE}, C{DISPLAY}, C{ONLINE})."""
    start = answer.find(b"@PJL INFO STATUS")
    if start < 0:
        return Readiness(False, "the printer's PJL status answer is incomplete")
    fields: dict[str, str] = {}
    for raw in answer[start:].split(b"\x0c")[0].splitlines()[1:]:
        key, sep, value = raw.decode("ascii", "replace").partition("=")
        if sep:
            fields[key.strip().upper()] = value.strip().strip('"')
    display = fields.get("DISPLAY", "")
    said = f" ({display})" if display else ""
    if fields.get("ONLINE", "TRUE").upper() == "FALSE":
        return Readiness(False, f"offline{said}")
    try:
        code = int(fields.get("CODE", ""))
    except ValueError:
        return Readiness(False, "the printer's PJL status has no CODE")
    if code == 10002 or code >= 30000:
        return Readiness(False, f"status code {code}{said}")
    return READY


def parse(kind: str, answer: bytes) -> Readiness:
    """The readiness a C{kind} answer says."""
    return parse_host_status(answer) if kind == "zpl" else parse_pjl_status(answer)


def complete(kind: str, answer: bytes) -> bool:
    """Whether C{answer} is a whole C{kind} answer."""
    return zpl_complete(answer) if kind == "zpl" else pjl_complete(answer)


#: Seconds a status connection waits for the printer to close after our
#: half-close, so that the printer has let it go before the job connects.
CLOSE_WAIT = 1.0


@implementer(IHalfCloseableProtocol)
class StatusProtocol(Protocol):
    """
    One status connection: write the query, read the answer, half-close and
    wait (up to L{CLOSE_WAIT} seconds) for the printer to close, then close.
    C{finished} fires with the L{Readiness} once the connection is closed.
    """

    def __init__(self, reactor: Any, kind: str, timeout: float) -> None:
        self.reactor = reactor
        self.kind = kind
        self.timeout = timeout
        self.finished: Deferred[Readiness] = Deferred(self._cancelled)
        self._answer = b""
        self._result: Readiness | None = None
        self._timer: Any = None

    def connectionMade(self) -> None:
        # A timer on transport events (like SendProtocol's): connectionLost cancels it.
        self._timer = self.reactor.callLater(self.timeout, self._no_answer)
        stream_transport(self).write(QUERIES[self.kind])

    def dataReceived(self, data: bytes) -> None:
        if self._result is not None:
            return
        self._answer = (self._answer + data)[:MAX_ANSWER]
        if complete(self.kind, self._answer):
            self._end(parse(self.kind, self._answer))

    def _cancelled(self, d: Deferred[Readiness]) -> None:
        """The check was cancelled (a fenced cluster node): drop the connection; C{finished} fails."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.transport is not None:
            stream_transport(self).abortConnection()

    def _no_answer(self) -> None:
        self._timer = None
        query = "~HS" if self.kind == "zpl" else "@PJL INFO STATUS"
        self._result = Readiness(False, f"no answer to {query} within {self.timeout:g} s")
        stream_transport(self).abortConnection()

    def _end(self, result: Readiness) -> None:
        self._result = result
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self.reactor.callLater(CLOSE_WAIT, stream_transport(self).loseConnection)
        stream_transport(self).loseWriteConnection()

    def readConnectionLost(self) -> None:
        stream_transport(self).loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        result = self._result
        if result is None:
            result = (parse(self.kind, self._answer) if self._answer
                      else Readiness(False, "the printer closed the status connection without an answer"))
        if not self.finished.called:  # (cancelled: it failed already)
            self.finished.callback(result)
