"""
Framers: turn a byte stream into job boundaries, without I/O.

A framer is fed chunks and returns events: C{(DATA, bytes)} for bytes that
belong to the current job and C{(END, None)} where a job ends.  Bytes are
never held longer than needed (at most a delimiter's length), so a large
job streams straight into its payload.  Splitting uses C{bytes.find}, never
a per-byte loop.
"""

from __future__ import annotations

DATA = "data"
END = "end"

Event = tuple[str, bytes | None]


class StreamFramer:
    """C{disconnect} and C{idle} framing: everything is data; ends come from outside."""

    def feed(self, data: bytes) -> list[Event]:
        return [(DATA, data)] if data else []

    def pending(self) -> bytes:
        return b""


class DelimiterFramer:
    """One job per message ended by C{delimiter}."""

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
                events.append((DATA, buf[start:end]))
            events.append((END, None))
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
            events.append((DATA, buf[start:cut]))
        self._tail = buf[cut:] if hold else b""
        return events

    def pending(self) -> bytes:
        """Bytes held back at the end of the stream (part of the last job)."""
        tail, self._tail = self._tail, b""
        return tail


class LengthFramer:
    """Messages of exactly C{length} bytes."""

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
            events.append((DATA, data[pos : pos + take]))
            pos += take
            self._have += take
            if self._have == self.length:
                events.append((END, None))
                self._have = 0
        return events

    def pending(self) -> bytes:
        return b""


def frame_all(framer, chunks) -> list[bytes]:
    """Feed C{chunks} and return the complete jobs (for tests and tools)."""
    jobs: list[bytes] = []
    current: list[bytes] = []
    for chunk in chunks:
        for kind, data in framer.feed(chunk):
            if kind == DATA:
                current.append(data)
            else:
                jobs.append(b"".join(current))
                current = []
    tail = framer.pending()
    if tail:
        current.append(tail)
    if current:
        jobs.append(b"".join(current))
    return jobs
