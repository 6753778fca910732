"""
Running a connection's jobs, mixed into
L{rawsvc.triggers.connection.FramedConnection}: each finished job goes to
the job sink (C{wait_for_flow}: one at a time), gets its place in the
reply order, and, when its flow has ended, its C{End}'s C{ack} or C{nak}
and, if the sink refused it, the refusal; then the connection closes when
nothing is left to do.
"""

from __future__ import annotations

import collections
from typing import Any

from twisted.internet.defer import fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from rawsvc.compat import stream_transport
from rawsvc.interfaces import IConnectionPolicy
from rawsvc.job import Job, Payload
from rawsvc.triggers.framing import End
from rawsvc.triggers.limits import ConnectionLimits
from rawsvc.triggers.replies import ReplyQueue, ReplySlot

log = Logger(namespace="rawsvc.trigger")

#: Job states after which an C{End}'s C{ack} goes out (else its C{nak};
#: an interrupted job, stored and resumed at the next start, gets neither).
_ACKED, _NAKED = ("done",), ("failed", "refused", "cancelled")
# (A job the stop cut off ends "interrupted": the spool resumes it, so the
# sender must not be told it failed, or it would send it again: twice printed.)


class JobSubmission(ConnectionLimits):
    """Hands jobs to the sink and answers them in order; the connection supplies the state below."""

    policy: IConnectionPolicy
    replies: ReplyQueue
    ready: collections.deque[tuple[Payload, str, End | None]]
    peer_host: str
    peer_port: int
    closing: bool
    jobs: int
    _told_done: bool
    _plain_policy: bool

    def _tell(self, hook: str, call: Any, *args: Any) -> Any:
        raise NotImplementedError

    def _abandon(self) -> None:
        raise NotImplementedError

    def _dispatch(self) -> None:
        wait = self.settings.wait_for_flow
        while self.ready and not (wait and self.running):
            payload, flow, end = self.ready.popleft()
            self._submit(payload, flow, end)
        if wait:
            if self.ready or self.running:
                self.pause_reading("flow")
            else:
                self.resume_reading("flow")

    def _submit(self, payload: Payload, flow: str, end: End | None) -> None:
        t, s = self.trigger, self.settings
        job = Job(
            trigger=s.trigger,
            payload=payload,
            peer_host=self.peer_host,
            peer_port=self.peer_port,
            encoding=s.job_encoding,
            meta=end.meta if end is not None else {},
        )
        # ${language} and ${labels} are detected from the payload on first use
        # (a flow's template, the spool's record of the job, /jobs): a job that
        # needs neither costs nothing for them.
        self.jobs += 1
        slot = self.replies.new_slot(self.label)
        job.reply_channel = slot
        self.running += 1
        # A hook's bug must never keep a received job from the sink.
        if not self._plain_policy:
            self._tell("job_submitted", self.policy.job_submitted, job)
        try:
            d = t.sink.submit(job, flow, t.counters)
        except Exception:
            d = fail()
        d.addBoth(self._job_done, slot, job, end)

    def _job_done(self, result: Any, slot: ReplySlot, job: Job, end: End | None) -> None:
        if isinstance(result, Failure):
            log.failure("trigger {trigger}: the job sink failed on job {job_id}", result,
                        trigger=self.settings.trigger, job_id=job.job_id)
        self.running -= 1
        refused = job.state == "refused"
        if end is not None and (end.ack or end.nak):
            slot.put(end.ack if job.state in _ACKED else end.nak if job.state in _NAKED else b"")
        if refused:
            # The sink could not take the job (the spool is unavailable): the
            # refusal text goes out in this job's place in the reply order.
            text = self._render_refusal(job.error or "refused")
            if text is not None:
                slot.put(text)
        self.replies.finish(slot)
        if refused:
            self.refuse_unstored(job.error or "refused", text_sent=True)
        if not self._plain_policy:
            self._tell("job_finished", self.policy.job_finished, job)
        if self.settings.close_after_reply and not self.closed:
            self.input_done = True
            stream_transport(self).loseConnection()
        self._dispatch()
        self._maybe_close()
        self._maybe_done()

    def _maybe_close(self) -> None:
        if self.closed or self.running or self.ready:
            return
        if self.refusing and not self.closing:
            stream_transport(self).loseWriteConnection()  # the client reads the refusal, then closes
            return
        if self.input_done or (self.closing and self.payload is None):
            stream_transport(self).loseConnection()

    def _maybe_done(self) -> None:
        if self.closed and not self.running and not self.ready and not self._told_done:
            self._told_done = True
            self._abandon()
            if not self._plain_policy:
                self._tell("done", self.policy.done)
