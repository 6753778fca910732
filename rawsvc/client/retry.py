"""
How long and how often a delivery is retried: L{RetryPolicy}.

A spooled delivery is retried until it is delivered or C{retry_for}
seconds have passed since its first attempt (7 days by default, like
CUPS); C{retries}, when set, caps the number of retries as well.  The
wait between attempts is Twisted's C{backoffPolicy}: C{retry_delay}
multiplied by C{factor} each time up to C{max_retry_delay}, plus a little
jitter so that many jobs for one printer that comes back do not all
knock at once.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import attrs
from twisted.application.internet import backoffPolicy

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
        if outcome not in TRANSIENT:
            return True
        if self.retries is not None and failed > self.retries:
            return True
        return elapsed >= self.retry_for
