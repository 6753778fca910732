"""
Trigger C{printer}: a JetDirect/AppSocket virtual printer (port 9100).

One job per connection: a job ends at the client's half-close or close, or
at an end-of-job marker (Ctrl-D, the PJL UEL; see
L{rawsvc.triggers.printer_framing}).  After a half-close the printer sends
what it owes on the back-channel and closes at once, so CUPS's socket
backend exits instead of waiting 90 s.

One client at a time, as on a real printer.  C{busy} says what happens to
the others while a client is served (from its accept until it has closed
and its jobs' flows have ended):

- C{queue} (default): accepted and held unread, up to C{queue_depth}; the
  kernel keeps their bytes and they are served in order.  Past the depth
  the port closes, so further clients get a real refusal (ECONNREFUSED).
- C{refuse}: the port closes for the whole job, so a new client's
  C{connect()} gets ECONNREFUSED.  A client accepted in the same instant
  (before the port is closed) is reset (RST), or sent C{refusal}.

The status queries in the stream (C{@PJL INFO STATUS}, C{@PJL USTATUS},
C{@PJL ECHO}, C{~HS}) are answered on the same connection from the
printer's state (L{rawsvc.triggers.printer_state}).

Job variables: C{pjl_job_name} (from C{@PJL JOB NAME="..."}, else empty),
C{pjl_language} (from C{@PJL ENTER LANGUAGE=...}, else empty), C{eoj}
(how the job ended: C{ctrl-d}, C{uel}, C{half-close}, C{close}) and
C{printer} (the trigger's name).
"""

from __future__ import annotations

import collections
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.logger import Logger
from zope.interface import implementer, provider

from rawsvc._transport import stream_transport
from rawsvc import options as o
from rawsvc.interfaces import IPrinterStatus, IRecoveryAware, ITriggerType
from rawsvc.triggers import pjl
from rawsvc.triggers.base import LISTENER_OPTIONS
from rawsvc.triggers.connection import JobConnection
from rawsvc.triggers.printer_framing import JobInfo, PrinterFramer
from rawsvc.triggers.printer_port import ClosingPort
from rawsvc.triggers.printer_state import PrinterSnapshot, PrinterState

log = Logger(namespace="rawsvc.trigger")

#: Bytes read from a client held in the queue before it is paused: enough to
#: see a client give up (its close), small enough to cost little.
HOLD_BUFFER = 64 << 10

PRINTER_OPTIONS = LISTENER_OPTIONS + o.Schema(
    o.Option("busy", str, "queue", o.one_of("queue", "refuse"),
             doc="while a job is received or processed: hold new clients (`queue`) or refuse them (`refuse`)"),
    o.Option("queue_depth", int, 8, o.non_negative,
             doc="with `queue`: clients held at once; past that the port closes"),
    o.Option("eoj_ctrl_d", bool, True,
             doc="Ctrl-D ends a PostScript job (see above); 0x04 in any other language is always data. "
                 "`false`: Ctrl-D never ends a job"),
    o.Option("eoj_uel", bool, True, doc="the UEL closing a PJL job ends the job"),
    o.Option("after_eoj", str, "next", o.one_of("next", "ignore"),
             doc="bytes after an end of job start the next job (`next`) or are dropped (`ignore`)"),
    o.Option("pjl", bool, True, doc="answer `@PJL INFO STATUS`/`ID` (others: `?`), `@PJL ECHO`, `@PJL INQUIRE`; "
             "`@PJL USTATUS DEVICE=ON`/`JOB=ON` and `USTATUSOFF` switch unsolicited status"),
    o.Option("zpl_host_status", bool, True,
             doc="answer the Zebra `~HS` query (three STX…ETX lines, in one write) between jobs and in ZPL "
                 "text (see above); elsewhere `~HS` is data"),
    o.Option("model", str, "rawsvc virtual printer", doc="what `@PJL INFO ID` answers"),
    o.Option("on_reset", str, "discard", o.one_of("process", "discard"),
             doc="a job cut off by a connection reset: `discard` or `process`"),
    o.Option("idle_timeout", (int, float), 90.0, o.non_negative,
             doc="as for `tcp`, but HP JetDirect's default of 90 s"),
    o.Option("busy_idle_timeout", (int, float), 5.0, o.non_negative,
             doc="while other clients wait, close the client being served once it has sent nothing outside "
                 "a job for this long (s; 0 = only `idle_timeout`)"),
)


class PrinterConnection(JobConnection):
    """One client of the virtual printer."""

    def __init__(self, trigger: "PrinterTrigger") -> None:
        t = trigger
        framer = PrinterFramer(
            self.command,
            ctrl_d=t.opts["eoj_ctrl_d"],
            uel=t.opts["eoj_uel"],
            zpl=t.opts["zpl_host_status"],
            after_eoj=t.opts["after_eoj"],
        )
        super().__init__(trigger, framer)
        self.held = False
        self.released = False
        self.ustatus: dict[str, bool] = {}
        self._info: JobInfo | None = None
        self._infos: dict[Any, JobInfo] = {}
        self._receiving = False
        self._unobserve: Any = None
        self._held_bytes: list[bytes] = []
        self._held_size = 0
        self._held_eof = False

    # Admission --------------------------------------------------------------

    def refuse_when_disk_low(self) -> bool:
        # Below min_free the printer closes its port (the kernel refuses new
        # connects, which CUPS retries); one accepted meanwhile is served.
        return False

    def accepted(self) -> None:
        self.trigger.admit(self)

    def hold(self) -> None:
        """
        Wait in the printer's queue, no idle timer.  Up to L{HOLD_BUFFER}
        bytes are read and kept (then reading pauses), so a client that gives
        up (closes before sending anything) is seen and its place freed.
        """
        self.held = True
        self._disarm_idle()

    def activate(self) -> None:
        """This client now has the printer: what it sent while held is framed first."""
        self.held = False
        self._unobserve = self.trigger.state.observe(self._state_changed)
        self._arm_idle()
        data, self._held_bytes, self._held_size = b"".join(self._held_bytes), [], 0
        if data:
            self.dataReceived(data)
        if self._held_eof:
            self.readConnectionLost()
        self.resume_reading("queued")

    def dataReceived(self, data: bytes) -> None:
        if not self.held:
            super().dataReceived(data)
            return
        self._held_bytes.append(data)
        self._held_size += len(data)
        if self._held_size >= HOLD_BUFFER:
            self.pause_reading("queued")

    def readConnectionLost(self) -> None:
        if not self.held:
            super().readConnectionLost()
            return
        if self._held_size:
            self._held_eof = True  # a whole job sent while waiting: served in turn
            return
        log.info("trigger {trigger}: {peer} gave up while waiting (closed without sending anything)",
                 trigger=self.trigger.name, peer=self.label)
        self.input_done = True
        stream_transport(self).loseConnection()

    def shutdown(self) -> None:
        """
        The service is stopping.  A client still waiting in the queue has
        nothing stored: when it already sent its whole job (and closed its
        side), the job is taken now, as if its turn had come, so it is stored
        before the spool closes (its sender, CUPS for one, may count the
        close as printed); otherwise it is reset, so its sender sees a failure
        and sends the job again.
        """
        if not self.held or self.closed:
            super().shutdown()
            return
        if self in self.trigger.waiting:
            self.trigger.waiting.remove(self)
        self.closing = True
        if self._held_eof:
            log.info("trigger {trigger}: stopping: taking the job {peer} sent while it waited",
                     trigger=self.trigger.name, peer=self.label)
            self.activate()
            return
        log.info("trigger {trigger}: stopping: resetting {peer}, which waited with its job unsent, "
                 "so it sends it again", trigger=self.trigger.name, peer=self.label)
        self.held = False
        self.input_done = True
        stream_transport(self).abortConnection()

    def refuse_unstored(self, reason: str, text_sent: bool = False) -> None:
        """A job that could not be stored: reset, so the sender (CUPS, nc) sees a failure."""
        self.input_done = True
        self.trigger.counted.discard(self)
        if not self.closed:
            log.warn("trigger {trigger}: resetting {peer}: its job was not stored ({reason})",
                     trigger=self.trigger.name, peer=self.label, reason=reason)
            stream_transport(self).abortConnection()

    # Low-resources mode -----------------------------------------------------

    def evictable(self) -> bool:
        return not self.held and super().evictable()

    def holds_partial_job(self) -> bool:
        return self._receiving

    def extra_deadline(self) -> float | None:
        """busy_idle_timeout: clients wait and this one, being served, sends nothing outside a job."""
        t = self.trigger
        limit = t.busy_idle_timeout
        if not limit or t.active is not self or not t.waiting:
            return None
        if self._receiving or self.running or self.ready or self.input_done or self.closed:
            return None
        return self.last_active + limit

    def extra_deadline_reached(self) -> None:
        t = self.trigger
        silent = max(0.0, t.reactor.seconds() - self.last_active)
        self.evict(f"silent for {silent:.1f} s while {len(t.waiting)} client(s) wait "
                   f"(busy_idle_timeout = {t.busy_idle_timeout:g})")

    def refuse_busy(self, reason: str) -> None:
        """Busy: send C{refusal} and close when configured, else reset."""
        self.refuse_at_accept(reason)

    def connectionLost(self, reason: Any = ConnectionDone) -> None:
        was_refused = self.refused
        super().connectionLost(reason)
        if self._unobserve is not None:
            self._unobserve()
            self._unobserve = None
        if not was_refused:
            self._maybe_release()

    def _maybe_release(self) -> None:
        if self.closed and not self.running and not self.ready and not self.released:
            self.released = True
            self._abandoned()
            self.trigger.release(self)

    # Framing ----------------------------------------------------------------

    @property
    def framer_ends_at_close(self) -> bool:
        return True

    def frame_ended(self, info: Any) -> None:
        self._info = info
        try:
            self._end_job()
        finally:
            self._info = None

    def job_ending(self, payload: Any) -> bool:
        info = self._info if self._info is not None else self.framer.current  # a marker's, or end of input
        if not info.content:
            return False  # PJL, UELs, white space only: a status poll, not a job
        self._infos[payload] = info
        return True

    def job_dropped(self) -> None:
        self._abandoned()  # refused (too large) or cut off: never reached a flow

    def _abandoned(self) -> None:
        if self._receiving:
            self._receiving = False
            self.trigger.state.abandon()

    def input_ending(self, clean: bool, how: str) -> None:
        self.framer.current.ended_by = how

    def after_data(self) -> None:
        if self.payload is not None and self.framer.current.content:
            self._start_receiving(self.framer.current)

    def _start_receiving(self, info: JobInfo) -> None:
        if self._receiving:
            return
        self._receiving = True
        self.trigger.state.receive()
        if self.ustatus.get("JOB"):
            self._write(pjl.ustatus_job("START", info.pjl_job_name))

    # Jobs -------------------------------------------------------------------

    def job_submitted(self, job: Any) -> None:
        info = self._infos.pop(job.payload, None) or JobInfo()
        job.variables["pjl_job_name"] = info.pjl_job_name
        job.variables["pjl_language"] = info.pjl_language
        job.variables["eoj"] = info.ended_by or "close"
        job.variables["printer"] = self.trigger.name
        self._start_receiving(info)  # a job that began and ended in one read
        self._receiving = False
        self.trigger.state.submit(job)

    def job_finished(self, job: Any) -> None:
        # Before this client sees its close, so the next one finds the port
        # closed if this job took the disk below min_free.
        self.trigger.disk_check()
        # Silence is counted from the end of the last job (busy_idle_timeout).
        self.last_active = max(self.last_active, self.trigger.reactor.seconds())
        self._schedule_deadline()
        ok = job.state == "done"
        self.trigger.state.finish(job, ok, job.error or "")
        if self.ustatus.get("JOB"):
            name = job.variables.get("pjl_job_name", "")
            self._write(pjl.ustatus_job("END", name, 0, "OK" if ok else "FAILED"))
        self._maybe_release()

    # Status on the back-channel ---------------------------------------------

    def command(self, cmd: pjl.PjlCommand) -> None:
        """A query or PJL command met in the stream."""
        t = self.trigger
        if cmd.command == "~HS":
            self._write(t.host_status())
            return
        if not t.opts["pjl"] or not cmd.is_query:
            return
        if cmd.command in ("USTATUS", "USTATUSOFF"):
            self.ustatus.update(pjl.ustatus_settings(cmd))
            return
        self._write(pjl.answer(cmd, t.state.state, t.state.last_error, t.opts["model"]))

    def _state_changed(self, old: str, new: str) -> None:
        if self.ustatus.get("DEVICE") and not self.closed:
            self._write(pjl.ustatus_device(new, self.trigger.state.last_error))


@provider(ITriggerType)
@implementer(IPrinterStatus, IRecoveryAware)
class PrinterTrigger(ClosingPort):
    """A virtual JetDirect/AppSocket printer."""

    type_name = "printer"
    options = PRINTER_OPTIONS

    def __init__(self, options: dict[str, Any], context: Any) -> None:
        super().__init__(options, context)
        self.busy = options["busy"]
        self.busy_idle_timeout = options["busy_idle_timeout"]
        self.queue_depth = options["queue_depth"] if self.busy == "queue" else 0
        self.state = PrinterState()
        self.active: PrinterConnection | None = None
        self.waiting: collections.deque[PrinterConnection] = collections.deque()

    def build_protocol(self) -> PrinterConnection:
        return PrinterConnection(self)

    # Admission: one client at a time ----------------------------------------

    def admit(self, conn: PrinterConnection) -> None:
        if self.active is None and not self.waiting:
            self.active = conn
            conn.activate()
        elif self.busy == "queue" and len(self.waiting) < self.queue_depth:
            self.waiting.append(conn)
            conn.hold()
            if self.active is not None:
                self.active._schedule_deadline()  # busy_idle_timeout applies from now
            log.info("trigger {trigger}: {peer} waits (queued {n} of {depth})",
                     trigger=self.name, peer=conn.label, n=len(self.waiting), depth=self.queue_depth)
        else:
            why = "printer busy" if self.busy == "refuse" else f"queue full (queue_depth = {self.queue_depth})"
            conn.refuse_busy(why)
        self.update_port()

    def shutdown_order(self) -> list[Any]:
        first = ([self.active] if self.active is not None else []) + list(self.waiting)
        return first + [c for c in self.connections if c not in first]

    def release(self, conn: PrinterConnection) -> None:
        """C{conn} closed and its jobs are done: serve the next client."""
        if conn in self.waiting:
            self.waiting.remove(conn)
        if self.active is conn:
            self.active = None
            while self.waiting and self.active is None:
                nxt = self.waiting.popleft()
                if not nxt.closed:
                    self.active = nxt
                    nxt.activate()
        self.update_port()

    def _busy(self) -> bool:
        if self.active is None:
            return False
        return self.busy == "refuse" or len(self.waiting) >= self.queue_depth

    def startService(self) -> None:
        super().startService()
        self.start_disk_watch()
        log.info("trigger {trigger} (printer) listening on {addr}, busy = {busy}, flow {flow}",
                 trigger=self.name, addr=self.address(), busy=self.busy, flow=self.flow)

    # ITrigger ---------------------------------------------------------------

    @property
    def listening(self) -> bool:
        """Up, and not paused (closed only because busy still counts)."""
        return bool(self.running) and not self.paused and (self.port is not None or self._busy() or self.port_machine.moving())

    def pause(self) -> Deferred:
        """Operator pause: stop accepting, report C{paused}; the job in hand finishes."""
        if not self.paused:
            self.paused = True
            self.state.pause()
            log.info("trigger {trigger} paused", trigger=self.name)
            self.update_port()
        return self.port_settled()

    def resume(self) -> Deferred:
        if self.paused:
            self.paused = False
            self.state.resume()
            log.info("trigger {trigger} resumed", trigger=self.name)
            self.update_port()
        return self.port_settled()

    # Hook for the spool (issue 12) ----------------------------------------------

    def job_recovered(self, job: Any) -> None:
        """A job of this printer, run again by an operator, finished done: a good retry clears the error."""
        if self.state.failed:
            self.state.clear()

    def snapshot(self) -> PrinterSnapshot:
        s = self.state
        job = s.current_job
        return PrinterSnapshot(
            printer=str(self.name),
            state=s.state,
            job_id=job.job_id if job is not None else "",
            job_name=job.variables.get("pjl_job_name", "") if job is not None else "",
            client=self.active.label if self.active is not None else "",
            queued=len(self.waiting),
            jobs_ok=s.jobs_ok,
            jobs_failed=s.jobs_failed,
            last_error=s.last_error,
        )

    def host_status(self) -> bytes:
        s = self.state
        return pjl.host_status(
            paused=s.state == "paused",
            receiving=s.receiving,
            formats=len(s.processing) + len(self.waiting),
        )

    def status(self) -> dict[str, Any]:
        s = super().status()
        s.update(self.state.as_dict())
        s["busy"] = self.busy
        s["accepting"] = self.port is not None
        s["queued"] = len(self.waiting)
        s["client"] = self.active.label if self.active is not None else ""
        return s
