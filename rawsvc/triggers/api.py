"""
The protocol plugin API: how to write a stream trigger type.

B{With a framer} (the usual way).  Write a sans-IO framer
(L{rawsvc.interfaces.IFramer}: C{feed(bytes)} and C{end_of_input(how)}
return the events below) and make the trigger type from it::

    from rawsvc import options as o
    from rawsvc.triggers.api import framed_trigger

    StxEtxTrigger = framed_trigger(
        "stx-etx",
        o.Schema(o.Option("check", str, "none", o.one_of("none", "xor"))),
        lambda options: StxEtxFramer(check=options["check"]),
    )

The trigger gets, from L{rawsvc.triggers.connection.FramedConnection},
what every built-in stream trigger has: the listener options of
L{rawsvc.triggers.base.LISTENER_OPTIONS} (C{listen}, C{allow},
C{max_connections} with eviction, C{idle_timeout}, C{job_timeout},
C{max_job_bytes}, C{min_free}, C{spill_budget}, C{refusal}, C{encoding}),
the stream options of L{STREAM_OPTIONS} (C{on_reset}, C{partial},
C{skip_empty}, C{wait_for_flow}, C{close_after_reply}), replies in job
order, back-pressure, half-close handling and the job sink (the spool).
A trigger that needs more (a queue, status answers) passes C{make_policy}:
a L{rawsvc.triggers.policy.ConnectionPolicy} subclass, built per connection
(the C{printer} trigger's is L{rawsvc.triggers.printer.PrinterPolicy}).
Subclassing L{FramedTrigger} does the same with methods (the C{tcp}
trigger does); its only required override is L{FramedTrigger.make_framer}.

B{With the C{tcp} trigger's framings.}  L{FRAMING_OPTIONS} declares
C{execute_on} and the keys of each framing (delimiter, length, idle,
markers, length_prefix); L{framer_factory} checks them and returns what
makes one framer per connection (the C{tcp-client} trigger frames so).

B{With a plain Twisted protocol.}  Subclass
L{rawsvc.triggers.base.ListenerTrigger}, override C{build_protocol()} to
return your protocol, and for each job build a L{rawsvc.job.Job} and call
C{trigger.sink.submit(job, trigger.flow, trigger.counters)}
(L{rawsvc.interfaces.IJobSink}); the Deferred fires with the finished job
(C{job.state}: done, failed, refused, interrupted).  Limits, reply order
and refusals are then yours to write.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from zope.interface import provider

from rawsvc import options as o
from rawsvc.errors import ConfigIssue
from rawsvc.interfaces import IAnnouncingFramer, IConnectionPolicy, IFramer, ITriggerType
from rawsvc.triggers.base import LISTENER_OPTIONS, ListenerTrigger, with_backlog
from rawsvc.triggers.connection import FramedConnection
from rawsvc.triggers.connections import OpenConnections
from rawsvc.triggers.framing import CLOSE, END, HALF_CLOSE, Data, Drop, End, Event, Query, Reply, Start
from rawsvc.triggers.policy import ConnectionPolicy
from rawsvc.triggers.settings import ConnectionSettings
from rawsvc.triggers.stream_framings import FRAMING_OPTIONS, framer_factory

if TYPE_CHECKING:
    from rawsvc.context import BuildContext

__all__ = [
    "OpenConnections",
    "CLOSE", "END", "FRAMING_OPTIONS", "HALF_CLOSE", "LISTENER_OPTIONS", "STREAM_OPTIONS", "ConnectionPolicy",
    "ConnectionSettings", "Data", "Drop", "End", "Event", "FramedConnection", "FramedTrigger", "IAnnouncingFramer",
    "IConnectionPolicy", "IFramer", "ListenerTrigger", "Query", "Reply", "Start", "framed_trigger", "framer_factory",
    "with_backlog",
]

#: What a framed trigger accepts besides the listener options.
STREAM_OPTIONS = o.Schema(
    o.Option("on_reset", str, "discard", o.one_of("process", "discard"),
             doc="a job cut off by a connection reset"),
    o.Option("partial", str, "process", o.one_of("process", "discard"),
             doc="bytes left at the end of input that the framing did not end"),
    o.Option("skip_empty", bool, True, doc="an empty message makes no job"),
    o.Option("close_after_reply", bool, False, doc="close the connection once a job's flow ends"),
    o.Option("wait_for_flow", bool, False, doc="read the next job only after the current flow ends"),
)


class FramedTrigger(ListenerTrigger):
    """
    A stream trigger whose connections run a framer.  Set C{type_name} and
    C{options} (L{LISTENER_OPTIONS} + L{STREAM_OPTIONS} + your own keys),
    decorate the class with C{@provider(ITriggerType)}, and override
    L{make_framer}; the validated options are C{self.opts}.
    """

    options = LISTENER_OPTIONS + STREAM_OPTIONS

    @classmethod
    def from_config(cls, options: dict[str, Any], context: BuildContext) -> "FramedTrigger":
        """Build the trigger and one framer, so a bad option is a config error, not a failing client."""
        trigger = cls(options, context)
        try:
            trigger.make_framer()
        except ValueError as e:
            raise ConfigIssue(str(e)) from None
        return trigger

    def make_framer(self) -> IFramer:
        """A new framer for one connection."""
        raise NotImplementedError

    def make_policy(self, conn: FramedConnection) -> IConnectionPolicy:
        """The policy of one connection (default: adds nothing)."""
        return ConnectionPolicy(conn)

    def build_protocol(self) -> FramedConnection:
        # A trigger that keeps the default policy shares one (it adds nothing).
        plain = type(self).make_policy is FramedTrigger.make_policy
        return FramedConnection(self, self.make_framer(), None if plain else self.make_policy)


def _class_name(type_name: str) -> str:
    words = [w for w in re.split(r"[^A-Za-z0-9]+", type_name) if w]
    return "".join(w[:1].upper() + w[1:] for w in words) + "Trigger"


def framed_trigger(
    type_name: str,
    options: o.Schema,
    make_framer: Callable[[Mapping[str, Any]], IFramer],
    make_policy: Callable[[FramedConnection], IConnectionPolicy] | None = None,
    doc: str = "",
) -> type[FramedTrigger]:
    """
    A trigger type (an L{ITriggerType}, ready for the C{rawsvc.triggers}
    entry-point group) named C{type_name}, taking the listener and stream
    options plus C{options}, whose connections run a framer made by
    C{make_framer(validated_options)} (a C{ValueError} it raises is reported
    as a config error) and, optionally, a policy made by
    C{make_policy(connection)}.
    """

    def _make_framer(self: FramedTrigger) -> IFramer:
        return make_framer(self.opts)

    namespace: dict[str, Any] = {
        "type_name": type_name,
        "options": LISTENER_OPTIONS + STREAM_OPTIONS + options,
        "make_framer": _make_framer,
        "__doc__": doc or f"The {type_name!r} trigger: a framed stream trigger.",
    }
    if make_policy is not None:
        namespace["make_policy"] = lambda self, conn: make_policy(conn)
    cls = type(_class_name(type_name), (FramedTrigger,), namespace)
    return provider(ITriggerType)(cls)
