"""
One client connection of a stream trigger: runs the trigger's framer
(L{rawsvc.interfaces.IFramer}) over the client's bytes, hands each job to
the job sink, writes replies in job order, and enforces the limits of the
trigger's L{rawsvc.triggers.settings.ConnectionSettings}.  What a trigger
adds (a printer's queue and status answers) comes through its policy
(L{rawsvc.interfaces.IConnectionPolicy}), which acts through the public
methods below; nothing here is meant to be subclassed.

Half-close aware: after the client's C{shutdown(SHUT_WR)} the socket stays
writable, the jobs it sent run, their replies are written, and then rawsvc
closes its side at once, so C{nc -N}, C{socat} and CUPS return promptly.

The trigger (C{trigger}) gives the connection: C{settings}, C{reactor},
C{counters}, C{connections} and C{counted} (sets), C{spill_budget}, C{sink}
(an L{rawsvc.interfaces.IJobSink}), C{max_connections} and
C{disk_check()} and C{disk_check_at_accept} (whether a new connection
calls it); L{rawsvc.triggers.base.ListenerTrigger} has them all.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import connectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from rawsvc.compat import stream_transport
from rawsvc.interfaces import IAnnouncingFramer, IConnectionPolicy, IFramer
from rawsvc.job import Payload, PayloadError
from rawsvc.triggers import admission
from rawsvc.triggers.base import peer_of
from rawsvc.triggers.framing import HALF_CLOSE, Data, Drop, End, Event, Query, Reply, Start
from rawsvc.triggers.limits import HOLD_BUFFER
from rawsvc.triggers.policy import ConnectionPolicy

#: The policy of a connection whose trigger adds nothing (shared: it reads no connection).
PLAIN_POLICY = ConnectionPolicy(cast(Any, None))
from rawsvc.triggers.replies import ReplyQueue
from rawsvc.triggers.submit import JobSubmission

if TYPE_CHECKING:
    from rawsvc.triggers.base import ListenerTrigger

log = Logger(namespace="rawsvc.trigger")


@implementer(IHalfCloseableProtocol, IPushProducer)
class FramedConnection(JobSubmission):
    """
    Frames a connection's bytes into jobs with C{framer}; C{make_policy}
    (called with the connection) builds its L{IConnectionPolicy}, by
    default one that adds nothing.
    """

    # What every connection starts with, as class attributes: a connection
    # sets only what differs (a job's path builds as little as it can).
    peer_host, peer_port, label = "", 0, ""
    payload: Payload | None = None  # the job being received
    began = False  # it has begun (Start, or its first byte)
    job_refused: str | None = None
    running = 0
    input_done = False
    closed = False
    closing = False
    refused = False
    refusing = False  # a job was not stored: the refusal is out, the rest is thrown away
    held = False
    _held_size = 0
    _held_eof = False
    _told_done = False
    # One timer per connection serves idle_timeout and job_timeout: data
    # only moves timestamps, and the timer re-arms itself lazily.
    #: The time of this connection's entry in the reactor's deadline heap (L{rawsvc.triggers.deadlines}).
    deadline_at: float | None = None
    _deadlines: Any = None
    _idle_armed = False
    last_active = 0.0
    _job_started: float | None = None
    _frame_call: Any = None
    jobs = 0

    def __init__(
        self,
        trigger: ListenerTrigger,
        framer: IFramer,
        make_policy: Callable[["FramedConnection"], IConnectionPolicy] | None = None,
    ) -> None:
        self.trigger = trigger
        self.settings = trigger.settings
        self.reactor = trigger.reactor
        self.framer = framer
        self._announces = IAnnouncingFramer.providedBy(framer)
        if make_policy is None:
            # The plain policy reads nothing of its connection: one serves all.
            self.policy: IConnectionPolicy = PLAIN_POLICY
            self._plain_policy = True
        else:
            self.policy = make_policy(self)
            self._plain_policy = type(self.policy) is ConnectionPolicy
        self.ready: collections.deque[tuple[Payload, str, End | None]] = collections.deque()
        self._held_bytes: list[bytes] = []
        self._paused: set[str] = set()
        self.connected_at = time.time()

    # Public: what a policy may read and do ------------------------------------

    @property
    def between_jobs(self) -> bool:
        """Served and open, its input not ended, no job arriving, waiting or running."""
        return not (self.began or self.running or self.ready or self.input_done or self.closed or self.held)

    def write(self, data: bytes) -> None:
        """Write C{data} to the client now, outside the reply order (status answers)."""
        if self.closed:
            return
        self.trigger.counters.bytes_out += len(data)
        stream_transport(self).write(data)

    _write = write

    # Connection lifetime ----------------------------------------------------

    def connectionMade(self) -> None:
        t, s = self.trigger, self.settings
        self.peer_host, self.peer_port = peer_of(self.transport)
        self.label = f"{self.peer_host}:{self.peer_port}"
        self.replies = ReplyQueue(self._write, self.reactor)
        now = self.last_active = self.reactor.seconds()
        low = t.disk_check() if t.disk_check_at_accept else None
        if low is not None and s.turn_away_when_disk_low:
            # Only where the client can read why (a refusal text): a reset at
            # the accept is not a refusal every client notices (CUPS's socket
            # backend may still exit 0), so without one the client is served
            # and its job is refused only if it really cannot be stored.
            self.refuse_at_accept(low)
            return
        if not admission.admit(t, self):
            t.counters.connections_refused += 1
            self.refuse(f"too many connections (max_connections = {s.max_connections})")
            return
        t.connections.add(self)
        t.counters.connections_open += 1
        t.counters.connections_total += 1
        stream_transport(self).registerProducer(self, True)  # its own push producer (limits.py)
        self._arm_idle(now)
        if not self._plain_policy:
            self._tell("accepted", self.policy.accepted)
        if s.connect_flow is not None and not (self.refused or self.held):
            self.ready.append((Payload(), s.connect_flow, None))
            self._dispatch()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        if self.deadline_at is not None:
            self._deadlines.cancel(self)
        call = self._frame_call
        if call is not None:
            self._frame_call = None
            if call.active():
                call.cancel()
        t = self.trigger
        t.counted.discard(self)
        if self in t.connections:  # also a client refused after it was counted (a busy printer)
            t.connections.discard(self)
            t.counters.connections_open -= 1
        if self.refused:
            return
        clean = isinstance(reason.value, ConnectionDone)  # Failure.check walks the class names
        # First: nothing more can be written, so replies from now on fail.
        self.replies.lost("closed" if clean else reason.getErrorMessage())
        if not self.input_done:
            self.input_done = True
            self._end_of_input(clean, "close" if clean else f"lost ({reason.getErrorMessage()})")
        self._maybe_done()

    def readConnectionLost(self) -> None:
        """The client half-closed: finish its jobs, reply, then close."""
        if self.held:
            if self._held_size:
                self._held_eof = True  # a whole job sent while waiting: served in turn
                return
            log.info("trigger {trigger}: {peer} gave up while waiting (closed without sending anything)",
                     trigger=self.settings.trigger, peer=self.label)
            self.input_done = True
            stream_transport(self).loseConnection()
            return
        if self.refusing:
            stream_transport(self).loseConnection()
            return
        if self.input_done:
            return
        self.input_done = True
        self.trigger.counted.discard(self)  # all its bytes are in: it no longer keeps a client out
        self._end_of_input(True, HALF_CLOSE)
        self._maybe_close()

    def writeConnectionLost(self) -> None:
        if self.refusing and not self.closing:
            return  # our half-close after a refusal: read (and drop) until the client closes
        stream_transport(self).loseConnection()

    # Reading ----------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.held:
            self._held_bytes.append(data)
            self._held_size += len(data)
            if self._held_size >= HOLD_BUFFER:
                self.pause_reading("queued")
            return
        if self.refused or self.input_done:
            return
        self.trigger.counters.bytes_in += len(data)
        try:
            events = self.framer.feed(data)
        except Exception:
            self._framer_failed()
            return
        self._handle(events)
        frame_idle = self.settings.frame_idle
        if frame_idle and self.payload is not None:
            if self._frame_call is not None and self._frame_call.active():
                self._frame_call.reset(frame_idle)
            else:
                self._frame_call = self.reactor.callLater(frame_idle, self._idle_end)

    def _framer_failed(self) -> None:
        log.failure("trigger {trigger}: its framer failed on bytes from {peer}; resetting the connection",
                    trigger=self.settings.trigger, peer=self.label)
        self._drop_partial()
        self.input_done = True
        stream_transport(self).abortConnection()

    def _handle(self, events: Iterable[Event]) -> None:
        for ev in events:
            if self.input_done:  # a job could not be stored: the rest is not read
                return
            kind = type(ev)  # the two events of every message first, without isinstance
            if kind is Data:
                if ev.data:  # type: ignore[union-attr]
                    self._append(ev.data)  # type: ignore[union-attr]
            elif kind is End:
                self._end_job(ev)  # type: ignore[arg-type]
            else:
                self._event(ev)

    def _event(self, ev: Event) -> None:
        if isinstance(ev, Data):
            if ev.data:
                self._append(ev.data)
        elif isinstance(ev, End):
            self._end_job(ev)
        elif isinstance(ev, Start):
            self._begin(ev.meta)
        elif isinstance(ev, Drop):
            if ev.reason:
                log.info("trigger {trigger}: {peer}: dropped {size} bytes: {reason}", trigger=self.settings.trigger,
                         peer=self.label, size=self.payload.size if self.payload else 0, reason=ev.reason)
            self._drop_partial()
        elif isinstance(ev, Reply):
            if ev.data:
                self.replies.add(ev.data)
        elif isinstance(ev, Query):
            answer = self._tell("query", self.policy.query, ev.value)
            if answer:
                self._write(answer)
        else:
            raise TypeError(f"not a framing event: {type(ev).__name__}")

    def _idle_end(self) -> None:
        self._frame_call = None
        self._end_job(None)

    def _begin(self, meta: Mapping[str, str]) -> None:
        if not self.began:
            self.began = True
            if not self._plain_policy:
                self._tell("job_began", self.policy.job_began, meta)

    def _abandon(self) -> None:
        if self.began:
            self.began = False
            if not self._plain_policy:
                self._tell("job_abandoned", self.policy.job_abandoned)

    def _append(self, chunk: bytes) -> None:
        t, s = self.trigger, self.settings
        # Only job bytes are activity: empty messages (keep-alive delimiters)
        # never reach here, so they do not hold a slot.
        self.last_active = self.reactor.seconds()
        if self.payload is None:
            self.payload = Payload(spool_dir=s.temp_dir, threshold=s.spill_threshold, budget=t.spill_budget)
            self.job_refused = None
            if s.job_timeout:
                self._job_started = self.last_active
                at = self.deadline_at
                if at is None or self.last_active + s.job_timeout < at:  # else the entry there re-checks
                    self._schedule_deadline()
        if not self._announces and not self.began:
            self._begin({})
        if self.job_refused:
            return
        if s.max_job_bytes is not None and self.payload.size + len(chunk) > s.max_job_bytes:
            self.job_refused = f"job larger than max_job_bytes = {s.max_job_bytes}"
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
                  trigger=self.settings.trigger, peer=self.label, reason=reason)
        self._abandon()
        self.refuse_unstored(reason)

    def _end_job(self, end: End | None) -> None:
        payload, self.payload = self.payload, None
        self._job_started = None
        s = self.settings
        if payload is None:
            if end is None or s.skip_empty:
                self._abandon()  # a Start without bytes
                return
            payload = Payload()  # an empty message
        if not self.began:
            self._begin(end.meta if end is not None else {})
        if self.job_refused:
            reason, self.job_refused = self.job_refused, None
            self.trigger.counters.jobs_refused += 1
            log.warn("trigger {trigger}: refused a job from {peer}: {reason}",
                     trigger=s.trigger, peer=self.label, reason=reason)
            self._send_refusal(reason)
            if end is not None and end.nak:
                self.replies.add(end.nak)
            self._abandon()
            return
        try:
            payload.close()
        except PayloadError as e:
            self._spill_failed(str(e))
            return
        self.began = False  # paired with job_submitted
        self.ready.append((payload, s.flow, end))
        self._dispatch()

    def _end_of_input(self, clean: bool, how: str) -> None:
        """The client sent its last byte (half-close, close or reset)."""
        s = self.settings
        try:
            events = self.framer.end_of_input(how)
        except Exception:
            log.failure("trigger {trigger}: its framer failed at the end of {peer}'s input",
                        trigger=s.trigger, peer=self.label)
            events = []
        if self._frame_call is not None and self._frame_call.active():
            self._frame_call.cancel()
        self._frame_call = None
        for ev in events:
            if self.refusing:  # the tail could not be stored
                return
            if isinstance(ev, End):
                if self.payload is None:
                    continue  # an end of input with nothing before it is no message
                if not clean and s.on_reset == "discard":
                    break
                self._end_job(ev)
            else:
                self._event(ev)
        if self.payload is None:
            return
        size = self.payload.size
        if not clean and s.on_reset == "discard":
            log.warn("trigger {trigger}: {peer} vanished mid-job ({how}); {size} bytes discarded",
                     trigger=s.trigger, peer=self.label, how=how, size=size)
            self._drop_partial()
            return
        log.info("trigger {trigger}: {peer}: {size} bytes without an end at {how}: {action}",
                 trigger=s.trigger, peer=self.label, size=size, how=how,
                 action="processed" if s.partial == "process" else "discarded")
        if s.partial == "process":
            self._end_job(None)
        else:
            self._drop_partial()

    def _drop_partial(self) -> None:
        payload, self.payload = self.payload, None
        if payload is not None:
            payload.discard()
        self._job_started = None
        self.job_refused = None
        self._abandon()

    # Hooks ------------------------------------------------------------------

    def _tell(self, hook: str, call: Callable[..., Any], *args: Any) -> Any:
        """Call a policy hook; its bug is logged, never the connection's end."""
        if self._plain_policy:
            return None  # the default policy adds nothing
        try:
            return call(*args)
        except Exception:
            log.failure("trigger {trigger}: its policy's {hook} failed for {peer}",
                        trigger=self.settings.trigger, hook=hook, peer=self.label)
            return None

    def describe(self) -> dict[str, Any]:
        return {
            "trigger": self.settings.trigger,
            "peer": self.label,
            "connected_at": self.connected_at,
            "jobs": self.jobs,
            "running": self.running,
            "receiving": self.payload.size if self.payload is not None else None,
            "half_closed": self.input_done,
            "held": self.held,
        }
