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

from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ConnectionDone
from twisted.logger import Logger
from zope.interface import provider

from rawsvc._transport import stream_transport
from rawsvc import options as o
from rawsvc.interfaces import ITriggerType
from rawsvc.triggers import pjl
from rawsvc.triggers.base import LISTENER_OPTIONS, ListenerTrigger, TriggerFactory, with_backlog
from rawsvc.triggers.connection import JobConnection
from rawsvc.triggers.printer_framing import JobInfo, PrinterFramer
from rawsvc.triggers.printer_state import PrinterState

log = Logger(namespace="rawsvc.trigger")

#: Seconds between attempts to listen again when the port was taken meanwhile.
RELISTEN_DELAY = 1.0

PRINTER_OPTIONS = LISTENER_OPTIONS + o.Schema(
    o.Option("busy", str, "queue", o.one_of("queue", "refuse"),
             doc="while a client is served, hold new clients (queue) or refuse them (refuse)"),
    o.Option("queue_depth", int, 8, o.non_negative,
             doc="busy = queue: clients held at once; past it they are refused"),
    o.Option("eoj_ctrl_d", bool, True, doc="Ctrl-D (0x04) ends a job (PostScript); off for binary data"),
    o.Option("eoj_uel", bool, True, doc="the PJL UEL closing a PJL job ends the job"),
    o.Option("after_eoj", str, "next", o.one_of("next", "ignore"),
             doc="bytes after an end-of-job marker start the next job (next) or are dropped (ignore)"),
    o.Option("pjl", bool, True, doc="answer @PJL INFO/ECHO/USTATUS/INQUIRE queries in the stream"),
    o.Option("zpl_host_status", bool, True,
             doc="answer the Zebra ~HS query; turn off for binary PCL/PostScript, where ~HS may be data"),
    o.Option("model", str, "rawsvc virtual printer", doc="what @PJL INFO ID answers"),
    o.Option("on_reset", str, "discard", o.one_of("process", "discard"),
             doc="a job cut off by a connection reset"),
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

    # Admission --------------------------------------------------------------

    def accepted(self) -> None:
        self.trigger.admit(self)

    def hold(self) -> None:
        """Wait in the printer's queue: read nothing, no idle timer."""
        self.held = True
        self.pause_reading("queued")
        self._disarm_idle()

    def activate(self) -> None:
        """This client now has the printer."""
        self.held = False
        self._unobserve = self.trigger.state.observe(self._state_changed)
        self._arm_idle()
        self.resume_reading("queued")

    def refuse_busy(self, reason: str) -> None:
        """Busy: send C{refusal} and close when configured, else reset."""
        self.trigger.counters.connections_refused += 1
        if self.trigger.refusal is not None:
            self.refuse(reason)
            return
        self.refused = True
        log.warn("trigger {trigger}: refused {peer}: {reason}",
                 trigger=self.trigger.name, peer=self.label, reason=reason)
        stream_transport(self).abortConnection()

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
class PrinterTrigger(ListenerTrigger):
    """A virtual JetDirect/AppSocket printer."""

    type_name = "printer"
    options = PRINTER_OPTIONS

    def __init__(self, options: dict[str, Any], context: Any) -> None:
        super().__init__(options, context)
        self.busy = options["busy"]
        self.queue_depth = options["queue_depth"] if self.busy == "queue" else 0
        self.state = PrinterState()
        self.active: PrinterConnection | None = None
        self.waiting: collections.deque[PrinterConnection] = collections.deque()
        self._endpoint: Any = None
        self._port_op: Deferred | None = None
        self._again = False
        self._retry: Any = None

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
            log.info("trigger {trigger}: {peer} waits (queued {n} of {depth})",
                     trigger=self.name, peer=conn.label, n=len(self.waiting), depth=self.queue_depth)
        else:
            why = "printer busy" if self.busy == "refuse" else f"queue full (queue_depth = {self.queue_depth})"
            conn.refuse_busy(why)
        self.update_port()

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

    # The port: closed while paused or busy ----------------------------------

    def _make_endpoint(self) -> Any:
        if self._endpoint is None:
            self._endpoint = serverFromString(self.reactor, with_backlog(self.listen, self.opts.get("backlog", 1024)))
        return self._endpoint

    def _listen(self) -> Deferred:
        endpoint = self._make_endpoint()
        d = endpoint.listen(TriggerFactory(self))

        def up(port: Any) -> Any:
            self.port = port
            # Listen again on the same port number after closing it, also
            # when the config asked for port 0.
            if getattr(endpoint, "_port", None) == 0:
                endpoint._port = port.getHost().port
            return port

        return d.addCallback(up)

    def startService(self) -> None:
        super().startService()
        log.info("trigger {trigger} (printer) listening on {addr}, busy = {busy}, flow {flow}",
                 trigger=self.name, addr=self.address(), busy=self.busy, flow=self.flow)

    def update_port(self) -> None:
        """Open or close the listening port to match paused/busy."""
        if self._port_op is not None:
            self._again = True
            return
        want = bool(self.running) and not self.paused and not self._busy()
        if want and self.port is None:
            d = self._listen()
        elif not want and self.port is not None:
            port, self.port = self.port, None
            d = port.stopListening()
        else:
            return
        self._port_op = d
        d.addErrback(self._listen_failed)
        d.addBoth(self._port_done)

    def _port_done(self, _: Any) -> None:
        self._port_op = None
        if self._again:
            self._again = False
            self.update_port()

    def _listen_failed(self, failure: Any) -> None:
        log.error("trigger {trigger}: cannot listen again on {listen}: {e}; retrying in {s} s",
                  trigger=self.name, listen=self.listen, e=failure.getErrorMessage(), s=RELISTEN_DELAY)
        if self.running and self._retry is None:
            self._retry = self.reactor.callLater(RELISTEN_DELAY, self._retry_listen)

    def _retry_listen(self) -> None:
        self._retry = None
        self.update_port()

    def stopService(self) -> Deferred:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        d = succeed(None)
        if self._port_op is not None:
            d = self._port_op
        return d.addCallback(lambda _: ListenerTrigger.stopService(self))

    # ITrigger ---------------------------------------------------------------

    @property
    def listening(self) -> bool:
        """Up, and not paused (closed only because busy still counts)."""
        return bool(self.running) and not self.paused and (self.port is not None or self._busy() or self._port_op is not None)

    def pause(self) -> Deferred:
        """Operator pause: stop accepting, report C{paused}; the job in hand finishes."""
        if not self.paused:
            self.paused = True
            self.state.pause()
            log.info("trigger {trigger} paused", trigger=self.name)
            self.update_port()
        return self._port_op or succeed(None)

    def resume(self) -> Deferred:
        if self.paused:
            self.paused = False
            self.state.resume()
            log.info("trigger {trigger} resumed", trigger=self.name)
            self.update_port()
        return self._port_op or succeed(None)

    # Hook for the spool (issue 12) ----------------------------------------------

    def job_recovered(self, job: Any) -> None:
        """A job of this printer, run again by an operator, finished done: a good retry clears the error."""
        if self.state.failed:
            self.state.clear()

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
