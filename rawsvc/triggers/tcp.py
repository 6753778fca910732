"""
Trigger C{tcp}: the TCP server trigger.

Listens on any Twisted server endpoint (tcp, ssl, unix); frames each
client's bytes into jobs (on disconnect or half-close, on a delimiter, on a
byte count, on idle time, or at the end of each ZPL label format) and runs a flow for each; can also run a flow
when a client connects.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from zope.interface import provider

from rawsvc import options as o
from rawsvc.errors import ConfigIssue
from rawsvc.interfaces import IFramer, ITriggerType
from rawsvc.triggers.api import FramedTrigger
from rawsvc.triggers.base import LISTENER_OPTIONS
from rawsvc.triggers.framing import DelimiterFramer, LengthFramer, StreamFramer
from rawsvc.triggers.zpl_framing import ZplFramer

if TYPE_CHECKING:
    from rawsvc.context import BuildContext

TCP_OPTIONS = LISTENER_OPTIONS + o.Schema(
    o.Option("execute_on", str, "disconnect", o.one_of("disconnect", "delimiter", "length", "idle", "zpl"),
             doc="how a job ends: `disconnect` (half-close or close), `delimiter`, `length`, `idle`, "
                 "`zpl` (each ZPL format `^XA`…`^XZ` is a job; the connection stays open)"),
    o.Option("delimiter", str, "", shown_default="—",
             doc="with `delimiter`: bytes ending a message, TOML escapes allowed (`\"\\r\\n\"`, `\"\\u0003\"`)"),
    o.Option("keep_delimiter", bool, False, doc="keep the delimiter in the payload"),
    o.Option("skip_empty", bool, True, doc="with `delimiter`: ignore empty messages"),
    o.Option("length", int, 0, doc="with `length`: message size in bytes", shown_default="—"),
    o.Option("idle_time", (int, float), 0.0, o.non_negative, doc="with `idle`: seconds of silence that end a job",
             shown_default="—"),
    o.Option("partial", str, "process", o.one_of("process", "discard"),
             doc="bytes left at a clean close without a delimiter / short of `length`: `process` or `discard` "
                 "(logged either way)"),
    o.Option("on_reset", str, "discard", o.one_of("process", "discard"),
             doc="a job cut off by a connection reset: `discard` or `process`"),
    o.Option("execute_on_connect", bool, False, doc="run a flow when a client connects (empty payload, peer variables)"),
    o.Option("connect_flow", str, "", doc="the flow for `execute_on_connect`", shown_default="`flow`"),
    o.Option("close_after_reply", bool, False, doc="close the connection once a job's flow ends"),
    o.Option("wait_for_flow", bool, False, doc="read the next job only after the current flow ends"),
)


@provider(ITriggerType)
class TcpTrigger(FramedTrigger):
    """The TCP server trigger: a framed trigger whose framer follows C{execute_on}."""

    type_name = "tcp"
    options = TCP_OPTIONS

    def __init__(self, options: dict[str, Any], context: BuildContext) -> None:
        super().__init__(options, context)
        mode = options["execute_on"]
        self.delimiter = b""
        if mode == "delimiter":
            if not options["delimiter"]:
                raise ConfigIssue("is required with execute_on = \"delimiter\" (e.g. \"\\r\\n\")", "delimiter")
            self.delimiter = o.byte_string(options["delimiter"])
        elif options["delimiter"]:
            raise ConfigIssue(f"only applies to execute_on = \"delimiter\", not {mode!r}", "delimiter")
        if mode == "length":
            if options["length"] <= 0:
                raise ConfigIssue("is required with execute_on = \"length\" (a positive byte count)", "length")
            if self.max_job_bytes is not None and options["length"] > self.max_job_bytes:
                raise ConfigIssue("is larger than max_job_bytes, so every job would be refused", "length")
        elif options["length"]:
            raise ConfigIssue(f"only applies to execute_on = \"length\", not {mode!r}", "length")
        self.idle_time = 0.0
        if mode == "idle":
            if options["idle_time"] <= 0:
                raise ConfigIssue("is required with execute_on = \"idle\" (seconds)", "idle_time")
            self.idle_time = options["idle_time"]
        elif options["idle_time"]:
            raise ConfigIssue(f"only applies to execute_on = \"idle\", not {mode!r}", "idle_time")
        # One framer per connection, its kind chosen here, once: disconnect and
        # idle stream everything (the settings' frame_idle ends an idle job).
        self._framer: Callable[[], IFramer] = StreamFramer
        if mode == "delimiter":
            self._framer = functools.partial(DelimiterFramer, self.delimiter, options["keep_delimiter"])
        elif mode == "length":
            self._framer = functools.partial(LengthFramer, options["length"])
        elif mode == "zpl":
            self._framer = ZplFramer
        self.connect_flow = options["connect_flow"] or options["flow"]
        if options["connect_flow"] and not options["execute_on_connect"]:
            raise ConfigIssue("is set but execute_on_connect is false", "connect_flow")

    def make_framer(self) -> IFramer:
        return self._framer()

    def status(self) -> dict[str, Any]:
        s = super().status()
        s["execute_on"] = self.opts["execute_on"]
        return s
