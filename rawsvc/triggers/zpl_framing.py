"""
The C{zpl} framer (C{execute_on = "zpl"} on a C{tcp} trigger): each ZPL
label format is its own job, on a connection that stays open, as label
software streams them.

A job runs from its first byte that is not white space to the C{^XZ} that
ends its format (C{^XA} ... C{^XZ}), both included; what comes before the
C{^XA} (a C{~DG} graphic download, C{~SD}, a C{^XA^MM..^XZ} setup is a
format itself) belongs to that job.  White space between formats makes no
job.  Bytes after the last C{^XZ} at the end of input are a partial job
(the trigger's C{partial} says what happens to them).

Sans-IO (L{rawsvc.interfaces.IFramer}); C{^XZ} is found with a compiled
pattern (either letter case), never a per-byte loop; at most two bytes are
held back (a possible start of a C{^XZ}).
"""

from __future__ import annotations

import re

from zope.interface import implementer

from rawsvc.interfaces import IFramer
from rawsvc.triggers.framing import Data, End, Event

_END_FORMAT = re.compile(rb"\^[Xx][Zz]")
_WS = re.compile(rb"[ \t\r\n\f\x00]*")
_CARETS = (b"^", b"^X", b"^x")

#: How each job ends (its C{End}'s meta: shown as the C{eoj} variable).
_END = End(meta={"eoj": "format"})


@implementer(IFramer)
class ZplFramer:
    """One job per ZPL format (up to and including its C{^XZ})."""

    def __init__(self) -> None:
        self._in_job = False  # bytes other than white space since the last ^XZ
        self._tail = b""  # a possible start of ^XZ, held back

    def feed(self, data: bytes) -> list[Event]:
        buf = self._tail + data if self._tail else data
        self._tail = b""
        events: list[Event] = []
        pos, n = 0, len(buf)
        while pos < n:
            if not self._in_job:
                pos = _WS.match(buf, pos).end()  # type: ignore[union-attr]
                if pos == n:
                    break
                self._in_job = True
            m = _END_FORMAT.search(buf, pos)
            if m is None:
                hold = self._partial(buf, pos)
                if n - hold > pos:
                    events.append(Data(buf[pos : n - hold]))
                self._tail = buf[n - hold :] if hold else b""
                break
            events.append(Data(buf[pos : m.end()]))
            events.append(_END)
            self._in_job = False
            pos = m.end()
        return events

    @staticmethod
    def _partial(buf: bytes, pos: int) -> int:
        """Length of the tail of C{buf[pos:]} that could begin a C{^XZ} (0 to 2)."""
        for k in (2, 1):
            if len(buf) - pos >= k and buf[len(buf) - k :] in _CARETS:
                return k
        return 0

    def end_of_input(self, how: str) -> list[Event]:
        """Bytes held back belong to the last, unfinished, format."""
        tail, self._tail = self._tail, b""
        return [Data(tail)] if tail else []
