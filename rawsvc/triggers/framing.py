"""
Framers: turn a byte stream into job boundaries, without I/O.

A framer (L{rawsvc.interfaces.IFramer}) is fed chunks and returns the
events below; L{rawsvc.triggers.connection.FramedConnection} runs it.
Bytes are never held longer than needed (at most a delimiter's length), so
a large job streams straight into its payload.  Splitting uses
C{bytes.find}, never a per-byte loop.

The built-in framers of the C{tcp} trigger live here: L{StreamFramer}
(C{execute_on = "disconnect"} and C{"idle"}), L{DelimiterFramer} and
L{LengthFramer}.  The printer's is L{rawsvc.triggers.printer_framing}.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Union

import attrs
from zope.interface import implementer

from rawsvc.interfaces import IFramer

# Events ---------------------------------------------------------------------


@attrs.frozen
class Data:
    """Bytes of the job being received."""

    data: bytes


@attrs.frozen
class Start:
    """The real job begins here (sent only by an L{rawsvc.interfaces.IAnnouncingFramer})."""

    meta: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class End:
    """
    The job ends here.  C{meta} lands on the job (C{job.meta} and its
    variables); C{ack} is written in the job's reply slot when its flow
    ended done, C{nak} when it failed or was refused.
    """

    meta: Mapping[str, str] = attrs.field(factory=dict)
    ack: bytes = b""
    nak: bytes = b""


@attrs.frozen
class Drop:
    """The bytes since the last end make no job: throw them away (C{reason} is logged)."""

    reason: str = ""


@attrs.frozen
class Reply:
    """Bytes for the sender, written in reply order."""

    data: bytes


@attrs.frozen
class Query:
    """A question only the trigger can answer; its policy's answer is written at once."""

    value: Any


Event = Union[Data, Start, End, Drop, Reply, Query]

#: An end with nothing to say (shared: built-in framers end every job with it).
END = End()

#: C{how} values of L{IFramer.end_of_input} (a reset is C{"lost (<why>)"}).
HALF_CLOSE = "half-close"
CLOSE = "close"


# The tcp trigger's framers ----------------------------------------------------


@implementer(IFramer)
class StreamFramer:
    """C{disconnect} and C{idle} framing: everything is data; the end of input ends the job."""

    def feed(self, data: bytes) -> list[Event]:
        return [Data(data)] if data else []

    def end_of_input(self, how: str) -> list[Event]:
        return [END]


@implementer(IFramer)
class DelimiterFramer:
    """One job per message ended by C{delimiter}; bytes after the last one are a partial job."""

    def __init__(self, delimiter: bytes, keep_delimiter: bool = False) -> None:
        if not delimiter:
            raise ValueError("empty delimiter")
        self.delimiter = delimiter
        self.keep = keep_delimiter
        self._tail = b""  # a possible start of a delimiter, held back

    def feed(self, data: bytes) -> list[Event]:
        buf = self._tail + data if self._tail else data
        events: list[Event] = []
        delim = self.delimiter
        dlen = len(delim)
        start = 0
        while True:
            i = buf.find(delim, start)
            if i < 0:
                break
            end = i + dlen if self.keep else i
            if end > start:
                events.append(Data(buf[start:end]))
            events.append(END)
            start = i + dlen
        # Hold back the longest suffix that could begin a delimiter.
        rest = len(buf) - start
        hold = 0
        for n in range(min(dlen - 1, rest), 0, -1):
            if buf.endswith(delim[:n]):
                hold = n
                break
        cut = len(buf) - hold
        if cut > start:
            events.append(Data(buf[start:cut]))
        self._tail = buf[cut:] if hold else b""
        return events

    def end_of_input(self, how: str) -> list[Event]:
        """The bytes held back are part of the last, unterminated, job."""
        tail, self._tail = self._tail, b""
        return [Data(tail)] if tail else []


@implementer(IFramer)
class LengthFramer:
    """Messages of exactly C{length} bytes; a shorter last one is a partial job."""

    def __init__(self, length: int) -> None:
        if length <= 0:
            raise ValueError("length must be positive")
        self.length = length
        self._have = 0

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        pos = 0
        n = len(data)
        while pos < n:
            take = min(self.length - self._have, n - pos)
            events.append(Data(data[pos : pos + take]))
            pos += take
            self._have += take
            if self._have == self.length:
                events.append(END)
                self._have = 0
        return events

    def end_of_input(self, how: str) -> list[Event]:
        return []


def frame_all(framer: IFramer, chunks: Iterable[bytes], how: str = CLOSE) -> list[bytes]:
    """
    Feed C{chunks}, end the input, and return the jobs' bytes (a partial
    last job included, as C{partial = "process"} does); for tests and tools.
    L{rawsvc.testing.run_framer} tells more (meta, replies, drops).
    """
    jobs: list[bytes] = []
    current: list[bytes] = []

    def run(events: Iterable[Event], at_close: bool) -> None:
        nonlocal current
        for ev in events:
            if isinstance(ev, Data):
                current.append(ev.data)
            elif isinstance(ev, End):
                if current or not at_close:  # an empty message counts; an end of input with nothing does not
                    jobs.append(b"".join(current))
                current = []
            elif isinstance(ev, Drop):
                current = []

    for chunk in chunks:
        if chunk:
            run(framer.feed(chunk), False)
    run(framer.end_of_input(how), True)
    if current:
        jobs.append(b"".join(current))
    return jobs
