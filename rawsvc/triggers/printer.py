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
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer, provider

from rawsvc import options as o
from rawsvc.interfaces import IPrinterStatus, IRecoveryAware, ISimulatedPrinter, ITriggerType
from rawsvc.job import Job
from rawsvc.triggers import pjl
from rawsvc.triggers.api import FramedTrigger
from rawsvc.triggers.base import LISTENER_OPTIONS, ListenerTrigger
from rawsvc.triggers.connection import FramedConnection
from rawsvc.triggers.policy import ConnectionPolicy
from rawsvc.triggers.printer_answers import PrinterAnswers
from rawsvc.triggers.printer_conditions import Conditions
from rawsvc.triggers.printer_framing import PrinterFramer
from rawsvc.triggers.printer_port import ClosingPort
from rawsvc.triggers.printer_state import PrinterSnapshot, PrinterState
from rawsvc.triggers.zpl_status import ZebraIdentity

if TYPE_CHECKING:
    from rawsvc.context import BuildContext

log = Logger(namespace="rawsvc.trigger")

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
    o.Option("model", str, "rawsvc virtual printer",
             doc="what `@PJL INFO ID`, `~HI` and SGD `device.product_name` answer"),
    o.Option("firmware", str, "V1.0.0-rawsvc", doc="what `~HI` and SGD `appl.name` answer"),
    o.Option("on_reset", str, "discard", o.one_of("process", "discard"),
             doc="a job cut off by a connection reset: `discard` or `process`"),
    o.Option("idle_timeout", (int, float), 90.0, o.non_negative,
             doc="as for `tcp`, but HP JetDirect's default of 90 s"),
    o.Option("busy_idle_timeout", (int, float), 5.0, o.non_negative,
             doc="while other clients wait, close the client being served once it has sent nothing outside "
                 "a job for this long (s; 0 = only `idle_timeout`)"),
)


class PrinterPolicy(ConnectionPolicy):
    """
    One client of the virtual printer: its turn (the trigger's queue), the
    answers to its status queries, its unsolicited status (C{@PJL
    USTATUS}), and the printer's state as its job arrives and runs.
    """

    def __init__(self, conn: FramedConnection, trigger: "PrinterTrigger") -> None:
        super().__init__(conn)
        self.trigger = trigger
        self.ustatus: dict[str, bool] = {}
        self.receiving = False
        self._unobserve: Any = None
        self._busy_call: Any = None

    # Its turn ---------------------------------------------------------------

    def accepted(self) -> None:
        self.trigger.admit(self.conn)

    def activate(self) -> None:
        """This client now has the printer: what it sent while held is framed first."""
        self._unobserve = self.trigger.state.observe(self._state_changed)
        self.conn.serve()

    def done(self) -> None:
        if self._busy_call is not None and self._busy_call.active():
            self._busy_call.cancel()
        self._busy_call = None
        if self._unobserve is not None:
            self._unobserve()
            self._unobserve = None
        self.trigger.release(self.conn)

    # busy_idle_timeout: yield to waiting clients ------------------------------

    def _busy_deadline(self) -> float | None:
        """Clients wait and this one, being served, sends nothing outside a job: when it must yield."""
        t = self.trigger
        limit = t.busy_idle_timeout
        if not limit or t.stopping or t.active is not self.conn or not t.waiting:
            return None
        if self.receiving or not self.conn.between_jobs:
            return None
        return self.conn.last_active + limit

    def arm_busy_idle(self) -> None:
        """(Re)consider the C{busy_idle_timeout} deadline (a client started waiting, a job ended)."""
        deadline = self._busy_deadline()
        if deadline is None:
            return
        reactor = self.trigger.reactor
        delay = max(0.0, deadline - reactor.seconds())
        if self._busy_call is not None and self._busy_call.active():
            if deadline < self._busy_call.getTime():
                self._busy_call.reset(delay)
            return  # a later deadline (activity): the pending call re-checks
        self._busy_call = reactor.callLater(delay, self._busy_fired)

    def _busy_fired(self) -> None:
        self._busy_call = None
        deadline = self._busy_deadline()
        if deadline is None:
            return
        t = self.trigger
        now = t.reactor.seconds()
        if now < deadline:
            self.arm_busy_idle()
            return
        silent = max(0.0, now - self.conn.last_active)
        self.conn.evict(f"silent for {silent:.1f} s while {len(t.waiting)} client(s) wait "
                        f"(busy_idle_timeout = {t.busy_idle_timeout:g})")

    # Its job ----------------------------------------------------------------

    def job_began(self, meta: Mapping[str, str]) -> None:
        if self.receiving:
            return
        self.receiving = True
        self.trigger.state.receive()
        if self.ustatus.get("JOB"):
            self.conn.write(pjl.ustatus_job("START", meta.get("pjl_job_name", "")))

    def job_abandoned(self) -> None:
        """Refused (too large), cut off, timed out: it never reached a flow."""
        if self.receiving:
            self.receiving = False
            self.trigger.state.abandon()
        self.arm_busy_idle()

    def job_submitted(self, job: Job) -> None:
        job.variables["printer"] = self.trigger.name
        if not self.receiving:
            self.job_began(job.meta)
        self.receiving = False
        self.trigger.state.submit(job)

    def job_finished(self, job: Job) -> None:
        t = self.trigger
        # Before this client sees its close, so the next one finds the port
        # closed if this job took the disk below min_free.
        t.disk_check()
        ok = job.state == "done"
        t.state.finish(job, ok, job.error or "")
        if self.ustatus.get("JOB"):
            name = job.variables.get("pjl_job_name", "")
            self.conn.write(pjl.ustatus_job("END", name, 0, "OK" if ok else "FAILED"))
        self.conn.count_silence_from_now()  # a printer counts silence from the end of the last job
        self.arm_busy_idle()

    # Status on the back-channel ---------------------------------------------

    def query(self, value: Any) -> bytes | None:
        """A status query met in the stream: a Zebra one (C{~HS}, C{~HQES}, C{~HI}, SGD), or a C{@PJL} one."""
        t = self.trigger
        if isinstance(value, pjl.PjlCommand) and value.command in ("USTATUS", "USTATUSOFF"):
            if t.answer_pjl:
                self.ustatus.update(pjl.ustatus_settings(value))
            return None
        return t.answer_query(value)

    def _state_changed(self, old: str, new: str) -> None:
        if self.ustatus.get("DEVICE") and not self.conn.closed:
            t = self.trigger
            self.conn.write(pjl.ustatus_device(new, t.state.last_error, t.pjl_condition()))


def _policy(conn: FramedConnection) -> PrinterPolicy:
    return cast(PrinterPolicy, conn.policy)


@provider(ITriggerType)
@implementer(IPrinterStatus, IRecoveryAware, ISimulatedPrinter)
class PrinterTrigger(PrinterAnswers, ClosingPort, FramedTrigger):
    """A virtual JetDirect/AppSocket printer."""

    type_name = "printer"
    options = PRINTER_OPTIONS

    def __init__(self, options: dict[str, Any], context: BuildContext) -> None:
        self.conditions = Conditions()  # before the base sets the sink (a HoldingSink over it)
        super().__init__(options, context)
        self.conditions.observe(self._conditions_changed)
        self.identity = ZebraIdentity(model=options["model"], friendly_name=str(options["name"]),
                                      firmware=options["firmware"])
        self.busy = options["busy"]
        self.busy_idle_timeout = options["busy_idle_timeout"]
        self.queue_depth = options["queue_depth"] if self.busy == "queue" else 0
        self.answer_pjl = options["pjl"]
        self.model = options["model"]
        # Below min_free the printer closes its port (the kernel refuses new
        # connects, which CUPS retries); one accepted meanwhile is served.  A
        # job that cannot be stored resets: CUPS reads no refusal text.
        self.settings = attrs.evolve(self.settings, turn_away_when_disk_low=False, reset_unstored=True)
        self.state = PrinterState()
        self.active: FramedConnection | None = None
        self.waiting: collections.deque[FramedConnection] = collections.deque()
        #: The service is stopping: no next client is served.
        self.stopping = False

    def make_framer(self) -> PrinterFramer:
        opts = self.opts
        return PrinterFramer(ctrl_d=opts["eoj_ctrl_d"], uel=opts["eoj_uel"], zpl=opts["zpl_host_status"],
                             after_eoj=opts["after_eoj"])

    def make_policy(self, conn: FramedConnection) -> PrinterPolicy:
        return PrinterPolicy(conn, self)

    # Admission: one client at a time ----------------------------------------

    def admit(self, conn: FramedConnection) -> None:
        """A new client: served if the printer is free, else held in the queue, else turned away."""
        if self.active is None and not self.waiting:
            self.active = conn
            _policy(conn).activate()
        elif self.busy == "queue" and len(self.waiting) < self.queue_depth:
            self.waiting.append(conn)
            conn.hold()
            if self.active is not None:
                _policy(self.active).arm_busy_idle()  # busy_idle_timeout applies from now
            log.info("trigger {trigger}: {peer} waits (queued {n} of {depth})",
                     trigger=self.name, peer=conn.label, n=len(self.waiting), depth=self.queue_depth)
        else:
            why = "printer busy" if self.busy == "refuse" else f"queue full (queue_depth = {self.queue_depth})"
            conn.refuse_at_accept(why)  # the refusal text and a close, else a reset
        self.update_port()

    def shutdown_order(self) -> list[Any]:
        first = ([self.active] if self.active is not None else []) + list(self.waiting)
        return first + [c for c in self.connections if c not in first]

    def release(self, conn: FramedConnection) -> None:
        """C{conn} closed and its jobs are done: serve the next client (unless stopping)."""
        if conn in self.waiting:
            self.waiting.remove(conn)
        if self.active is conn:
            self.active = None
            while self.waiting and self.active is None and not self.stopping:
                nxt = self.waiting.popleft()
                if not nxt.closed:
                    self.active = nxt
                    _policy(nxt).activate()
        self.update_port()

    def _busy(self) -> bool:
        if self.active is None:
            return False
        return self.busy == "refuse" or len(self.waiting) >= self.queue_depth

    def startService(self) -> None:
        self.stopping = False
        super().startService()
        self.start_disk_watch()
        log.info("trigger {trigger} (printer) listening on {addr}, busy = {busy}, flow {flow}",
                 trigger=self.name, addr=self.address(), busy=self.busy, flow=self.flow)

    def stopService(self) -> Deferred:
        # Each held client is told to shut down (its whole job taken, or a
        # reset): none is served in turn from now on.  Held jobs go to the
        # sink now (stored, with the spool), so the stop does not wait on them.
        self.stopping = True
        if self._holding_sink is not None:
            self._holding_sink.release(force=True)
        return super().stopService()

    # ITrigger ---------------------------------------------------------------

    @property
    def listening(self) -> bool:
        """Up, and not paused (closed only because busy still counts)."""
        return bool(self.running) and not self.paused and not self.conditions.offline and (
            self.port is not None or self._busy() or self.port_machine.moving())

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

    # IPrinterStatus -----------------------------------------------------------

    def snapshot(self) -> PrinterSnapshot:
        """The printer's state now, as one frozen record."""
        s = self.state
        job = s.current_job
        return PrinterSnapshot(
            state=s.state,
            printer=str(self.name),
            job_id=job.job_id if job is not None else "",
            job_name=job.meta.get("pjl_job_name", "") if job is not None else "",
            client=self.active.label if self.active is not None else "",
            queued=len(self.waiting),
            receiving=s.receiving,
            processing=len(s.processing),
            jobs_ok=s.jobs_ok,
            jobs_failed=s.jobs_failed,
            last_error=s.last_error,
            last_error_at=s.last_error_at,
            paused=self.paused,
            since=s.since,
            conditions=self.conditions.ordered(),
            held=self.held_jobs,
        )

    def status(self) -> dict[str, Any]:
        s = super().status()
        s.update(self.state.as_dict())
        s["busy"] = self.busy
        s["accepting"] = self.port is not None
        s["queued"] = len(self.waiting)
        s["client"] = self.active.label if self.active is not None else ""
        s["conditions"] = list(self.conditions.ordered())
        s["held"] = self.held_jobs
        return s
