"""
One destination's queue (L{_Queue}): its jobs in order, the current job's
attempt and back-off wait, and its counters; and L{DeliveryWatcher}, what
the pool tells about deliveries waiting to retry.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Protocol

from twisted.internet.defer import Deferred

#: The queue state of a delivery waiting for its next attempt.
WAITING = "waiting"


class DeliveryWatcher(Protocol):
    """Told when a job's delivery starts waiting for a retry and when it tries again."""

    def delivery_waiting(self, job_id: str, destination: str, attempt: int, error: str, next_try: float) -> None: ...

    def delivery_retrying(self, job_id: str, destination: str, attempt: int) -> None: ...


class _Stopping(Exception):
    pass


class _Cancelled(Exception):
    pass


class _Queue:
    """One destination's queue and counters."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.waiting: deque[Deferred[None]] = deque()
        self.busy = False
        self.state = "idle"
        self.attempts = 0
        self.delivered = 0
        self.failures = 0
        self.retries = 0
        self.bytes_sent = 0
        self.last_outcome = ""
        self.last_error = ""
        self.last_change = time.time()
        self.job_id = ""
        #: The current job's attempt number and, while it waits, its next try (epoch seconds).
        self.attempt = 0
        self.next_try: float | None = None
        self.cancelled = False
        self.retry_wait: Deferred[None] | None = None
        self.retry_call: Any = None

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "queued": len(self.waiting),
            "in_progress": 1 if self.busy else 0,
            "waiting": 1 if self.next_try is not None else 0,
            "job_id": self.job_id,
            "attempt": self.attempt,
            "next_try": self.next_try,
            "attempts": self.attempts,
            "delivered": self.delivered,
            "failures": self.failures,
            "retries": self.retries,
            "bytes_sent": self.bytes_sent,
            "last_outcome": self.last_outcome,
            "last_error": self.last_error,
            "since": self.last_change,
        }

    def end_wait(self, error: Exception | None = None) -> bool:
        """End a back-off wait now (with C{error}: the delivery ends); False when not waiting."""
        wait, call = self.retry_wait, self.retry_call
        if wait is None:
            return False
        if call is not None and call.active():
            call.cancel()
        self.retry_wait = self.retry_call = None
        if error is None:
            wait.callback(None)
        else:
            wait.errback(error)
        return True


