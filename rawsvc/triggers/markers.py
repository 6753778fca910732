"""
The C{markers} framing: one job per message between a C{start} and an
C{end} marker (STX/ETX, C{<msg>}/C{</msg>}), without I/O.

Bytes outside a message are dropped and counted (the framer's
C{on_dropped} callback is told how many).  A start marker inside an open
message either restarts the message (C{on_restart = "restart"}: the bytes
so far are dropped) or is taken as data (C{"ignore"}).  The markers are
not part of the payload.  Splitting uses C{bytes.find}; at most a marker's
length is held back between chunks.
"""

from __future__ import annotations

from collections.abc import Callable

from zope.interface import implementer

from rawsvc.interfaces import IFramer
from rawsvc.triggers.framing import END, Data, Drop, Event

#: C{on_restart} values.
RESTART, IGNORE = "restart", "ignore"


def held_suffix(buf: bytes, start: int, *markers: bytes) -> int:
    """The length of the longest end of C{buf[start:]} that could begin one of C{markers}."""
    rest = len(buf) - start
    best = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, rest), best, -1):
            if buf.endswith(marker[:n]):
                best = n
                break
    return best


@implementer(IFramer)
class MarkersFramer:
    """Messages between C{start} and C{end}; see the module docstring."""

    def __init__(
        self,
        start: bytes,
        end: bytes,
        on_restart: str = RESTART,
        on_dropped: Callable[[int], None] | None = None,
    ) -> None:
        if not start or not end:
            raise ValueError("the start and end markers must not be empty")
        if on_restart not in (RESTART, IGNORE):
            raise ValueError(f"on_restart must be {RESTART!r} or {IGNORE!r}")
        self.start = start
        self.end = end
        self.restart = on_restart == RESTART
        self.on_dropped = on_dropped
        #: Bytes dropped outside messages on this connection.
        self.dropped = 0
        self.inside = False
        self._tail = b""

    def _drop(self, n: int) -> None:
        if n > 0:
            self.dropped += n
            if self.on_dropped is not None:
                self.on_dropped(n)

    def feed(self, data: bytes) -> list[Event]:
        buf = self._tail + data if self._tail else data
        self._tail = b""
        return self._scan(buf, final=False)

    def end_of_input(self, how: str) -> list[Event]:
        """Held-back bytes are decided now: part of the open message, or dropped outside one."""
        tail, self._tail = self._tail, b""
        return self._scan(tail, final=True) if tail else []

    def _scan(self, buf: bytes, final: bool) -> list[Event]:
        events: list[Event] = []
        pos, size = 0, len(buf)
        start, end = self.start, self.end
        never = size + 1
        while pos < size:
            if not self.inside:
                i = buf.find(start, pos)
                if i < 0:
                    hold = 0 if final else held_suffix(buf, pos, start)
                    self._drop(size - hold - pos)
                    self._tail = buf[size - hold :] if hold else b""
                    return events
                self._drop(i - pos)
                pos = i + len(start)
                self.inside = True
                continue
            # Inside: the end marker, or (restart) a start marker, whichever
            # begins first; a tie is an end.  A marker not wholly in buf may
            # still begin at `wait` or later: if that could come first, wait.
            j = buf.find(end, pos)
            k = buf.find(start, pos) if self.restart else -1
            wait = never
            if not final:
                if j < 0:
                    may_end = max(pos, size - len(end) + 1)
                    if not 0 <= k < may_end:  # unless a start surely comes first
                        wait = may_end
                if self.restart and k < 0:
                    may_start = max(pos, size - len(start) + 1)
                    if j < 0 or j > may_start:
                        wait = min(wait, may_start)
            if wait < never:
                if wait > pos:
                    events.append(Data(buf[pos:wait]))
                self._tail = buf[wait:]
                return events
            if j < 0 and k < 0:  # final: the rest belongs to the open message
                events.append(Data(buf[pos:]))
                return events
            if k >= 0 and (j < 0 or k < j):
                events.append(Drop("a start marker inside an open message: it begins again"))
                pos = k + len(start)
                continue
            if j > pos:
                events.append(Data(buf[pos:j]))
            events.append(END)
            pos = j + len(end)
            self.inside = False
        return events


def frame_markers(data: bytes, start: bytes, end: bytes, on_restart: str = RESTART) -> tuple[list[bytes], int]:
    """
    The messages of a whole stream and the bytes dropped outside them, by
    plain searching (the meaning the framer keeps under any split; for
    tests and tools).  An unterminated last message is included.
    """
    jobs: list[bytes] = []
    dropped = pos = 0
    while True:
        i = data.find(start, pos)
        if i < 0:
            return jobs, dropped + len(data) - pos
        dropped += i - pos
        pos = i + len(start)
        while True:
            j = data.find(end, pos)
            k = data.find(start, pos) if on_restart == RESTART else -1
            if k >= 0 and (j < 0 or k < j):
                pos = k + len(start)
                continue
            if j < 0:
                if pos < len(data):
                    jobs.append(data[pos:])
                return jobs, dropped
            jobs.append(data[pos:j])
            pos = j + len(end)
            break


__all__ = ["IGNORE", "RESTART", "MarkersFramer", "frame_markers", "held_suffix"]
