"""
The virtual printer's answers to status queries and its simulated
conditions, mixed into L{rawsvc.triggers.printer.PrinterTrigger}: every
answer (PJL, C{~HS}, C{~HQES}, C{~HI}, SGD) is made here from one reading
of the printer's state and conditions, so they all tell the same truth.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from rawsvc.interfaces import IJobSink
from rawsvc.triggers import pjl, zpl_status
from rawsvc.triggers.printer_conditions import Conditions, HoldingSink
from rawsvc.triggers.printer_state import PrinterSnapshot, PrinterState
from rawsvc.triggers.zpl_status import SgdCommand, ZebraIdentity

log = Logger(namespace="rawsvc.trigger")


class PrinterAnswers:
    """Status answers and conditions; the trigger supplies the attributes below."""

    name: Any
    model: str
    answer_pjl: bool
    state: PrinterState
    conditions: Conditions
    identity: ZebraIdentity
    _holding_sink: HoldingSink | None = None
    # The trigger's own (annotations only: nothing here shadows them).
    snapshot: Callable[[], PrinterSnapshot]
    update_port: Callable[[], None]

    def offline(self) -> bool:
        """The simulated C{offline} condition: the port closes (L{rawsvc.triggers.printer_port})."""
        return self.conditions.offline

    # The job sink, seen through the conditions that hold jobs ----------------

    @property
    def sink(self) -> IJobSink:
        """The service's job sink behind a L{HoldingSink} (jobs wait while a condition holds them)."""
        assert self._holding_sink is not None
        return self._holding_sink

    @sink.setter
    def sink(self, inner: IJobSink) -> None:
        if self._holding_sink is None:
            self._holding_sink = HoldingSink(inner, self.conditions, str(self.name))
        else:
            self._holding_sink.inner = inner

    @property
    def held_jobs(self) -> int:
        return len(self._holding_sink.held) if self._holding_sink is not None else 0

    # Conditions ---------------------------------------------------------------

    def set_condition(self, condition: str, on: bool = True) -> str:
        """Switch a simulated condition on or off (L{rawsvc.triggers.printer_conditions})."""
        changed = self.conditions.set(condition, on)
        if changed:
            log.info("printer {printer}: condition {condition} {how}", printer=self.name,
                     condition=condition, how="set" if on else "cleared")
        return ", ".join(self.conditions.ordered()) or "ready"

    def clear_conditions(self) -> str:
        self.conditions.clear()
        return "ready"

    def _conditions_changed(self) -> None:
        """Offline closes the port; a clear releases held jobs; PJL USTATUS watchers hear of it."""
        self.update_port()
        if self._holding_sink is not None and not self.conditions.holding:
            self._holding_sink.release()
        self.state.touch()

    # Answers ------------------------------------------------------------------

    def host_status(self) -> bytes:
        """The Zebra C{~HS} answer for the printer's state and conditions now."""
        snap = self.snapshot()
        return zpl_status.zebra_host_status(
            self.conditions.active,
            paused=snap.state == "paused",
            receiving=snap.receiving,
            formats=snap.processing + snap.queued + snap.held,
        )

    def pjl_condition(self) -> str:
        """The condition PJL status reports (it outranks the state), or ""."""
        return self.conditions.first()

    def answer_query(self, cmd: Any) -> bytes | None:
        """The bytes for a status query met in the stream (None: no answer)."""
        if isinstance(cmd, SgdCommand):
            if cmd.verb != "getvar":
                return None  # setvar / do: ignored, as a printer ignores what it does not know
            return zpl_status.getvar(cmd.name, self.identity, self.conditions.active, self.host_status())
        command = cmd.command
        if command == "~HS":
            return self.host_status()
        if command == "~HQES":
            return zpl_status.hqes(self.conditions.active)
        if command == "~HI":
            return zpl_status.hi(self.identity)
        if not self.answer_pjl:
            return None
        return pjl.answer(cmd, self.state.state, self.state.last_error, self.model, self.pjl_condition())
