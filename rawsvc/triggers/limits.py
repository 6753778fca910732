"""
The limits on one connection of a stream trigger, mixed into
L{rawsvc.triggers.connection.FramedConnection}: pausing and resuming its
reads, holding a client in a queue, C{idle_timeout} and C{job_timeout}
(one timer serves both), eviction in low-resources mode (see
L{rawsvc.triggers.admission}) and refusals (the C{refusal} text, a close
or a reset).  The values come from the trigger's
L{rawsvc.triggers.settings.ConnectionSettings}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from rawsvc.compat import stream_transport
from rawsvc.triggers.deadlines import Deadlines, deadlines_of
from rawsvc.triggers.settings import ConnectionSettings

if TYPE_CHECKING:
    from rawsvc.triggers.base import ListenerTrigger

log = Logger(namespace="rawsvc.trigger")

#: Bytes read from a held client before it is paused: enough to see a
#: client give up (its close), small enough to cost little.
HOLD_BUFFER = 64 << 10


class ConnectionLimits(Protocol):
    """Timeouts, read pausing and eviction; the connection supplies the state below."""

    trigger: ListenerTrigger
    settings: ConnectionSettings
    deadline_at: float | None
    _deadlines: Deadlines | None
    peer_host: str
    reactor: Any
    label: str
    closed: bool
    refused: bool
    refusing: bool
    input_done: bool
    held: bool
    began: bool
    running: int
    ready: Any
    payload: Any
    last_active: float
    _paused: set[str]
    _idle_armed: bool
    _job_started: float | None

    _held_bytes: list[bytes]
    _held_size: int
    _held_eof: bool
    closing: bool

    def _drop_partial(self) -> None:
        raise NotImplementedError

    def _maybe_close(self) -> None:
        raise NotImplementedError

    def readConnectionLost(self) -> None:
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    # IPushProducer: the connection is registered as the producer of its own
    # writes, so when the client does not read its replies and the write
    # buffer fills, reading its input stops.

    def pauseProducing(self) -> None:
        self.pause_reading("backpressure")

    def resumeProducing(self) -> None:
        self.resume_reading("backpressure")

    def stopProducing(self) -> None:
        pass

    # Flow control and timeouts ---------------------------------------------

    def pause_reading(self, reason: str) -> None:
        """Stop reading the client for C{reason} (reads resume once every reason is gone)."""
        if not self._paused and not self.closed:
            stream_transport(self).pauseProducing()
        self._paused.add(reason)

    def resume_reading(self, reason: str) -> None:
        if reason in self._paused:
            self._paused.discard(reason)
            if not self._paused and not self.closed:
                stream_transport(self).resumeProducing()

    @property
    def reading_paused(self) -> frozenset[str]:
        """Why reading is paused now (C{backpressure}, C{flow}, C{queued}, C{timeout}); empty: reading."""
        return frozenset(self._paused)

    def hold(self) -> None:
        """
        Keep the client waiting (a printer's queue), with no idle timer.
        Up to L{HOLD_BUFFER} bytes are read and kept (then reading pauses),
        so a client that gives up (closes before sending anything) is seen
        and its place freed.  L{serve} ends the wait.
        """
        self.held = True
        self._disarm_idle()

    def serve(self) -> None:
        """Serve a held client now: what it sent while held is framed first."""
        if not self.held:
            return
        self.held = False
        self._arm_idle()
        data, self._held_bytes, self._held_size = b"".join(self._held_bytes), [], 0
        if data:
            self.dataReceived(data)
        if self._held_eof:
            self.readConnectionLost()
        self.resume_reading("queued")

    def shutdown(self) -> None:
        """
        The service is stopping: close once the running jobs are done.  A
        held client has nothing stored: when it already sent its whole job
        (and closed its side), the job is taken now, as if its turn had come,
        so it is stored before the spool closes (its sender, CUPS for one,
        may count the close as printed); otherwise it is reset, so its
        sender sees a failure and sends the job again.
        """
        self.closing = True
        if self.held and not self.closed:
            if self._held_eof:
                log.info("trigger {trigger}: stopping: taking the job {peer} sent while it waited",
                         trigger=self.settings.trigger, peer=self.label)
                self.serve()
                return
            log.info("trigger {trigger}: stopping: resetting {peer}, which waited with its job unsent, "
                     "so it sends it again", trigger=self.settings.trigger, peer=self.label)
            self.held = False
            self.input_done = True
            stream_transport(self).abortConnection()
            return
        self._maybe_close()

    def count_silence_from_now(self) -> None:
        """
        For a policy: count this connection's silence (idle_timeout,
        eviction) from now, as if it had just sent job bytes (a printer
        counts it from the end of its last job).
        """
        self.last_active = max(self.last_active, self.reactor.seconds())

    def _arm_idle(self, now: float | None = None) -> None:
        """(Re)start counting idle time from now (C{now}: the reactor's time, when the caller has it)."""
        if not self.settings.idle_timeout or self.closed:
            return
        self._idle_armed = True
        self.last_active = self.reactor.seconds() if now is None else now
        self._schedule_deadline()

    def _disarm_idle(self) -> None:
        """Stop counting idle time (a client held in a queue)."""
        self._idle_armed = False

    def _next_deadline(self) -> float | None:
        s = self.settings
        idle = self.last_active + s.idle_timeout if self._idle_armed and s.idle_timeout else None
        if self._job_started is None or not s.job_timeout:
            return idle
        job = self._job_started + s.job_timeout
        return job if idle is None or job < idle else idle

    def _schedule_deadline(self) -> None:
        if self.closed:
            return
        deadline = self._next_deadline()
        if deadline is None:
            return
        # One timer for every connection on the reactor: a later deadline
        # (activity) waits for the pending entry, which re-checks and
        # re-arms; an earlier one (a job_timeout shorter than idle_timeout)
        # gets an entry of its own.
        deadlines = self._deadlines
        if deadlines is None:
            deadlines = self._deadlines = deadlines_of(self.reactor)
        deadlines.schedule(self, deadline)

    def deadline_reached(self) -> None:
        """(The reactor's L{Deadlines}) this connection's entry came up: check its timeouts, schedule the next."""
        if self.closed:
            return
        s = self.settings
        now = self.reactor.seconds()
        if self._job_started is not None and s.job_timeout and now >= self._job_started + s.job_timeout:
            self._job_started = None
            self._job_too_slow()
        elif self._idle_armed and s.idle_timeout and now >= self.last_active + s.idle_timeout:
            self._idle_fired()
        self._schedule_deadline()

    def _idle_fired(self) -> None:
        if self.running or self.ready:
            self._arm_idle()  # a flow is still working for this client
            return
        self._idle_armed = False  # closing: never count idle time again
        reason = f"idle for {self.settings.idle_timeout:g} s (idle_timeout)"
        log.info("trigger {trigger}: closing {peer}: {reason}", trigger=self.settings.trigger, peer=self.label, reason=reason)
        self._drop_partial()
        if not self.refusing:  # else the refusal is out and our side is half-closed
            self._send_refusal(reason)
        self.input_done = True
        stream_transport(self).loseConnection()

    def _job_too_slow(self) -> None:
        reason = f"job not complete after {self.settings.job_timeout:g} s (job_timeout)"
        self.trigger.counters.jobs_refused += 1
        log.warn("trigger {trigger}: {peer}: {reason}", trigger=self.settings.trigger, peer=self.label, reason=reason)
        self._drop_partial()
        self._send_refusal(reason)
        self.input_done = True
        if self.running or self.ready:
            self.pause_reading("timeout")
        else:
            stream_transport(self).loseConnection()

    # Low-resources mode (see rawsvc.triggers.admission) -----------------------

    def evictable(self) -> bool:
        """May be closed to make room: counted, served, and no job of it in flight."""
        return not (self.held or self.closed or self.refused or self.input_done or self.running or self.ready)

    def holds_partial_job(self) -> bool:
        """A job has begun to arrive (an eviction then resets, so it is not taken as sent)."""
        return self.began

    def evict(self, reason: str) -> None:
        """Close this silent connection to make room; counted in C{evicted}."""
        t = self.trigger
        t.counters.evicted += 1
        t.counted.discard(self)
        partial = self.holds_partial_job()
        log.info("trigger {trigger}: evicted {peer}: {reason}", trigger=self.settings.trigger, peer=self.label, reason=reason)
        self._idle_armed = False
        self._drop_partial()
        self.input_done = True
        if partial and self.settings.refusal is None:
            stream_transport(self).abortConnection()
            return
        self._send_refusal(reason)
        stream_transport(self).loseConnection()

    # Refusals ---------------------------------------------------------------

    def refuse_at_accept(self, reason: str) -> None:
        """Turn a new client away: the C{refusal} text and a close, else a reset (RST)."""
        self.trigger.counters.connections_refused += 1
        if self.settings.refusal is not None:
            self.refuse(reason)
            return
        self.refused = True
        log.warn("trigger {trigger}: refused {peer}: {reason}",
                 trigger=self.settings.trigger, peer=self.label, reason=reason)
        stream_transport(self).abortConnection()

    def refuse(self, reason: str) -> None:
        """Turn the client away: say why (if configured), log, close."""
        self.refused = True
        log.warn("trigger {trigger}: refused {peer}: {reason}",
                 trigger=self.settings.trigger, peer=self.label, reason=reason)
        self._send_refusal(reason)
        stream_transport(self).loseConnection()
    def refuse_unstored(self, reason: str, text_sent: bool = False) -> None:
        """
        A job of this client could not be stored: never let the client take
        a clean close for success.  With a C{refusal} text (and no
        C{reset_unstored}), say why and half-close once the jobs in flight
        are done, throwing away what the client still sends until it closes
        (a full close over unread bytes would reset the connection before
        the client read the text); otherwise reset (RST).
        """
        s = self.settings
        self.input_done = True
        self.refusing = True
        self.trigger.counted.discard(self)
        if self.closed:
            return
        if s.refusal is None or s.reset_unstored:
            if s.reset_unstored:
                log.warn("trigger {trigger}: resetting {peer}: its job was not stored ({reason})",
                         trigger=s.trigger, peer=self.label, reason=reason)
            stream_transport(self).abortConnection()
            return
        if not text_sent:
            self._send_refusal(reason)
        self._maybe_close()
    def _send_refusal(self, reason: str) -> None:
        text = self._render_refusal(reason)
        if text is not None:
            self.write(text)

    def _render_refusal(self, reason: str) -> bytes | None:
        s = self.settings
        if s.refusal is None:
            return None
        try:
            return s.refusal.render({"reason": reason, "peer_host": self.peer_host, "trigger": s.trigger}, "utf-8")
        except Exception as e:  # a template naming other variables
            log.warn("trigger {trigger}: refusal template failed: {e}", trigger=s.trigger, e=e)
            return None
