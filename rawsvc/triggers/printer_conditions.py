"""
Simulated printer conditions (C{paper_out}, C{head_open}, C{ribbon_out},
C{paused}, C{offline}) and what they do to the virtual printer's jobs.

An integrator sets them from the manhole or the admin API to test label
software's error handling.  Every status answer shows them (C{~HS},
C{~HQES}, SGD, PJL, the UDP status, the printer's snapshot).  Their effect:

- C{offline}: the port closes, so clients are refused, as when the printer
  is paused by an operator;
- C{paper_out}, C{head_open}, C{ribbon_out}, C{paused}: the printer still
  takes jobs, as a real one fills its buffer, but holds them: their flows
  do not run (L{HoldingSink}) until every one of these is cleared; then
  they run in the order they arrived.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from rawsvc.interfaces import IJobSink
from rawsvc.triggers.zpl_status import CONDITIONS, HOLDING

log = Logger(namespace="rawsvc.trigger")


class UnknownCondition(ValueError):
    """A condition name the virtual printer does not simulate."""


def check_condition(name: str) -> str:
    """C{name}, normalised (C{"paper-out"} is C{paper_out}); L{UnknownCondition} when unknown."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    if key not in CONDITIONS:
        raise UnknownCondition(f"unknown printer condition {name!r}; known: {', '.join(CONDITIONS)}")
    return key


class Conditions:
    """The set of conditions a virtual printer is in, with observers told of each change."""

    def __init__(self) -> None:
        self.active: set[str] = set()
        self._observers: list[Callable[[], None]] = []

    def observe(self, callback: Callable[[], None]) -> None:
        self._observers.append(callback)

    def set(self, name: str, on: bool = True) -> bool:
        """Switch condition C{name} on or off; True when that changed anything."""
        key = check_condition(name)
        if (key in self.active) == on:
            return False
        if on:
            self.active.add(key)
        else:
            self.active.discard(key)
        for callback in list(self._observers):
            callback()
        return True

    def clear(self) -> bool:
        """Switch every condition off."""
        if not self.active:
            return False
        self.active.clear()
        for callback in list(self._observers):
            callback()
        return True

    @property
    def holding(self) -> str:
        """The first condition that holds jobs (in L{HOLDING} order), or ""."""
        return next((c for c in HOLDING if c in self.active), "")

    @property
    def offline(self) -> bool:
        return "offline" in self.active

    def ordered(self) -> tuple[str, ...]:
        """The active conditions in L{CONDITIONS} order."""
        return tuple(c for c in CONDITIONS if c in self.active)

    def first(self) -> str:
        """The condition status answers lead with (offline first), or ""."""
        if self.offline:
            return "offline"
        return self.holding


@implementer(IJobSink)
@implementer(IJobSink)
class HoldingSink:
    """
    The printer's view of the job sink: while C{conditions} hold jobs, a
    job is still handed to C{inner} at once (so the spool stores it before
    its sender is answered: a held job survives a crash), but with a
    C{gate} its flow waits on; L{release} opens the gates in arrival order
    once nothing holds them.
    """

    def __init__(self, inner: IJobSink, conditions: Conditions, printer: str) -> None:
        self.inner = inner
        self.conditions = conditions
        self.printer = printer
        self.held: collections.deque[tuple[str, Deferred]] = collections.deque()

    def __getattr__(self, name: str) -> Any:
        """
        A proxy for the rest: the trigger's sink is still the service's (what
        a test gave it, e.g. L{rawsvc.testing.StubSink}, reads through).
        """
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def submit(self, job: Any, flow_name: str, counters: Any = None) -> Deferred:
        reason = self.conditions.holding
        if reason or self.held:
            gate: Deferred = Deferred()
            job.gate = gate
            self.held.append((job.job_id, gate))
            log.info("printer {printer}: job {job_id} held ({reason}); {n} held",
                     printer=self.printer, job_id=job.job_id, reason=reason or "jobs before it are held",
                     n=len(self.held))
        return self.inner.submit(job, flow_name, counters)

    def release(self, force: bool = False) -> int:
        """Let the held jobs' flows start, in order (all of them with C{force}: the service stops)."""
        n = 0
        while self.held and (force or not self.conditions.holding):
            _, gate = self.held.popleft()
            if not gate.called:
                gate.callback(None)
            n += 1
        if n:
            log.info("printer {printer}: released {n} held job(s)", printer=self.printer, n=n)
        return n
