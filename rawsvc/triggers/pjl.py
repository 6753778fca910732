"""
PJL and ZPL status: parsing the queries a print client sends in its job
stream, and formatting the answers in the bytes real printers use.

Pure functions, no I/O.  Formats (see HP's PJL Technical Reference and
Zebra's ZPL programming guide):

- every PJL reply is a header line C{@PJL <COMMAND> <CATEGORY>\\r\\n}, then
  C{\\r\\n}-ended lines, then a form feed C{\\x0c};
- the Zebra C{~HS} answer is three C{STX fields ETX CR LF} lines, sent in
  one write (clients read up to the first ETX).
"""

from __future__ import annotations

import re

import attrs

#: Universal Exit Language: ends a PJL job's language section, resets to PJL.
UEL = b"\x1b%-12345X"
#: PostScript end of job.
CTRL_D = b"\x04"
#: Zebra host status query.
HOST_STATUS = b"~HS"
PJL_PREFIX = b"@PJL"
FF = b"\x0c"
STX = b"\x02"
ETX = b"\x03"
CRLF = b"\r\n"

#: PJL commands that are questions to the printer; rawsvc answers them and
#: leaves them out of the job's payload.
QUERY_COMMANDS = frozenset({"INFO", "ECHO", "USTATUS", "USTATUSOFF", "INQUIRE", "DINQUIRE"})

#: (CODE, DISPLAY, ONLINE) that C{@PJL INFO STATUS} reports for each printer state.
#: 10001 ready, 10023 processing job, 10002 offline (operator pause), 30000
#: an auto-continuable error (the printer still accepts the next job).
STATE_CODES = {
    "idle": (10001, "00 READY", True),
    "receiving": (10023, "PROCESSING JOB", True),
    "processing": (10023, "PROCESSING JOB", True),
    "paused": (10002, "OFFLINE", False),
    "error": (30000, "ERROR", True),
}

#: (CODE, DISPLAY, ONLINE) for a simulated condition, which outranks the state
#: (HP's 40xxx: intervention required; 10002: offline).
CONDITION_CODES = {
    "offline": (10002, "OFFLINE", False),
    "paused": (10002, "PAUSED", False),
    "head_open": (40021, "CLOSE PRINTER COVER", True),
    "paper_out": (41000, "LOAD PAPER", True),
    "ribbon_out": (40600, "RIBBON OUT", True),
}

_SPACE = re.compile(rb"[ \t]+")
_WORD = re.compile(rb'([A-Za-z0-9_]+)(?:\s*=\s*("[^"]*"?|\S+))?')


@attrs.frozen
class PjlCommand:
    """One parsed C{@PJL} line: C{COMMAND}, positional words, C{KEY=VALUE} pairs."""

    command: str
    words: tuple[str, ...] = ()
    params: dict[str, str] = attrs.field(factory=dict)
    text: str = ""  # everything after the command word (ECHO's text, comments)

    @property
    def is_query(self) -> bool:
        return self.command in QUERY_COMMANDS


def parse_line(line: bytes) -> PjlCommand | None:
    """
    Parse one PJL line (with or without its CR LF).  Returns C{None} when
    the line does not start with C{@PJL}.  Keys and commands are upper
    case; values keep their case, without quotes.
    """
    line = line.strip()
    if not line[:4].upper() == PJL_PREFIX:
        return None
    rest = line[4:]
    if rest and not rest[:1].isspace():
        return None  # "@PJLX" is not PJL
    rest = rest.strip()
    if not rest:
        return PjlCommand("")  # "@PJL" alone is a valid no-op
    head, _, tail = _SPACE.sub(b" ", rest, count=1).partition(b" ")  # a tab separates words too
    command = head.decode("latin-1").upper()
    words: list[str] = []
    params: dict[str, str] = {}
    for m in _WORD.finditer(tail):
        key = m.group(1).decode("latin-1").upper()
        value = m.group(2)
        if value is None:
            words.append(key)
        else:
            params[key] = value.strip(b'"').decode("latin-1")
    return PjlCommand(command, tuple(words), params, tail.strip().decode("latin-1"))


def _reply(header: str, lines: list[str]) -> bytes:
    body = "".join(f"{line}\r\n" for line in lines)
    return f"@PJL {header}\r\n{body}".encode("latin-1", "replace") + FF


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _printable(text: str) -> str:
    """
    PJL text holds printable characters and tabs only: any other control
    character (CR, LF, the form feed that ends a reply) becomes a space, so
    text that may quote job data can never split or add reply lines.
    """
    return _CONTROL.sub(" ", text)


def _quote(text: str) -> str:
    return '"' + _printable(text).replace('"', "'") + '"'


def status_lines(state: str, error: str = "", condition: str = "") -> list[str]:
    """C{CODE=}, C{DISPLAY=}, C{ONLINE=} for a printer state (a simulated C{condition} outranks it)."""
    code, display, online = CONDITION_CODES[condition] if condition else STATE_CODES[state]
    if condition:
        return [f"CODE={code}", f"DISPLAY={_quote(display)}", f"ONLINE={'TRUE' if online else 'FALSE'}"]
    if state == "error" and error:
        display = f"ERROR: {error}"[:80]
    return [f"CODE={code}", f"DISPLAY={_quote(display)}", f"ONLINE={'TRUE' if online else 'FALSE'}"]


def info_status(state: str, error: str = "", condition: str = "") -> bytes:
    """The answer to C{@PJL INFO STATUS}."""
    return _reply("INFO STATUS", status_lines(state, error, condition))


def info_id(model: str) -> bytes:
    """The answer to C{@PJL INFO ID}."""
    return _reply("INFO ID", [_quote(model)])


def info_unknown(category: str) -> bytes:
    """An C{INFO} category rawsvc does not know: the header and C{?}."""
    return _reply(f"INFO {category}".rstrip(), ["?"])


def echo(text: str) -> bytes:
    """The answer to C{@PJL ECHO text}: the text, control characters as spaces."""
    return f"@PJL ECHO {_printable(text)}".rstrip().encode("latin-1", "replace") + CRLF + FF


def inquire(variable: str) -> bytes:
    """C{@PJL INQUIRE var}: rawsvc has no PJL environment, so the value is C{?}."""
    return _reply(f"INQUIRE {variable}".rstrip(), ["?"])


def ustatus_device(state: str, error: str = "", condition: str = "") -> bytes:
    """Unsolicited device status (C{@PJL USTATUS DEVICE=ON})."""
    return _reply("USTATUS DEVICE", status_lines(state, error, condition))


def ustatus_job(event: str, name: str, pages: int = 0, result: str = "") -> bytes:
    """
    Unsolicited job status (C{@PJL USTATUS JOB=ON}): C{event} is C{START}
    or C{END}; an END carries C{PAGES} (rawsvc counts none: 0).
    """
    lines = [event, f"NAME={_quote(name)}"]
    if event == "END":
        lines.append(f"PAGES={pages}")
        if result:
            lines.append(f"RESULT={result}")
    return _reply("USTATUS JOB", lines)


def host_status(
    paused: bool = False,
    receiving: bool = False,
    formats: int = 0,
    label_length: int = 1245,
    paper_out: bool = False,
    head_up: bool = False,
    ribbon_out: bool = False,
) -> bytes:
    """
    The Zebra C{~HS} answer.  Line 1 carries paper out, pause, label length,
    formats in the receive buffer and "partial format" (a job arriving);
    line 2 head up and ribbon out; the other fields are fixed, plausible
    values for a healthy printer.
    """
    line1 = (
        f"030,{int(paper_out)},{int(paused)},{label_length:04d},{min(formats, 999):03d},"
        f"0,0,{int(receiving)},000,0,0,0"
    )
    line2 = f"000,0,{int(head_up)},{int(ribbon_out)},1,2,6,0,00000000,1,000"
    line3 = "1234,0"
    return b"".join(STX + line.encode("ascii") + ETX + CRLF for line in (line1, line2, line3))


def answer(cmd: PjlCommand, state: str, error: str = "", model: str = "rawsvc", condition: str = "") -> bytes:
    """
    The bytes a printer in C{state} sends for the query C{cmd} (nothing for
    C{USTATUS}/C{USTATUSOFF}, which only switch unsolicited status).
    """
    if cmd.command == "INFO":
        category = cmd.words[0] if cmd.words else ""
        if category == "STATUS":
            return info_status(state, error, condition)
        if category == "ID":
            return info_id(model)
        return info_unknown(category)
    if cmd.command == "ECHO":
        return echo(cmd.text)
    if cmd.command in ("INQUIRE", "DINQUIRE"):
        return inquire(cmd.words[0] if cmd.words else "")
    return b""


def ustatus_settings(cmd: PjlCommand) -> dict[str, bool]:
    """
    What C{@PJL USTATUS DEVICE=ON JOB=OFF} (or C{USTATUSOFF}) switches:
    C{{"DEVICE": True, "JOB": False}}; C{VERBOSE} counts as on.
    """
    if cmd.command == "USTATUSOFF":
        return {"DEVICE": False, "JOB": False, "PAGE": False, "TIMED": False}
    return {key: value.upper() not in ("OFF", "0") for key, value in cmd.params.items()}


def split_host_status(data: bytes) -> list[bytes]:
    """The three field strings of a C{~HS} answer (for clients and tests)."""
    out = []
    start = data.find(STX)
    while start >= 0:
        end = data.find(ETX, start)
        if end < 0:
            break
        out.append(data[start + 1 : end])
        start = data.find(STX, end)
    return out


def split_replies(data: bytes) -> list[bytes]:
    """PJL replies in C{data}, each up to and including its form feed."""
    out: list[bytes] = []
    start = 0
    while True:
        i = data.find(FF, start)
        if i < 0:
            return out
        out.append(data[start : i + 1])
        start = i + 1
