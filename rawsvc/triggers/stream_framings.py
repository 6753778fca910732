"""
The framings a byte-stream trigger offers through C{execute_on}, in one
place: their option declarations (L{FRAMING_OPTIONS}) and
L{framer_factory}, which checks the keys of the chosen framing (a
L{ConfigIssue} that names the key) and returns what makes one framer per
connection.  The C{tcp} and C{tcp-client} triggers both frame with these.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from rawsvc import options as o
from rawsvc.errors import ConfigIssue
from rawsvc.interfaces import IFramer
from rawsvc.triggers.framing import DelimiterFramer, LengthFramer, StreamFramer
from rawsvc.triggers.length_prefix import BYTE_ORDERS, PREFIX_SIZES, LengthPrefixFramer
from rawsvc.triggers.markers import IGNORE, RESTART, MarkersFramer
from rawsvc.triggers.zpl_framing import ZplFramer

EXECUTE_ON = ("disconnect", "delimiter", "length", "idle", "markers", "length_prefix", "zpl")


def _prefix_bytes(value: int) -> int:
    if value not in PREFIX_SIZES:
        raise ConfigIssue(f"must be 1, 2 or 4, not {value!r}")
    return value


FRAMING_OPTIONS = o.Schema(
    o.Option("execute_on", str, "disconnect", o.one_of(*EXECUTE_ON),
             doc="how a job ends: `disconnect` (half-close or close), `delimiter`, `length`, `idle`, "
                 "`markers` (between `start` and `end`), `length_prefix` (a length header before each message), "
                 "`zpl` (each ZPL format `^XA`…`^XZ` is a job; the connection stays open)"),
    o.Option("delimiter", str, "", shown_default="—",
             doc="with `delimiter`: bytes ending a message, TOML escapes allowed (`\"\\r\\n\"`, `\"\\u0003\"`)"),
    o.Option("keep_delimiter", bool, False, doc="keep the delimiter in the payload"),
    o.Option("length", int, 0, doc="with `length`: message size in bytes", shown_default="—"),
    o.Option("idle_time", (int, float), 0.0, o.non_negative, doc="with `idle`: seconds of silence that end a job",
             shown_default="—"),
    o.Option("start", str, "", shown_default="—",
             doc="with `markers`: bytes that begin a message, TOML escapes allowed (`\"\\u0002\"`, `\"<msg>\"`)"),
    o.Option("end", str, "", shown_default="—",
             doc="with `markers`: bytes that end a message (`\"\\u0003\"`, `\"</msg>\"`); bytes outside "
                 "messages are dropped and counted (`bytes_dropped` in status)"),
    o.Option("on_restart", str, RESTART, o.one_of(RESTART, IGNORE),
             doc="with `markers`: a `start` inside an open message: `restart` (drop the bytes so far) or "
                 "`ignore` (it is data)"),
    o.Option("prefix_bytes", int, 2, _prefix_bytes, doc="with `length_prefix`: header size, 1, 2 or 4 bytes"),
    o.Option("byte_order", str, "big", o.one_of(*BYTE_ORDERS), doc="with `length_prefix`: `big` or `little` endian"),
    o.Option("prefix_counts_header", bool, False,
             doc="with `length_prefix`: the length includes the header itself"),
)

#: Keys that belong to one framing only, and that framing.
_ONLY = {"delimiter": "delimiter", "length": "length", "idle_time": "idle", "start": "markers", "end": "markers"}


def _only_with(options: Mapping[str, Any], mode: str) -> None:
    for key, owner in _ONLY.items():
        if owner != mode and options.get(key):
            raise ConfigIssue(f"only applies to execute_on = \"{owner}\", not {mode!r}", key)


def framer_factory(
    options: Mapping[str, Any],
    max_job_bytes: int | None = None,
    on_dropped: Callable[[int], None] | None = None,
) -> Callable[[], IFramer]:
    """
    What makes one framer per connection for the validated C{options}
    (L{FRAMING_OPTIONS}); C{on_dropped(n)} is told of bytes a framing drops
    (outside markers).  A key missing, misplaced or wrong for the chosen
    framing is a L{ConfigIssue} naming it.
    """
    mode = options["execute_on"]
    _only_with(options, mode)
    if mode == "delimiter":
        if not options["delimiter"]:
            raise ConfigIssue("is required with execute_on = \"delimiter\" (e.g. \"\\r\\n\")", "delimiter")
        return functools.partial(DelimiterFramer, o.byte_string(options["delimiter"]), options["keep_delimiter"])
    if mode == "length":
        if options["length"] <= 0:
            raise ConfigIssue("is required with execute_on = \"length\" (a positive byte count)", "length")
        if max_job_bytes is not None and options["length"] > max_job_bytes:
            raise ConfigIssue("is larger than max_job_bytes, so every job would be refused", "length")
        return functools.partial(LengthFramer, options["length"])
    if mode == "idle" and options["idle_time"] <= 0:
        raise ConfigIssue("is required with execute_on = \"idle\" (seconds)", "idle_time")
    if mode == "markers":
        for key, example in (("start", "\\u0002"), ("end", "\\u0003")):
            if not options[key]:
                raise ConfigIssue(f"is required with execute_on = \"markers\" (e.g. {key} = \"{example}\")", key)
        return functools.partial(MarkersFramer, o.byte_string(options["start"]), o.byte_string(options["end"]),
                                 options["on_restart"], on_dropped)
    if mode == "length_prefix":
        return functools.partial(LengthPrefixFramer, options["prefix_bytes"], options["byte_order"],
                                 options["prefix_counts_header"])
    if mode == "zpl":
        return ZplFramer
    return StreamFramer  # disconnect and idle stream everything (the settings' frame_idle ends an idle job)
