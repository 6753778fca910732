"""
Trigger C{tcp}: the TCP server trigger.

Listens on any Twisted server endpoint (tcp, ssl, unix); frames each
client's bytes into jobs (on disconnect or half-close, on a delimiter, on a
byte count, on idle time, between markers, by a length prefix or per ZPL label: see
L{rawsvc.triggers.stream_framings}) and runs a flow for each; can also run a flow
when a client connects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from zope.interface import provider

from rawsvc import options as o
from rawsvc.errors import ConfigIssue
from rawsvc.interfaces import IFramer, ITriggerType
from rawsvc.triggers.api import FramedTrigger
from rawsvc.triggers.base import LISTENER_OPTIONS
from rawsvc.triggers.stream_framings import FRAMING_OPTIONS, framer_factory

if TYPE_CHECKING:
    from rawsvc.context import BuildContext

TCP_OPTIONS = LISTENER_OPTIONS + FRAMING_OPTIONS + o.Schema(
    o.Option("skip_empty", bool, True,
             doc="ignore empty messages (a bare `delimiter`, `start` right before `end`, a length of 0)"),
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
        #: Bytes the framing dropped (outside markers), all connections.
        self.bytes_dropped = 0
        # One framer per connection, its kind chosen here, once.
        self._framer: Callable[[], IFramer] = framer_factory(options, self.max_job_bytes, self._dropped)
        self.connect_flow = options["connect_flow"] or options["flow"]
        if options["connect_flow"] and not options["execute_on_connect"]:
            raise ConfigIssue("is set but execute_on_connect is false", "connect_flow")

    def _dropped(self, n: int) -> None:
        self.bytes_dropped += n

    def make_framer(self) -> IFramer:
        return self._framer()

    def status(self) -> dict[str, Any]:
        s = super().status()
        s["execute_on"] = self.opts["execute_on"]
        if self.opts["execute_on"] == "markers":
            s["bytes_dropped"] = self.bytes_dropped
        return s
