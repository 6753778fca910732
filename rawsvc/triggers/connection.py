"""
One client connection of a stream trigger: framing bytes into jobs, handing
them to the job sink, writing replies in job order, and enforcing limits.

Half-close aware: after the client's C{shutdown(SHUT_WR)} the socket stays
writable, the jobs it sent run, their replies are written, and then rawsvc
closes its side at once, so C{nc -N}, C{socat} and CUPS return promptly.
"""

from __future__ import annotations

import collections
import time
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from rawsvc._transport import stream_transport
from rawsvc.job import Job, Payload, PayloadError
from rawsvc.triggers import admission
from rawsvc.triggers.base import peer_of
from rawsvc.triggers.framing import DATA
from rawsvc.triggers.limits import ConnectionLimits
from rawsvc.triggers.replies import ReplyQueue

log = Logger(namespace="rawsvc.trigger")


@implementer(IPushProducer)
class _ReadThrottle:
    """
    Registered as the producer of our own writes: when the client does not
    read its replies and the write buffer fills, stop reading its input.
    """

    def __init__(self, conn: "JobConnection") -> None:
        self.conn = conn

    def pauseProducing(self) -> None:
        self.conn.pause_reading("backpressure")

    def resumeProducing(self) -> None:
        self.conn.resume_reading("backpressure")

    def stopProducing(self) -> None:
        pass


@implementer(IHalfCloseableProtocol)
class JobConnection(ConnectionLimits):
    """
    Frames a connection's bytes into jobs.  Subclasses (the printer) supply
    their framer and may intercept bytes with L{inspect}.
    """

    def __init__(self, trigger: Any, framer: Any) -> None:
        self.trigger = trigger
        self.framer = framer
        self.payload: Payload | None = None
        self.job_refused: str | None = None
        self.ready: collections.deque[tuple[Payload, str]] = collections.deque()
        self.running = 0
        self.input_done = False
        self.closed = False
        self.closing = False
        self.refused = False
        self.refusing = False  # a job was not stored: the refusal is out, the rest is thrown away
        self._paused: set[str] = set()
        # One timer per connection serves idle_timeout and job_timeout: data
        # only moves timestamps, and the timer re-arms itself lazily.
        self._deadline_call: Any = None
        self._idle_armed = False
        self.last_active = 0.0
        self._job_started: float | None = None
        self._frame_call: Any = None
        self.connected_at = time.time()
        self.jobs = 0

    # Connection lifetime ----------------------------------------------------

    def connectionMade(self) -> None:
        t = self.trigger
        self.peer_host, self.peer_port = peer_of(self.transport)
        self.label = f"{self.peer_host}:{self.peer_port}"
        self.replies = ReplyQueue(self._write, self.trigger.reactor)
        self.last_active = t.reactor.seconds()
        low = t.disk_check()
        if low is not None and self.refuse_when_disk_low():
            self.refuse_at_accept(low)
            return
        if not admission.admit(t, self):
            t.counters.connections_refused += 1
            self.refuse(f"too many connections (max_connections = {t.max_connections})")
            return
        t.connections.add(self)
        t.counters.connections_open += 1
        t.counters.connections_total += 1
        stream_transport(self).registerProducer(_ReadThrottle(self), True)
        self._arm_idle()
        self.accepted()

    def accepted(self) -> None:
        """Hook for subclasses: the connection was accepted."""
        if self.trigger.opts.get("execute_on_connect"):
            self.ready.append((Payload(), self.trigger.connect_flow))
            self._dispatch()

    def refuse_when_disk_low(self) -> bool:
        """
        Hook: turn a new client away at the accept while the disk is below
        C{min_free}.  Only where the client can read why (a C{refusal} text):
        a reset at the accept is not a refusal every client notices (CUPS's
        socket backend may still exit 0), so without one the client is served
        and its job is refused only if it really cannot be stored.
        """
        return self.trigger.refusal is not None

    def refuse_at_accept(self, reason: str) -> None:
        """Turn a new client away: the C{refusal} text and a close, else a reset (RST)."""
        self.trigger.counters.connections_refused += 1
        if self.trigger.refusal is not None:
            self.refuse(reason)
            return
        self.refused = True
        log.warn("trigger {trigger}: refused {peer}: {reason}",
                 trigger=self.trigger.name, peer=self.label, reason=reason)
        stream_transport(self).abortConnection()

    def refuse(self, reason: str) -> None:
        """Turn the client away: say why (if configured), log, close."""
        self.refused = True
        log.warn(
            "trigger {trigger}: refused {peer}: {reason}",
            trigger=self.trigger.name,
            peer=self.label,
            reason=reason,
        )
        self._send_refusal(reason)
        stream_transport(self).loseConnection()

    def _send_refusal(self, reason: str) -> None:
        text = self._render_refusal(reason)
        if text is not None:
            self._write(text)

    def _render_refusal(self, reason: str) -> bytes | None:
        template = self.trigger.refusal
        if template is None:
            return None
        try:
            return template.render({"reason": reason, "peer_host": self.peer_host, "trigger": self.trigger.name}, "utf-8")
        except Exception as e:  # a template naming other variables
            log.warn("trigger {trigger}: refusal template failed: {e}", trigger=self.trigger.name, e=e)
            return None

    def _write(self, data: bytes) -> None:
        if self.closed:
            return
        self.trigger.counters.bytes_out += len(data)
        stream_transport(self).write(data)

    def connectionLost(self, reason: Any = ConnectionDone) -> None:
        self.closed = True
        for name in ("_deadline_call", "_frame_call"):
            call = getattr(self, name)
            if call is not None and call.active():
                call.cancel()
            setattr(self, name, None)
        t = self.trigger
        t.counted.discard(self)
        if self in t.connections:  # also a client refused after it was counted (a busy printer)
            t.connections.discard(self)
            t.counters.connections_open -= 1
        if self.refused:
            return
        clean = reason.check(ConnectionDone) is not None
        # First: nothing more can be written, so replies from now on fail.
        self.replies.lost("closed" if clean else reason.getErrorMessage())
        if not self.input_done:
            self.input_done = True
            self._end_of_input(clean, "close" if clean else f"lost ({reason.getErrorMessage()})")

    def readConnectionLost(self) -> None:
        """The client half-closed: finish its jobs, reply, then close."""
        if self.refusing:
            stream_transport(self).loseConnection()
            return
        if self.input_done:
            return
        self.input_done = True
        self.trigger.counted.discard(self)  # all its bytes are in: it no longer keeps a client out
        self._end_of_input(True, "half-close")
        self._maybe_close()

    def writeConnectionLost(self) -> None:
        if self.refusing and not self.closing:
            return  # our half-close after a refusal: read (and drop) until the client closes
        stream_transport(self).loseConnection()

    def shutdown(self) -> None:
        """The service is stopping: close once the running jobs are done."""
        self.closing = True
        self._maybe_close()

    # Reading ----------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.refused or self.input_done:
            return
        self.trigger.counters.bytes_in += len(data)
        data = self.inspect(data)
        for kind, chunk in self.framer.feed(data):
            if self.input_done:  # a job could not be stored: the rest is not read
                return
            if kind == DATA:
                self._append(chunk)
            else:
                self.frame_ended(chunk)
        self.after_data()

    def frame_ended(self, info: Any) -> None:
        """
        Hook: the framer ended a job; C{info} is the second item of its
        C{END} event (C{None} for the built-in framers, a record for the
        printer's).
        """
        self._end_job()

    def inspect(self, data: bytes) -> bytes:
        """Hook for subclasses: see (and may strip) bytes before framing."""
        return data

    def after_data(self) -> None:
        """Hook: idle framing re-arms its timer here."""
        frame_idle = getattr(self.trigger, "idle_time", 0)
        if frame_idle and self.payload is not None:
            if self._frame_call is not None and self._frame_call.active():
                self._frame_call.reset(frame_idle)
            else:
                self._frame_call = self.trigger.reactor.callLater(frame_idle, self._idle_end)

    def _idle_end(self) -> None:
        self._frame_call = None
        self._end_job()

    def _append(self, chunk: bytes) -> None:
        t = self.trigger
        if chunk:
            # Only job bytes are activity: empty messages (keep-alive
            # delimiters) never reach here, so they do not hold a slot.
            self.last_active = t.reactor.seconds()
        if self.payload is None:
            self.payload = Payload(spool_dir=t.temp_dir, threshold=t.spill_threshold, budget=t.spill_budget)
            self.job_refused = None
            if t.job_timeout:
                self._job_started = t.reactor.seconds()
                self._schedule_deadline()
        if self.job_refused:
            return
        if t.max_job_bytes is not None and self.payload.size + len(chunk) > t.max_job_bytes:
            self.job_refused = f"job larger than max_job_bytes = {t.max_job_bytes}"
            self.payload.discard()
            return
        try:
            self.payload.write(chunk)
        except PayloadError as e:  # the payload removed its file
            self._spill_failed(str(e))

    def _spill_failed(self, reason: str) -> None:
        self.payload = None
        self._job_started = None
        self.trigger.counters.jobs_refused += 1
        log.error("trigger {trigger}: refused a job from {peer}: {reason}",
                  trigger=self.trigger.name, peer=self.label, reason=reason)
        self.job_dropped()
        self.refuse_unstored(reason)

    def refuse_unstored(self, reason: str, text_sent: bool = False) -> None:
        """
        A job of this client could not be stored: never let the client take
        a clean close for success.  With a C{refusal} text, say why and
        half-close once the jobs in flight are done, throwing away what the
        client still sends until it closes (a full close over unread bytes
        would reset the connection before the client read the text);
        without one, reset (RST).
        """
        self.input_done = True
        self.refusing = True
        self.trigger.counted.discard(self)
        if self.closed:
            return
        if self.trigger.refusal is None:
            stream_transport(self).abortConnection()
            return
        if not text_sent:
            self._send_refusal(reason)
        self._maybe_close()

    def _end_job(self) -> None:
        payload, self.payload = self.payload, None
        self._job_started = None
        if payload is None:
            if not self.trigger.opts.get("skip_empty", True):
                self.ready.append((Payload(), self.trigger.flow))
                self._dispatch()
            return
        if not self.job_ending(payload):
            payload.discard()
            self.job_refused = None
            self.job_dropped()
            return
        if self.job_refused:
            reason, self.job_refused = self.job_refused, None
            self.trigger.counters.jobs_refused += 1
            log.warn(
                "trigger {trigger}: refused a job from {peer}: {reason}",
                trigger=self.trigger.name,
                peer=self.label,
                reason=reason,
            )
            self._send_refusal(reason)
            self.job_dropped()
            return
        try:
            payload.close()
        except PayloadError as e:
            self._spill_failed(str(e))
            return
        self.ready.append((payload, self.trigger.flow))
        self._dispatch()

    def job_ending(self, payload: Payload) -> bool:
        """
        Hook: a job's bytes are complete.  Return False when they make no
        job (the printer: a status poll of PJL commands only); the payload is
        then discarded and L{job_dropped} called.
        """
        return True

    def job_dropped(self) -> None:
        """Hook: the job being received was discarded, refused or not a job."""

    def input_ending(self, clean: bool, how: str) -> None:
        """Hook: the client sent its last byte (C{how}: half-close, close, lost ...)."""

    def _end_of_input(self, clean: bool, how: str) -> None:
        """The client sent its last byte (half-close, close or reset)."""
        self.input_ending(clean, how)
        tail = self.framer.pending()
        if tail:
            self._append(tail)
        if self._frame_call is not None and self._frame_call.active():
            self._frame_call.cancel()
        self._frame_call = None
        if self.payload is None:
            return
        size = self.payload.size
        if not clean and self.trigger.opts.get("on_reset", "discard") == "discard":
            log.warn(
                "trigger {trigger}: {peer} vanished mid-job ({how}); {size} bytes discarded",
                trigger=self.trigger.name, peer=self.label, how=how, size=size,
            )
            self._drop_partial()
            return
        if self.framer_ends_at_close:
            self._end_job()
            return
        partial = self.trigger.opts.get("partial", "process")
        log.info(
            "trigger {trigger}: {peer}: {size} bytes without an end at {how}: {action}",
            trigger=self.trigger.name, peer=self.label, size=size, how=how,
            action="processed" if partial == "process" else "discarded",
        )
        if partial == "process":
            self._end_job()
        else:
            self._drop_partial()

    @property
    def framer_ends_at_close(self) -> bool:
        return self.trigger.opts.get("execute_on", "disconnect") in ("disconnect", "idle")

    def _drop_partial(self) -> None:
        payload, self.payload = self.payload, None
        if payload is not None:
            payload.discard()
        self._job_started = None
        self.job_dropped()

    # Running jobs -----------------------------------------------------------

    def _dispatch(self) -> None:
        wait = self.trigger.opts.get("wait_for_flow", False)
        while self.ready and not (wait and self.running):
            payload, flow = self.ready.popleft()
            self._submit(payload, flow)
        if wait:
            if self.ready or self.running:
                self.pause_reading("flow")
            else:
                self.resume_reading("flow")

    def _submit(self, payload: Payload, flow: str) -> None:
        t = self.trigger
        job = Job(
            trigger=t.name,
            payload=payload,
            peer_host=self.peer_host,
            peer_port=self.peer_port,
            encoding=t.encoding if t.encoding != "auto" else "utf-8",
        )
        self.jobs += 1
        slot = self.replies.new_slot(self.label)
        job.reply_channel = slot
        self.running += 1
        try:
            self.job_submitted(job)
        except Exception:  # a hook's bug must never keep a received job from the sink
            log.failure("trigger {trigger}: job_submitted hook failed for job {job_id}",
                        trigger=t.name, job_id=job.job_id)
        d = t.sink.submit(job, flow, t.counters)
        d.addBoth(self._job_done, slot, job)

    def job_submitted(self, job: Job) -> None:
        """Hook for subclasses (the printer's state machine)."""

    def job_finished(self, job: Job) -> None:
        """Hook for subclasses."""

    def _job_done(self, result: Any, slot: Any, job: Job) -> None:
        self.running -= 1
        refused = job.state == "refused"
        if refused:
            # The sink could not take the job (the spool is unavailable): the
            # refusal text goes out in this job's place in the reply order.
            text = self._render_refusal(job.error or "refused")
            if text is not None:
                slot.reply(text).addErrback(lambda f: None)
        self.replies.finish(slot)
        if refused:
            self.refuse_unstored(job.error or "refused", text_sent=True)
        try:
            self.job_finished(job)
        finally:
            if self.trigger.opts.get("close_after_reply") and not self.closed:
                self.input_done = True
                stream_transport(self).loseConnection()
            self._dispatch()
            self._maybe_close()

    def _maybe_close(self) -> None:
        if self.closed or self.running or self.ready:
            return
        if self.refusing and not self.closing:
            stream_transport(self).loseWriteConnection()  # the client reads the refusal, then closes
            return
        if self.input_done or (self.closing and self.payload is None):
            stream_transport(self).loseConnection()

    def describe(self) -> dict[str, Any]:
        return {
            "trigger": self.trigger.name,
            "peer": self.label,
            "connected_at": self.connected_at,
            "jobs": self.jobs,
            "running": self.running,
            "receiving": self.payload.size if self.payload is not None else None,
            "half_closed": self.input_done,
        }
