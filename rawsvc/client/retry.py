"""
How long and how often a failed attempt is retried: L{RetryPolicy}, and the
back-off wait between two attempts: L{RetryWait}.  Both the destination pool
(C{send_tcp}) and the C{http} action retry with these.

A spooled delivery is retried until it is delivered or C{retry_for}
seconds have passed since its first attempt (7 days by default, like
CUPS); C{retries}, when set, caps the number of retries as well.  The
wait between attempts is Twisted's C{backoffPolicy}: C{retry_delay}
multiplied by C{factor} each time up to C{max_retry_delay}, plus a little
jitter so that many jobs for one printer that comes back do not all
knock at once.  The jitter is uniform between 0 and a quarter of
C{retry_delay}, added to the capped delay (so a wait is at most
C{max_retry_delay + retry_delay / 4}).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application.internet import backoffPolicy
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

#: Seconds a delivery is retried for by default (CUPS's job-retry-limit spirit: 7 days).
RETRY_FOR = 604800.0

#: Outcomes of an attempt that a later attempt may cure: the printer is
#: busy, off, unplugged, unnamed for a while, or stalled mid-job.
TRANSIENT = frozenset({"refused", "reset", "connect_timeout", "connect_error", "dns_failure", "send_timeout"})


def _jitter(spread: float) -> Callable[[], float]:
    return lambda: random.uniform(0, spread)


@attrs.frozen
class RetryPolicy:
    """When a failed attempt is tried again, and when the delivery gives up."""

    retry_delay: float = 1.0
    max_retry_delay: float = 30.0
    retry_for: float = RETRY_FOR
    #: Retries at most (None: no cap but C{retry_for}).
    retries: int | None = None
    factor: float = 2.0
    _policy: Callable[[int], float] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        jitter = _jitter(self.retry_delay / 4)
        object.__setattr__(self, "_policy", backoffPolicy(self.retry_delay, self.max_retry_delay, self.factor, jitter))

    def delay(self, failed: int) -> float:
        """Seconds to wait after C{failed} failed attempts (1-based): C{retry_delay} after the first."""
        return self._policy(max(failed - 1, 0))

    def gives_up(self, outcome: str, failed: int, elapsed: float) -> bool:
        """Whether a delivery whose C{failed}-th attempt ended in C{outcome} stops here."""
        return outcome not in TRANSIENT or self.exhausted(failed, elapsed)

    def exhausted(self, failed: int, elapsed: float) -> bool:
        """Whether C{failed} failed attempts, C{elapsed} seconds after the first began, are all there may be."""
        if self.retries is not None and failed > self.retries:
            return True
        return elapsed >= self.retry_for

    def wait(self, clock: IReactorTime, failed: int) -> "RetryWait":
        """The back-off after C{failed} failed attempts, started now on C{clock}."""
        return RetryWait(clock, self.delay(failed))


class RetryWait:
    """
    A back-off wait: L{deferred} fires with None after C{delay} seconds, or
    at once on L{now}; L{stop} fails it with an error instead.  Cancelling
    L{deferred} (its caller gave up) ends the wait too.
    """

    def __init__(self, clock: IReactorTime, delay: float) -> None:
        self.delay = delay
        self.deferred: Deferred[None] = Deferred(self._cancelled)
        self._call: Any = clock.callLater(delay, self._end, None)

    def now(self) -> bool:
        """End the wait now; False when it is already over."""
        return self._end(None)

    def stop(self, error: Exception) -> bool:
        """Fail the wait with C{error}; False when it is already over."""
        return self._end(error)

    def _end(self, error: Exception | None) -> bool:
        if self.deferred.called:
            return False
        self._cancel_call()
        if error is None:
            self.deferred.callback(None)
        else:
            self.deferred.errback(error)
        return True

    def _cancelled(self, _d: Deferred[None]) -> None:
        self._cancel_call()

    def _cancel_call(self) -> None:
        if self._call.active():
            self._call.cancel()
