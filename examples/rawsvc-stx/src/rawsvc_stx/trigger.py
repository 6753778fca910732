"""
Trigger C{stx-etx}: a TCP listener for devices that send STX/ETX frames
(see L{rawsvc_stx.framing}); each good frame is a job, answered ACK once its
flow has ended done and NAK when it failed.

The whole trigger is its options and its framer: rawsvc's framed
connection gives it the listener options (C{listen}, C{allow},
C{max_connections}, C{idle_timeout}, C{max_job_bytes} ...), replies in
frame order, back-pressure and the spool.

    [[trigger]]
    name = "scale"
    type = "stx-etx"
    listen = "tcp:4001:interface=0.0.0.0"
    check = "xor"
    flow = "weigh"

Job variables besides rawsvc's own: C{frame} (its number on the
connection, from 1) and C{frame_check} (none, xor or lrc).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rawsvc import options as o
from rawsvc.triggers.api import framed_trigger

from rawsvc_stx.framing import CHECKS, StxEtxFramer

OPTIONS = o.Schema(
    o.Option("check", str, "none", o.one_of(*CHECKS),
             doc="the check byte after ETX: none, xor (BCC) or lrc (ISO 1155)"),
    o.Option("answer", bool, True, doc="answer each frame ACK (0x06) or NAK (0x15)"),
)


def make_framer(options: Mapping[str, Any]) -> StxEtxFramer:
    """One framer per connection, from the trigger's validated options."""
    return StxEtxFramer(check=options["check"], answer=options["answer"])


StxEtxTrigger = framed_trigger(
    "stx-etx", OPTIONS, make_framer,
    doc="STX/ETX framed device messages, one job per frame, answered ACK/NAK.",
)
