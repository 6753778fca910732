"""
One timer for the deadlines of every stream connection on a reactor
(C{idle_timeout}, C{job_timeout}): a heap of C{(when, n, connection)} and
one C{DelayedCall} for its earliest entry, instead of a C{DelayedCall} per
connection.  A connection's deadline costs a tuple pushed on the heap; its
close costs nothing but a mark.

A connection holds C{deadline_at}, the time of its live entry (None:
none).  An entry whose time is not its connection's C{deadline_at} is
stale (the connection closed, or was given an earlier deadline since) and
is dropped when it comes up, or when the stale entries outnumber the live
ones (as Twisted's reactor does with cancelled calls), so closed
connections are not kept for the length of an C{idle_timeout}; when the
last live entry goes, the timer goes with it.

When an entry comes up, its connection's C{deadline_reached} runs; it
re-checks its own deadlines against the clock and schedules the next one,
as a per-connection timer's callback did.  Activity does not move an
entry: a later deadline waits for the entry, which re-arms.
"""

from __future__ import annotations

import heapq
import itertools
import weakref
from typing import Any, Protocol as _Protocol

from twisted.logger import Logger

log = Logger(namespace="rawsvc.trigger")

#: Stale entries tolerated before the heap is rebuilt without them (and only
#: once they are at least half of it).
COMPACT_AT = 256


class _Timed(_Protocol):
    deadline_at: float | None

    def deadline_reached(self) -> None: ...


class Deadlines:
    """The deadline heap of one reactor; see the module docstring."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self._heap: list[tuple[float, int, _Timed]] = []
        self._order = itertools.count()
        self._call: Any = None
        #: The time the pending call is for: entries up to it are due when it runs.
        self._armed_for = 0.0
        self._stale = 0

    def __len__(self) -> int:
        """Live entries (for tests and the bench)."""
        return len(self._heap) - self._stale

    def schedule(self, conn: _Timed, when: float) -> None:
        """C{conn.deadline_reached} runs at C{when} (unless it has an earlier entry already)."""
        at = conn.deadline_at
        if at is not None:
            if at <= when:
                return
            self._stale += 1  # the later entry is left on the heap
        conn.deadline_at = when
        heapq.heappush(self._heap, (when, next(self._order), conn))
        call = self._call
        if call is None:
            self._arm(when)
        elif when < self._armed_for:
            self._armed_for = when
            call.reset(max(0.0, when - self.reactor.seconds()))

    def cancel(self, conn: _Timed) -> None:
        """C{conn} needs no deadline any more (it closed)."""
        if conn.deadline_at is None:
            return
        conn.deadline_at = None
        self._stale += 1
        heap = self._heap
        if self._stale == len(heap):  # the last live one: no timer left behind
            heap.clear()
            self._stale = 0
            if self._call is not None:
                self._call.cancel()
                self._call = None
        elif self._stale >= COMPACT_AT and self._stale * 2 >= len(heap):
            self._heap = [e for e in heap if e[2].deadline_at == e[0]]
            heapq.heapify(self._heap)
            self._stale = 0

    def _arm(self, when: float) -> None:
        self._armed_for = when
        self._call = self.reactor.callLater(max(0.0, when - self.reactor.seconds()), self._fire)

    def _fire(self) -> None:
        self._call = None
        due = max(self._armed_for, self.reactor.seconds())
        # self._heap each time: a callback's close may clear or rebuild it.
        while self._heap and self._heap[0][0] <= due:
            when, _, conn = heapq.heappop(self._heap)
            if conn.deadline_at != when:
                self._stale -= 1
                continue
            conn.deadline_at = None
            try:
                conn.deadline_reached()
            except Exception:
                log.failure("a connection's deadline check failed")
        heap = self._heap
        while heap and heap[0][2].deadline_at != heap[0][0]:
            heapq.heappop(heap)
            self._stale -= 1
        if heap and self._call is None:
            self._arm(heap[0][0])


_by_reactor: "weakref.WeakKeyDictionary[Any, Deadlines]" = weakref.WeakKeyDictionary()


def deadlines_of(reactor: Any) -> Deadlines:
    """The reactor's L{Deadlines}, made at first use."""
    d = _by_reactor.get(reactor)
    if d is None:
        d = _by_reactor[reactor] = Deadlines(reactor)
    return d
