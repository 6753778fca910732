"""
Logs a machine can read: C{[service] log_format = "json"} writes one flat
JSON object per line -- C{time} (ISO 8601, UTC), C{level}, C{namespace},
C{message} (the formatted text) and the event's own structured fields
(C{job_id}, C{trigger}, C{destination}, C{error} ...) -- to twistd's log
file, or to stdout where twistd would write text there.

L{install} hands twistd the observer factory (its C{--logger}), so every
line twistd itself logs is JSON too; the text format stays the default.
"""

from __future__ import annotations

import datetime
import json
import sys
import tomllib
from typing import IO, Any, Callable

from twisted.logger import ILogObserver, LogEvent, formatEvent
from twisted.python import logfile
from zope.interface import implementer

#: The values C{[service] log_format} takes.
FORMATS = ("text", "json")

_PLAIN = (str, int, float, bool, type(None))


def flat_event(event: LogEvent) -> dict[str, Any]:
    """One log event as a flat JSON-ready record (see the module docstring)."""
    when = event.get("log_time")
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": (datetime.datetime.fromtimestamp(when, datetime.timezone.utc).isoformat(timespec="milliseconds")
                 if isinstance(when, (int, float)) else None),
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace", ""),
        "message": formatEvent(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in record or key in ("message", "format", "isError", "system", "time"):
            continue
        if isinstance(value, _PLAIN):
            record[key] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, _PLAIN) for v in value):
            record[key] = list(value)
        else:
            record[key] = str(value)
    failure = event.get("log_failure")
    if failure is not None:
        record.setdefault("error", failure.getErrorMessage())
        record["traceback"] = failure.getTraceback()
    return record


@implementer(ILogObserver)
class JsonLineObserver:
    """Writes each event as one JSON line (L{flat_event}) to a text file, flushing after each."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def __call__(self, event: LogEvent) -> None:
        self.out.write(json.dumps(flat_event(event), default=str, ensure_ascii=False) + "\n")
        self.out.flush()


def observer_for(twistd_options: Any) -> Callable[[], JsonLineObserver]:
    """
    A factory for twistd's C{--logger}: a L{JsonLineObserver} on the file
    twistd would log to (C{--logfile}, C{twistd.log} for a daemon), or stdout
    for C{--logfile=-} and for C{--nodaemon} without a log file.
    """

    def make() -> JsonLineObserver:
        name = twistd_options.get("logfile") or ""
        if name == "-" or (not name and twistd_options.get("nodaemon")):
            return JsonLineObserver(sys.stdout)
        return JsonLineObserver(logfile.LogFile.fromFullPath(name or "twistd.log"))

    return make


def configured_format(path: str) -> str:
    """C{[service] log_format} of the config at C{path}; "text" when unreadable (the real load reports why)."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return "text"
    service = doc.get("service")
    value = service.get("log_format", "text") if isinstance(service, dict) else "text"
    return value if value in FORMATS else "text"


#: The twistd options L{install} saw: twistd takes its C{--logger} as a dotted name, called with no arguments.
_twistd_options: dict[str, Any] = {}


def twistd_observer() -> JsonLineObserver:
    """The C{--logger} factory L{install} names: L{observer_for} the twistd options it saw."""
    return observer_for(_twistd_options)()


def install(config_path: str, twistd_options: Any) -> bool:
    """
    Name L{twistd_observer} as twistd's C{--logger} when the config asks for
    JSON and no C{--logger} was given; whether it did.  (twistd resolves the
    name after our options, and calls the factory once logging starts.)
    """
    if twistd_options is None or twistd_options.get("logger"):
        return False
    if configured_format(config_path) != "json":
        return False
    _twistd_options.clear()
    _twistd_options.update(logfile=twistd_options.get("logfile"), nodaemon=twistd_options.get("nodaemon"))
    twistd_options["logger"] = f"{__name__}.twistd_observer"
    return True
