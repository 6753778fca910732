"""
The printer's framer: splits an AppSocket stream into jobs at its
end-of-job markers, and picks out the status queries it carries.

Like the framers in L{rawsvc.triggers.framing} it does no I/O: C{feed}
returns events (L{rawsvc.interfaces.IAnnouncingFramer}): C{Data} for the
job's bytes, C{Start} where its print data begins, C{End} with what it
learnt (C{pjl_job_name}, C{pjl_language}, C{eoj}) where it ends, and a
C{Query} for each status query it meets (a C{@PJL} query, the Zebra
C{~HS}, C{~HQES}, C{~HI}, or an SGD C{! U1 getvar}), in stream order, so the answer leaves before later data is
processed.

Two modes, as on an HP printer:

- B{PJL mode} at the start of the connection, after a UEL and after a
  Ctrl-D: lines starting with C{@PJL} are commands.  Queries (C{INFO},
  C{ECHO}, C{USTATUS}, C{USTATUSOFF}, C{INQUIRE}) are answered and left out
  of the payload; other commands (C{JOB}, C{EOJ}, C{SET}, C{ENTER}) stay in
  it.  Any other byte switches to language mode.
- B{language mode}: print data.  Only the UEL, Ctrl-D (in PostScript)
  and C{~HS} (in ZPL) are looked for, with C{bytes.find}.

Each language section (from PJL mode to the next UEL or end of job) has a
language, decided where it begins:

- C{postscript}: C{@PJL ENTER LANGUAGE = POSTSCRIPT}, or, with no
  C{ENTER}, the data begins with C{%!};
- C{zpl}: C{ENTER LANGUAGE = ZPL}, or the data begins with C{^} or C{~}
  (every ZPL command does); it stays C{zpl} while the data is text, and
  becomes C{other} at the first control byte (binary data);
- C{other}: anything else (PCL, PDF, raster, compressed, plain text).

A job ends at a Ctrl-D in a PostScript section (Ctrl-D is data in any other
language, as on a JetDirect port), or at a UEL (the printer's reset, in any
language); both only once every C{@PJL JOB} has had its C{@PJL EOJ}, and
only when the job holds print data: a job made of PJL commands, UELs,
Ctrl-Ds and white space alone is not a job (status monitors send those).
C{~HS}, C{~HQES}, C{~HI} and SGD lines (C{! U1 getvar/setvar/do "..."}
ending in a line feed; a C{setvar} or C{do} is left out of the payload and
ignored) are answered in PJL mode and in ZPL sections only, so binary data
holding those three bytes is neither cut nor altered.  The marker stays in
the payload, so a forwarded job is the bytes the client sent.
"""

from __future__ import annotations

import re
import attrs
from zope.interface import implementer

from rawsvc.interfaces import IAnnouncingFramer
from rawsvc.triggers.framing import HALF_CLOSE, Data, Drop, End, Event, Query, Start
from rawsvc.triggers.pjl import CTRL_D, HOST_STATUS, PJL_PREFIX, UEL, PjlCommand, parse_line
from rawsvc.triggers.zpl_status import HI, HQES, SGD_PREFIX, parse_sgd

#: The Zebra host queries answered between jobs and in ZPL text.
ZEBRA_QUERIES = (HOST_STATUS, HQES, HI)

_WS = re.compile(rb"[ \t\r\n\f]*")
_NON_WS = re.compile(rb"[^ \t\r\n\f]")
#: A byte that text (ZPL, UTF-8 included) never holds: the data is binary.
_BINARY = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
#: How PostScript begins.
PS_MAGIC = b"%!"

POSTSCRIPT, ZPL, OTHER = "postscript", "zpl", "other"

#: A C{@PJL} line longer than this without a line feed is taken as data.
MAX_PJL_LINE = 4096


@attrs.define
class JobInfo:
    """What the framer learnt about one job."""

    content: bool = False  # holds print data (not only PJL, UELs, white space)
    pjl_job_name: str = ""
    pjl_language: str = ""
    ended_by: str = ""  # ctrl-d | uel | half-close | close | lost (...)

    def meta(self) -> dict[str, str]:
        """The job's metadata, as the C{End} event carries it (and its variables show)."""
        return {"pjl_job_name": self.pjl_job_name, "pjl_language": self.pjl_language,
                "eoj": self.ended_by or "close"}


@implementer(IAnnouncingFramer)
class PrinterFramer:
    """
    Frames one printer connection.  Each query met in PJL mode (a
    L{PjlCommand} whose C{is_query}) and each Zebra host-status query
    (C{PjlCommand("~HS")}) becomes a C{Query} event.
    """

    def __init__(
        self,
        ctrl_d: bool = True,
        uel: bool = True,
        zpl: bool = True,
        after_eoj: str = "next",
    ) -> None:
        self.ctrl_d = ctrl_d
        self.uel = uel
        self.zpl = zpl
        self.after_eoj = after_eoj
        self.current = JobInfo()
        self.pjl_mode = True
        self.language = ""  # of the section being read: postscript | zpl | other ("" in PJL mode)
        self.ignoring = False  # after_eoj = "ignore" and a job has ended
        self.depth = 0  # @PJL JOB minus @PJL EOJ
        self._held = b""
        self._events: list[Event] = []

    # Events -----------------------------------------------------------------

    def _data(self, chunk: bytes, content: bool) -> None:
        if not chunk or self.ignoring:
            return
        if content and not self.current.content and _NON_WS.search(chunk):
            self._start()
        self._events.append(Data(chunk))

    def _start(self) -> None:
        self.current.content = True
        self._events.append(Start(self.current.meta()))

    def _end(self, how: str) -> None:
        if self.ignoring:
            return
        info, self.current = self.current, JobInfo()
        info.ended_by = how
        self.depth = 0
        self._events.append(End(info.meta()))
        if self.after_eoj == "ignore":
            self.ignoring = True

    # Feeding ----------------------------------------------------------------

    def feed(self, data: bytes) -> list[Event]:
        buf = self._held + data if self._held else data
        self._held = b""
        self._events = []
        found: dict[object, int] = {}  # marker -> next index in buf (-1: none left)
        pos, n = 0, len(buf)
        while pos < n:
            if self.pjl_mode:
                pos = self._pjl_step(buf, pos)
            else:
                pos = self._language_step(buf, pos, found)
            if pos < 0:  # bytes held back for the next chunk
                break
        events, self._events = self._events, []
        return events

    def _hold(self, buf: bytes, pos: int) -> int:
        self._held = buf[pos:]
        return -1

    def _pjl_step(self, buf: bytes, pos: int) -> int:
        n = len(buf)
        j = _WS.match(buf, pos).end()  # type: ignore[union-attr]
        if j == n:
            self._data(buf[pos:j], content=False)
            return n
        if buf.startswith(UEL, j):
            self._data(buf[pos : j + len(UEL)], content=False)
            self._after_uel()
            return j + len(UEL)
        if buf[j : j + 4].upper() == PJL_PREFIX:
            e = buf.find(b"\n", j)
            if e < 0:
                if n - j <= MAX_PJL_LINE:
                    return self._hold(buf, pos)
                self._enter_language(OTHER)
                return pos
            cmd = parse_line(buf[j : e + 1])
            if cmd is None:  # "@PJLX...": data
                self._enter_language(OTHER)
                return pos
            self._data(buf[pos:j], content=False)
            if not cmd.is_query:
                self._data(buf[j : e + 1], content=False)
            self._command(cmd)
            return e + 1
        if self.zpl:
            for query in ZEBRA_QUERIES:
                if buf.startswith(query, j):
                    self._data(buf[pos:j], content=False)
                    self._events.append(Query(PjlCommand(query.decode("ascii"))))
                    return j + len(query)
            if buf.startswith(SGD_PREFIX, j):
                e = buf.find(b"\n", j)
                if e < 0 and n - j <= MAX_PJL_LINE:
                    return self._hold(buf, pos)
                sgd = parse_sgd(buf[j : e + 1]) if e >= 0 else None
                if sgd is not None:  # a question (getvar) or a setting rawsvc ignores: never data
                    self._data(buf[pos:j], content=False)
                    if sgd.verb == "getvar":
                        self._events.append(Query(sgd))
                    return e + 1
        if self.ctrl_d and buf.startswith(CTRL_D, j):  # CUPS's "PostScript Ctrl-D" sends one first
            self._data(buf[pos : j + 1], content=False)
            return j + 1
        rest = buf[j:]
        if len(rest) < len(UEL) and (
            UEL.startswith(rest)
            or PJL_PREFIX.startswith(rest[:4].upper())
            or (self.zpl and any(q.startswith(rest) for q in ZEBRA_QUERIES))
            or (self.zpl and SGD_PREFIX.startswith(rest[:3]))
            or PS_MAGIC.startswith(rest)
        ):
            return self._hold(buf, pos)
        self._data(buf[pos:j], content=False)
        if buf.startswith(PS_MAGIC, j):
            self._enter_language(POSTSCRIPT)
        elif buf[j : j + 1] in (b"^", b"~"):
            self._enter_language(ZPL)
        else:
            self._enter_language(OTHER)
        return j

    def _enter_language(self, language: str) -> None:
        """Leave PJL mode; C{language} unless PJL's C{ENTER LANGUAGE} named one."""
        self.pjl_mode = False
        if not self.language:
            self.language = language

    def _command(self, cmd: PjlCommand) -> None:
        if cmd.command == "JOB":
            self.depth += 1
            if "NAME" in cmd.params and not self.current.pjl_job_name:
                self.current.pjl_job_name = cmd.params["NAME"]
        elif cmd.command == "EOJ":
            self.depth -= 1
        elif cmd.command == "ENTER" and "LANGUAGE" in cmd.params:
            language = self.current.pjl_language = cmd.params["LANGUAGE"].upper()
            self.pjl_mode = False
            self.language = POSTSCRIPT if language == "POSTSCRIPT" else ZPL if language == "ZPL" else OTHER
        if cmd.is_query:
            self._events.append(Query(cmd))

    def _pjl_again(self) -> None:
        self.pjl_mode = True
        self.language = ""

    def _after_uel(self) -> None:
        self._pjl_again()
        if self.uel and self.current.content and self.depth <= 0:
            self._end("uel")

    def _markers(self) -> list[bytes]:
        """What ends or interrupts the data of the current section."""
        markers = [UEL]
        if self.ctrl_d and self.language == POSTSCRIPT and self.depth <= 0:
            markers.append(CTRL_D)
        if self.zpl and self.language == ZPL:
            markers.extend(ZEBRA_QUERIES)
            markers.append(SGD_PREFIX)
        return markers

    def _language_step(self, buf: bytes, pos: int, found: dict[object, int]) -> int:
        first, marker = -1, b""
        for m in self._markers():
            i = self._next(m, buf, pos, found)
            if i >= 0 and (first < 0 or i < first):
                first, marker = i, m
        if self.language == ZPL:
            binary = self._next(_BINARY, buf, pos, found)
            if binary >= 0 and (first < 0 or binary < first):
                self.language = OTHER  # binary data: ~HS is data from here on
                if marker in ZEBRA_QUERIES or marker == SGD_PREFIX:
                    first, marker = found[UEL], UEL
        if first < 0:
            hold = self._partial_marker(buf, pos)
            self._data(buf[pos : len(buf) - hold], content=True)
            if hold:
                self._held = buf[len(buf) - hold :]
                return -1
            return len(buf)
        if marker == SGD_PREFIX:
            return self._sgd_in_zpl(buf, pos, first)
        self._data(buf[pos:first], content=True)
        end = first + len(marker)
        if marker == UEL:
            self._data(UEL, content=False)
            self._after_uel()
        elif marker == CTRL_D:
            self._data(CTRL_D, content=False)
            self._pjl_again()
            if self.current.content:
                self._end("ctrl-d")
        else:
            self._events.append(Query(PjlCommand(marker.decode("ascii"))))
        return end

    def _sgd_in_zpl(self, buf: bytes, pos: int, first: int) -> int:
        """C{! U} in ZPL text: an SGD line is a query (or an ignored setting), anything else data."""
        e = buf.find(b"\n", first)
        if e < 0 and len(buf) - first <= MAX_PJL_LINE:
            self._data(buf[pos:first], content=True)
            return self._hold(buf, first)  # the rest of the line comes later
        sgd = parse_sgd(buf[first : e + 1]) if e >= 0 else None
        if sgd is None:
            self._data(buf[pos : first + len(SGD_PREFIX)], content=True)
            return first + len(SGD_PREFIX)
        self._data(buf[pos:first], content=True)
        if sgd.verb == "getvar":
            self._events.append(Query(sgd))
        return e + 1

    @staticmethod
    def _next(marker: bytes | re.Pattern[bytes], buf: bytes, pos: int, found: dict[object, int]) -> int:
        """Index of the next C{marker} in C{buf} from C{pos} (-1: none), cached in C{found}."""
        i = found.get(marker)
        if i is None or 0 <= i < pos:
            if isinstance(marker, bytes):
                i = buf.find(marker, pos)
            else:
                m = marker.search(buf, pos)
                i = m.start() if m else -1
            found[marker] = i
        return i

    def _partial_marker(self, buf: bytes, pos: int) -> int:
        """Length of the longest tail of C{buf[pos:]} that could begin a marker."""
        longest = 0
        for m in self._markers():
            for k in range(min(len(m) - 1, len(buf) - pos), longest, -1):
                if buf.endswith(m[:k]):
                    longest = k
                    break
        return longest

    def end_of_input(self, how: str) -> list[Event]:
        """
        The end of input ends the job (its C{eoj} is C{how}) when it holds
        print data; PJL, UELs and white space alone are dropped (a status
        poll).  A last C{@PJL} query without its line feed is still
        answered (C{printf '@PJL INFO STATUS' | nc -N} works).
        """
        self._events = []
        tail, self._held = self._held, b""
        pjl_line = False
        if tail and self.pjl_mode:
            j = _WS.match(tail).end()  # type: ignore[union-attr]
            cmd = parse_line(tail[j:]) if tail[j : j + 4].upper() == PJL_PREFIX else None
            sgd = parse_sgd(tail[j:]) if self.zpl and cmd is None and tail.startswith(SGD_PREFIX, j) else None
            if sgd is not None:  # a last SGD line without its line feed
                if sgd.verb == "getvar":
                    self._events.append(Query(sgd))
                tail = b""
            if cmd is not None:
                self._command(cmd)
                pjl_line = True
                if cmd.is_query:
                    tail = b""
        elif tail and self.zpl and self.language == ZPL and tail.startswith(SGD_PREFIX):
            sgd = parse_sgd(tail)  # a last SGD line in ZPL text, without its line feed
            if sgd is not None:
                if sgd.verb == "getvar":
                    self._events.append(Query(sgd))
                tail = b""
        if self.ignoring:
            tail = b""
        if tail:
            if (not pjl_line and not self.current.content and _NON_WS.search(tail)
                    and not UEL.startswith(tail.strip())):
                self._start()
            self._events.append(Data(tail))
        if self.ignoring:
            events, self._events = self._events, []
            return events
        if self.current.content:
            self._end(how or HALF_CLOSE)
        else:
            self._events.append(Drop())
        events, self._events = self._events, []
        return events
