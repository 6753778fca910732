"""
Which printer language a job is written in, from its first bytes, and how
many ZPL label formats it holds.  Pure functions, no I/O.

L{detect} looks only at a bounded prefix (L{PREFIX} bytes) with
C{bytes.startswith}/C{find} and a few compiled patterns, never a per-byte
loop.  A job that opens with PJL (a UEL, C{@PJL} lines) is judged by its
C{@PJL ENTER LANGUAGE = ...} line when it has one (the printer's framer
already parsed it: pass it as C{pjl_language}), else by the first bytes
after the PJL header.

The names (the C{${language}} variable):

==============  ==============================================================
C{postscript}   C{%!}, or PJL C{ENTER LANGUAGE = POSTSCRIPT}
C{pdf}          C{%PDF-}
C{pcl}          a PCL escape: C{ESC E} (reset), C{ESC &}, C{ESC *}, C{ESC (} ...
                (also PJL C{PCL}, C{PCLXL}: C{pclxl})
C{zpl}          C{^XA}, or another ZPL command: C{^} or C{~} and two letters
C{epl}          an EPL2 form: a line C{N}, C{Q...}, C{q...}, C{A...}, C{B...} ...
C{escpos}       C{ESC @} (initialize), or another ESC/POS command (C{ESC !},
                C{GS V}, C{GS !} ...)
C{text}         printable text (UTF-8 included), tabs and line ends only
C{binary}       anything else (raster, compressed, unknown)
C{empty}        no bytes
==============  ==============================================================
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, BinaryIO

from rawsvc.triggers.pjl import PJL_PREFIX, UEL, parse_line

if TYPE_CHECKING:
    from rawsvc.job import Payload

#: How many bytes of a job are looked at.
PREFIX = 4096

POSTSCRIPT, PDF, PCL, PCLXL, ZPL, EPL, ESCPOS, TEXT, BINARY, EMPTY = (
    "postscript", "pdf", "pcl", "pclxl", "zpl", "epl", "escpos", "text", "binary", "empty")

#: Every name L{detect} may return.
LANGUAGES = (POSTSCRIPT, PDF, PCL, PCLXL, ZPL, EPL, ESCPOS, TEXT, BINARY, EMPTY)

#: PJL C{ENTER LANGUAGE} values -> our names (others: lower case, as given).
_PJL_NAMES = {
    "POSTSCRIPT": POSTSCRIPT, "PDF": PDF, "PCL": PCL, "PCL5": PCL, "PCL5E": PCL, "PCL5C": PCL,
    "PCLXL": PCLXL, "PCL6": PCLXL, "ZPL": ZPL, "ZPL2": ZPL, "EPL": EPL, "EPL2": EPL,
}

_LEADING_WS = re.compile(rb"[ \t\r\n\f\x00]*")
#: A ZPL command: a caret or tilde, then two letters or a letter and a digit (^XA, ~HS, ^A0 ...).
_ZPL = re.compile(rb"[\^~][A-Za-z][A-Za-z0-9@]")
#: PCL: ESC E (reset), or ESC and a parameterized-command group character.
#: (ESC/POS's ESC E n, bold, has a binary 0 or 1 after it: not PCL.)
_PCL = re.compile(rb"\x1b(?:E(?![\x00\x01])|[&*(\)%][a-zA-Z0-9@\-])")
#: ESC/POS: ESC @, or a common ESC/GS command byte.
_ESCPOS = re.compile(rb"\x1b[@!\-aEdJptMR3]|\x1d[V!BhwkvLH(]")
#: EPL2: a whole line that is a command: N (clear), or a command letter then parameters.
_EPL_LINE = re.compile(rb"(?:\r?\n)?(?:N|q\d+|Q\d+,\d+|O[A-Za-z,]*|S\d|D\d+|ZT|ZB|I\d,.*|[AB]\d+,\d+,.*|P\d+(?:,\d+)?)\r?\n")
_BINARY_BYTE = re.compile(rb"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")
_ESC = b"\x1b"


def _skip_pjl(head: bytes) -> tuple[bytes, str]:
    """
    Skip a leading UEL and the C{@PJL} lines that follow it (at most a few
    hundred; each found with C{find}).  Returns the bytes after them and
    the C{ENTER LANGUAGE} value met ("" when none).
    """
    language = ""
    pos = _LEADING_WS.match(head).end()  # type: ignore[union-attr]
    for _ in range(256):
        if head.startswith(UEL, pos):
            pos += len(UEL)
        elif head[pos : pos + 4].upper() == PJL_PREFIX:
            end = head.find(b"\n", pos)
            line = head[pos:] if end < 0 else head[pos : end + 1]
            cmd = parse_line(line)
            if cmd is None:
                break
            if cmd.command == "ENTER" and "LANGUAGE" in cmd.params:
                language = cmd.params["LANGUAGE"].upper()
                pos = len(head) if end < 0 else end + 1
                break  # the language's data follows
            if end < 0:
                return b"", language
            pos = end + 1
        else:
            break
        pos = _LEADING_WS.match(head, pos).end()  # type: ignore[union-attr]
    return head[pos:], language


def from_pjl(name: str) -> str:
    """Our name for a PJL C{ENTER LANGUAGE} value (C{"ZPL"} -> C{zpl})."""
    name = name.strip().upper()
    return _PJL_NAMES.get(name, name.lower())


def detect(data: bytes, pjl_language: str = "") -> str:
    """
    The language of a job whose first bytes are C{data} (only
    C{data[:PREFIX]} is read).  C{pjl_language}, when given, is the job's
    C{@PJL ENTER LANGUAGE} value, which wins.
    """
    if pjl_language:
        return from_pjl(pjl_language)
    if not data:
        return EMPTY
    head = data[:PREFIX]
    if head[:1] in (b"\x1b", b"@", b" ", b"\t", b"\r", b"\n", b"\x00", b"\x0c"):
        rest, entered = _skip_pjl(head)
        if entered:
            return from_pjl(entered)
        if not rest:
            return TEXT if head.strip(b" \t\r\n\f") and not head.startswith(UEL) else EMPTY
    else:
        rest = head
    return _by_magic(rest.lstrip(b" \t\r\n\f\x00") or rest)


def _by_magic(head: bytes) -> str:
    if head.startswith(b"%PDF-"):
        return PDF
    if head.startswith(b"%!"):
        return POSTSCRIPT
    if head.startswith(b") HP-PCL XL") or head.startswith(b"' HP-PCL XL") or head.startswith(b"\" HP-PCL XL"):
        return PCLXL
    if head.startswith(_ESC):
        if _PCL.match(head):
            return PCL
        if _ESCPOS.match(head):
            return ESCPOS
        return BINARY
    if head[:1] == b"\x1d" and _ESCPOS.match(head):
        return ESCPOS
    if _ZPL.match(head):
        return ZPL
    if _EPL_LINE.match(head):
        return EPL
    if _BINARY_BYTE.search(head) is None:
        return ESCPOS if _ESCPOS.search(head) else TEXT
    if _ESCPOS.search(head):
        return ESCPOS  # text with receipt commands (a cut, a bold switch) in it
    return BINARY


_FORMAT_MARK = re.compile(rb"\^[Xx]([AaZz])")


def count_labels(data: bytes, carry: bool = False) -> tuple[int, bool]:
    """
    The ZPL formats (C{^XA} ... C{^XZ}) completed in C{data}, and whether a
    format is still open at its end.  C{carry}: a format was open at its
    start (for counting a large job chunk by chunk; a chunk must not split
    a C{^XA} or C{^XZ}).
    """
    opened, count = carry, 0
    for m in _FORMAT_MARK.finditer(data):
        if m.group(1) in b"Aa":
            opened = True
        elif opened:
            count += 1
            opened = False
    return count, opened


def labels(data: bytes) -> int:
    """How many ZPL formats (C{^XA} ... C{^XZ}) C{data} holds."""
    return count_labels(data)[0]


def labels_in_file(f: BinaryIO, chunk: int = 1 << 20) -> int:
    """L{labels} of a file read in C{chunk}-sized blocks (a spilled job)."""
    count, opened, tail = 0, False, b""
    while True:
        block = f.read(chunk)
        if not block:
            return count
        buf = tail + block
        # A tail that may begin a mark ("^", "^X") is counted with the next block.
        hold = 2 if buf[-2:] in (b"^X", b"^x") else 1 if buf[-1:] == b"^" else 0
        n, opened = count_labels(buf[: len(buf) - hold], opened)
        count += n
        tail = buf[len(buf) - hold :]


def job_variables(payload: Payload, meta: Mapping[str, str]) -> dict[str, str]:
    """
    C{language} and C{labels} of a received job: C{payload} holds its
    bytes, C{meta} its framer's metadata (the printer's C{pjl_language}).
    C{labels} is counted in ZPL jobs only (C{"0"} otherwise).
    """
    if payload.in_memory:
        whole = payload.bytes()
        language = detect(whole, meta.get("pjl_language", ""))
        n = labels(whole) if language == ZPL else 0
    else:
        with payload.open() as f:
            language = detect(f.read(PREFIX), meta.get("pjl_language", ""))
            if language == ZPL:
                f.seek(0)
                n = labels_in_file(f)
            else:
                n = 0
    return {"language": language, "labels": str(n)}
