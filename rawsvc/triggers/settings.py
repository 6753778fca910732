"""
A stream trigger's connection settings: read once, when the trigger is
built, from its validated options into one frozen record that every
connection of the trigger shares.  The connection never looks an option up
per event.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from rawsvc.template import Template

if TYPE_CHECKING:
    from rawsvc.context import BuildContext

#: Default C{[service] spill_threshold}: past this a job's bytes go to a file.
DEFAULT_SPILL_THRESHOLD = 1 << 20


@attrs.frozen
class ConnectionSettings:
    """What one connection of a trigger needs to know, fixed for the trigger's life."""

    #: The trigger's name (in logs, refusals and on every job).
    trigger: str
    #: The flow each job runs.
    flow: str
    #: How C{${data}} decodes the payload (C{auto}: raw bytes for C{auto} templates).
    encoding: str = "utf-8"
    #: The text for a refused client (C{${reason}}, C{${peer_host}}, C{${trigger}}), or None: close/reset.
    refusal: Template | None = None
    #: Close a connection silent this long, in seconds (0: never).
    idle_timeout: float = 300.0
    #: Refuse a job that takes longer than this to arrive, in seconds (0: never).
    job_timeout: float = 600.0
    #: Refuse a job larger than this (None: no limit).
    max_job_bytes: int | None = None
    #: Connections counted at once (see L{rawsvc.triggers.admission}).
    max_connections: int = 1000
    #: Where large jobs spill, and from what size.
    temp_dir: str = ""
    spill_threshold: int = DEFAULT_SPILL_THRESHOLD
    #: A job cut off by a reset: C{discard} or C{process}.
    on_reset: str = "discard"
    #: Bytes left at the end of input that the framer did not end: C{process} or C{discard}.
    partial: str = "process"
    #: An empty message (an C{End} with no bytes) makes no job.
    skip_empty: bool = True
    #: Read the next job only once the current one's flow has ended.
    wait_for_flow: bool = False
    #: Close the connection once a job's flow has ended.
    close_after_reply: bool = False
    #: A flow run (with an empty payload) when a client connects, or None.
    connect_flow: str | None = None
    #: Seconds of silence that end a job (C{execute_on = "idle"}; 0: off).
    frame_idle: float = 0.0
    #: Below C{min_free}, turn new clients away at the accept (only useful
    #: where they can read why: a C{refusal} text).
    turn_away_when_disk_low: bool = False
    #: A job that could not be stored resets the connection, even with a
    #: C{refusal} text (the printer: CUPS reads no text, a reset it notices).
    reset_unstored: bool = False

    @classmethod
    def from_options(cls, options: Mapping[str, Any], context: BuildContext, **overrides: Any) -> "ConnectionSettings":
        """
        The settings of a trigger from its validated C{options}
        (L{rawsvc.triggers.base.LISTENER_OPTIONS} and whichever of the
        stream keys its schema has) and its build C{context}.
        """
        refusal = options.get("refusal")
        connect_flow = None
        if options.get("execute_on_connect"):
            connect_flow = options.get("connect_flow") or options["flow"]
        values: dict[str, Any] = dict(
            trigger=options["name"],
            flow=options["flow"],
            encoding=options.get("encoding", "utf-8"),
            refusal=refusal,
            idle_timeout=float(options.get("idle_timeout", 300.0)),
            job_timeout=float(options.get("job_timeout", 600.0)),
            max_job_bytes=options.get("max_job_bytes") or None,
            max_connections=options.get("max_connections", 1000),
            temp_dir=context.temp_dir,
            spill_threshold=context.service_options.get("spill_threshold", DEFAULT_SPILL_THRESHOLD),
            on_reset=options.get("on_reset", "discard"),
            partial=options.get("partial", "process"),
            skip_empty=options.get("skip_empty", True),
            wait_for_flow=options.get("wait_for_flow", False),
            close_after_reply=options.get("close_after_reply", False),
            connect_flow=connect_flow,
            frame_idle=float(options.get("idle_time", 0.0)) if options.get("execute_on") == "idle" else 0.0,
            turn_away_when_disk_low=refusal is not None,
        )
        values.update(overrides)
        return cls(**values)

    @property
    def job_encoding(self) -> str:
        """The encoding a job is made with (C{auto} decodes C{${data}} as UTF-8)."""
        return self.encoding if self.encoding != "auto" else "utf-8"
