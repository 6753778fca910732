"""
What a Zebra printer answers to the questions label software asks, from
the virtual printer's model and conditions.  Pure functions, no I/O.

Formats (Zebra's ZPL II programming guide, SGD command reference):

- C{~HS}: three C{STX fields ETX CR LF} lines (L{rawsvc.triggers.pjl.host_status});
- C{~HQES}: C{STX CR LF}, an empty line, C{PRINTER STATUS}, an C{ERRORS:}
  and a C{WARNINGS:} line (a flag, then two groups of eight hex digits; the
  last group's lowest nibble: 1 media out, 2 ribbon out, 4 head open; its
  fifth: 1 paused), C{ETX CR LF};
- C{~HI}: C{STX model,firmware,dots per mm,memory ETX CR LF};
- SGD C{! U1 getvar "name"}: the value in double quotes, no line end;
  an unknown name answers C{"?"}; C{setvar} and C{do} are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Collection

import attrs

from rawsvc.triggers.pjl import CRLF, ETX, STX, host_status, split_host_status

#: The simulated conditions a virtual printer can be put in.
PAPER_OUT, HEAD_OPEN, RIBBON_OUT, PAUSED, OFFLINE = "paper_out", "head_open", "ribbon_out", "paused", "offline"
CONDITIONS = (PAPER_OUT, HEAD_OPEN, RIBBON_OUT, PAUSED, OFFLINE)
#: Conditions under which a printer takes jobs but prints none (it holds them).
HOLDING = (PAPER_OUT, HEAD_OPEN, RIBBON_OUT, PAUSED)

#: ~HQES error bits (the lowest group of eight hex digits).
_ERROR_BITS = {PAPER_OUT: 0x1, RIBBON_OUT: 0x2, HEAD_OPEN: 0x4, PAUSED: 0x10000}

#: Zebra host queries answered in the stream (beside C{~HS}).
HQES = b"~HQES"
HI = b"~HI"

#: An SGD command line: C{! U1 verb "name" ["value"]} (C{! U} too).
_SGD = re.compile(rb'!\s*U1?\s+(getvar|setvar|do)\s+"([^"\r\n]*)"(?:\s+"([^"\r\n]*)")?', re.IGNORECASE)
SGD_PREFIX = b"! U"


@attrs.frozen
class SgdCommand:
    """One SGD command: C{getvar}, C{setvar} or C{do}, its variable name and value."""

    verb: str
    name: str
    value: str = ""
    command: str = "SGD"  # as PjlCommand's, so a policy can tell queries apart


def parse_sgd(line: bytes) -> SgdCommand | None:
    """An SGD line (C{! U1 getvar "media.status"}), or None when it is not one."""
    m = _SGD.match(line.strip())
    if m is None:
        return None
    value = m.group(3)
    return SgdCommand(m.group(1).decode("ascii").lower(), m.group(2).decode("latin-1").strip().lower(),
                      value.decode("latin-1") if value is not None else "")


@attrs.frozen
class ZebraIdentity:
    """What the virtual printer says it is (from the trigger's C{model})."""

    model: str = "rawsvc virtual printer"
    friendly_name: str = "rawsvc"
    firmware: str = "V1.0.0-rawsvc"
    dots_per_mm: int = 8
    memory_kb: int = 8192


def hqes(conditions: Collection[str]) -> bytes:
    """The C{~HQES} answer for the printer's C{conditions}."""
    bits = 0
    for c in conditions:
        bits |= _ERROR_BITS.get(c, 0)
    lines = [
        "",
        "  PRINTER STATUS",
        f"   ERRORS:         {1 if bits else 0} 00000000 {bits:08X}",
        "   WARNINGS:       0 00000000 00000000",
    ]
    return STX + CRLF + "".join(f"{line}\r\n" for line in lines).encode("ascii") + ETX + CRLF


def _field(text: str) -> str:
    """A ~HI field: no commas or control characters."""
    return re.sub(r"[\x00-\x1f,\x7f]", " ", text)


def hi(identity: ZebraIdentity) -> bytes:
    """The C{~HI} answer: model, firmware, dots per mm, memory."""
    body = ",".join([_field(identity.model), _field(identity.firmware), str(identity.dots_per_mm),
                     f"{identity.memory_kb}KB"])
    return STX + body.encode("latin-1", "replace") + ETX + CRLF


def zebra_host_status(conditions: Collection[str], paused: bool = False, receiving: bool = False,
                      formats: int = 0) -> bytes:
    """The C{~HS} answer with the conditions' flags (paper out, pause, head up, ribbon out)."""
    return host_status(paused=paused or PAUSED in conditions or OFFLINE in conditions, receiving=receiving,
                       formats=formats, paper_out=PAPER_OUT in conditions, head_up=HEAD_OPEN in conditions,
                       ribbon_out=RIBBON_OUT in conditions)


def _quoted(value: str) -> bytes:
    return b'"' + value.replace('"', "'").encode("latin-1", "replace") + b'"'


def getvar(name: str, identity: ZebraIdentity, conditions: Collection[str], host_status_answer: bytes) -> bytes:
    """The answer to C{! U1 getvar "name"}: the value in double quotes (C{"?"} when unknown)."""
    values = {
        "device.languages": "zpl",
        "device.product_name": identity.model,
        "device.friendly_name": identity.friendly_name,
        "appl.name": identity.firmware,
        "media.status": "out" if PAPER_OUT in conditions else "ok",
        "head.latch": "open" if HEAD_OPEN in conditions else "ok",
        "ribbon.status": "out" if RIBBON_OUT in conditions else "ok",
        "device.host_status": ",".join(f.decode("ascii") for f in split_host_status(host_status_answer)),
    }
    return _quoted(values.get(name, "?"))
