"""
One destination's queue (L{DestinationQueue}): a L{DeferredLock} that gives
its single connection to one delivery at a time, in submission order; the
deliveries waiting for it; the current delivery (whose L{Delivery.state}
is the destination's state) and its back-off wait; and the counters.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredLock

from rawsvc.client.machine import Delivery, State
from rawsvc.client.retry import RetryWait
from rawsvc.rates import RECENT, MinuteCounts

#: The queue state of a delivery waiting for its next attempt.
WAITING = State.WAITING.value

#: The queue state when no delivery holds the destination.
IDLE = "idle"

#: The queue state while an operator has paused the destination (no attempt starts).
PAUSED = "paused"


class _Stopping(Exception):
    """The service stops: the delivery ends C{stopped} (it resumes at the next start)."""


class _Cancelled(Exception):
    """An operator cancelled the delivery while it waited to retry."""


@attrs.define(eq=False)
class Turn:
    """A delivery waiting for its destination's lock; C{ended_by} says why its wait was cancelled."""

    delivery: Delivery
    acquired: Deferred[DeferredLock]
    #: The outcome an operator or the stop gave it ("cancelled", "stopped"); "" when its caller cancelled.
    ended_by: str = ""
    #: A job for a printer pool: it may move to another printer of the pool (L{rawsvc.client.pools}).
    pooled: bool = False

    def end(self, outcome: str) -> None:
        """Leave the queue (through the lock's canceller) with C{outcome}."""
        self.ended_by = outcome
        self.acquired.cancel()


class DestinationQueue:
    """One destination's lock, waiting deliveries, current delivery and counters."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.lock = DeferredLock()
        #: Deliveries waiting for the lock, in order.
        self.turns: list[Turn] = []
        self.current: Delivery | None = None
        self.retry: RetryWait | None = None
        self.cancelled = False
        self.attempts = 0
        self.delivered = 0
        self.failures = 0
        self.retries = 0
        self.bytes_sent = 0
        self.last_outcome = ""
        self.last_error = ""
        #: When C{last_error} was set (epoch seconds), or None.
        self.last_error_at: float | None = None
        self.idle_since = time.time()
        #: Deliveries ended per minute (done: delivered; failed: not), the last L{RECENT} minutes.
        self.rate = MinuteCounts(RECENT)
        #: Paused by an operator (who, epoch seconds), or None; see L{until_resumed}.
        self.paused: tuple[str, float] | None = None
        self._resumed: Deferred[str | None] | None = None

    @property
    def state(self) -> str:
        """C{paused}, the current delivery's state, or C{idle}."""
        if self.paused is not None:
            return PAUSED
        return self.current.state.value if self.current is not None else IDLE

    def pause(self, who: str) -> bool:
        """No attempt starts until L{resume}: queued deliveries wait (nothing is dropped); False if paused already."""
        if self.paused is not None:
            return False
        self.paused = (who, time.time())
        return True

    def resume(self) -> bool:
        """Attempts start again (the delivery waiting for it first); False when it was not paused."""
        if self.paused is None:
            return False
        self.paused = None
        self._end_pause(None)
        return True

    @property
    def unused(self) -> bool:
        """Nothing ever tried, running or waiting here (a queue only a pause made)."""
        return (self.attempts == 0 and not self.last_outcome and self.current is None and not self.turns
                and not self.lock.locked and self._resumed is None and self.paused is None)

    def until_resumed(self) -> Deferred[str | None]:
        """Fires with None once resumed, or with the outcome that ended the wait (L{end_pause})."""
        self._resumed = Deferred()
        return self._resumed

    def _end_pause(self, outcome: str | None) -> bool:
        d, self._resumed = self._resumed, None
        if d is None:
            return False
        d.callback(outcome)
        return True

    def end_pause(self, outcome: str) -> bool:
        """End the current delivery's wait for a resume with C{outcome} (stopped, cancelled); False when none waits."""
        return self._end_pause(outcome)

    def status(self) -> dict[str, Any]:
        d = self.current
        return {
            "state": self.state,
            # A delivery waiting for a resume (L{pause}) has not started: it counts as queued.
            "queued": len(self.lock.waiting) + (1 if self._resumed is not None else 0),
            "in_progress": 1 if d is not None else 0,
            "waiting": 1 if d is not None and d.state is State.WAITING else 0,
            "held": 1 if d is not None and d.state is State.HELD else 0,
            "held_reason": d.last_error if d is not None and d.state is State.HELD else "",
            "job_id": d.job_id if d is not None else "",
            "attempt": d.attempt if d is not None else 0,
            "next_try": d.next_try if d is not None else None,
            "attempts": self.attempts,
            "delivered": self.delivered,
            "failures": self.failures,
            "retries": self.retries,
            "bytes_sent": self.bytes_sent,
            "last_outcome": self.last_outcome,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "since": d.since if d is not None else self.idle_since,
            "paused": self.paused is not None,
            "paused_by": self.paused[0] if self.paused is not None else "",
            "jobs_per_minute": round(sum(self.rate.last_minutes(RECENT - 1, time.time())) / RECENT, 2),
        }

    def end_turns(self, outcome: str) -> None:
        """Every delivery still waiting for the lock leaves it with C{outcome}, in order."""
        for turn in list(self.turns):
            turn.end(outcome)

    def move_pooled(self, outcome: str) -> int:
        """Every pooled delivery waiting for the lock leaves it with C{outcome} (to go elsewhere); how many."""
        moving = [turn for turn in self.turns if turn.pooled]
        for turn in moving:
            turn.end(outcome)
        return len(moving)

    def end_wait(self, error: Exception | None = None) -> bool:
        """End the current back-off wait now (with C{error}: the delivery ends); False when not waiting."""
        wait = self.retry
        if wait is None:
            return False
        return wait.now() if error is None else wait.stop(error)
