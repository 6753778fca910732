"""
Per-minute rings for the console's charts: jobs finished per minute (done
and failed, in all and per trigger) and the acknowledgement latency of
stored jobs, for the last day, kept in the process (a restart starts them
empty).

Recording is cheap, as it sits on every job's path: a slot of a fixed ring
is found from the minute and a counter incremented.  A minute's latencies
are a histogram (L{Latencies}): counts in L{BUCKETS} log-spaced buckets,
L{PER_OCTAVE} to a doubling, and the least and greatest latency; a
percentile is the middle of its bucket (within 4.5 % of the true value,
exact when all of a bucket's latencies are the least or the greatest).
Reading a day (L{JobRates.series}) adds up at most 1,440 such fixed-size
histograms, however many jobs there were: a few milliseconds on the
reactor, no sorting.  Rings are allocated at their first count, in
compact arrays.
"""

from __future__ import annotations

import math
import time
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable
from itertools import accumulate
from typing import Any

#: The minutes kept: one day.
MINUTES = 1440
#: The minutes a destination's ring keeps: its jobs per minute are over the last 5 (L{MinuteCounts.last_minutes}).
RECENT = 5
#: Triggers with a ring of their own (others count in the totals only).
MAX_KEYS = 256
#: Latency buckets to a doubling: a bucket spans a factor 2 ** (1 / 8), about 9 %.
PER_OCTAVE = 8
#: The smallest latency with a bucket of its own, as a power of two (2 ** -14 s: 61 us).
_LOW_EXP = -14
#: The latency buckets: 2 ** -14 s to 2 ** 12 s (68 minutes); shorter and longer ones count in the first and last.
BUCKETS = (12 - _LOW_EXP) * PER_OCTAVE
_ZEROS = array("I", bytes(4 * BUCKETS))


def _bucket(seconds: float) -> int:
    if seconds <= 0 or seconds != seconds:  # zero, negative (a clock step) or NaN: the first bucket
        return 0
    b = math.floor((math.log2(seconds) - _LOW_EXP) * PER_OCTAVE)
    return 0 if b < 0 else BUCKETS - 1 if b >= BUCKETS else b


def _middle(b: int) -> float:
    """The geometric middle of bucket C{b} (seconds)."""
    return 2.0 ** (_LOW_EXP + (b + 0.5) / PER_OCTAVE)


class MinuteCounts:
    """Done and failed counts per minute over the last C{minutes} minutes (allocated at the first count)."""

    __slots__ = ("minutes", "_minute", "done", "failed")

    def __init__(self, minutes: int = MINUTES) -> None:
        self.minutes = minutes
        self._minute: array[int] | None = None
        self.done: array[int] = array("I")
        self.failed: array[int] = array("I")

    def slot(self, t: float) -> int:
        minute = int(t // 60)
        slot = minute % self.minutes
        stamps = self._minute
        if stamps is None:
            stamps = self._minute = array("i", [-1]) * self.minutes
            self.done = array("I", bytes(4 * self.minutes))
            self.failed = array("I", bytes(4 * self.minutes))
        if stamps[slot] != minute:
            stamps[slot] = minute
            self.done[slot] = self.failed[slot] = 0
        return slot

    def add(self, ok: bool, t: float) -> None:
        slot = self.slot(t)
        if ok:
            self.done[slot] += 1
        else:
            self.failed[slot] += 1

    def at(self, minute: int) -> tuple[int, int]:
        """(done, failed) in the minute C{minute} (minutes since the epoch); zeros when not kept."""
        slot = minute % self.minutes
        if self._minute is None or self._minute[slot] != minute:
            return 0, 0
        return self.done[slot], self.failed[slot]

    def last_minutes(self, n: int, now: float) -> tuple[int, int]:
        """(done, failed) summed over the last C{n} whole minutes and the current one."""
        current = int(now // 60)
        done = failed = 0
        for minute in range(current - n, current + 1):
            d, f = self.at(minute)
            done += d
            failed += f
        return done, failed


class Latencies:
    """
    A histogram of latencies: C{counts} per bucket (L{BUCKETS} of them),
    their number C{n}, the least C{low} and greatest C{high}.
    """

    __slots__ = ("counts", "n", "low", "high")

    def __init__(self, counts: Iterable[int] | None = None, n: int = 0,
                 low: float = math.inf, high: float = -math.inf) -> None:
        self.counts: array[int] | list[int] = array("I", _ZEROS) if counts is None else list(counts)
        self.n = n
        self.low = low
        self.high = high

    def add(self, seconds: float) -> None:
        self.counts[_bucket(seconds)] += 1
        self.n += 1
        if seconds < self.low:
            self.low = seconds
        if seconds > self.high:
            self.high = seconds

    @classmethod
    def merged(cls, parts: list[Latencies]) -> Latencies:
        """One histogram of all of C{parts}' latencies."""
        if not parts:
            return cls([0] * BUCKETS)
        if len(parts) == 1:
            one = parts[0]
            return cls(one.counts, one.n, one.low, one.high)
        return cls(map(sum, zip(*(p.counts for p in parts))), sum(p.n for p in parts),
                   min(p.low for p in parts), max(p.high for p in parts))

    def percentiles(self, *ps: float) -> list[float | None]:
        """
        The C{ps}-th percentiles (nearest rank), None each when empty: a
        percentile's bucket's middle, kept between C{low} and C{high} (the
        first and the last bucket, which count all shorter and longer
        latencies too: C{low} and C{high}).
        """
        if not self.n:
            return [None for _ in ps]
        running = list(accumulate(self.counts))
        found: list[float | None] = []
        for p in ps:
            rank = max(1, -(-self.n * p // 100))  # ceil
            b = bisect_left(running, rank)
            found.append(self.low if b == 0 else self.high if b >= BUCKETS - 1
                         else min(max(_middle(b), self.low), self.high))
        return found

    def percentile(self, p: float) -> float | None:
        """The C{p}-th percentile: see L{percentiles}."""
        return self.percentiles(p)[0]


class JobRates:
    """The service's rings: see the module docstring.  C{clock} gives epoch seconds."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.total = MinuteCounts()
        self.by_trigger: dict[str, MinuteCounts] = {}
        self._lat_minute = array("i", [-1]) * MINUTES
        self._lat: list[Latencies | None] = [None] * MINUTES

    # Recording (the job path) ------------------------------------------------------

    def finished(self, state: str, trigger: str) -> None:
        """A job finished C{done} or C{failed} (other states are not counted)."""
        if state != "done" and state != "failed":
            return
        now = self.clock()
        ok = state == "done"
        self.total.add(ok, now)
        ring = self.by_trigger.get(trigger)
        if ring is None:
            if len(self.by_trigger) >= MAX_KEYS:
                return
            ring = self.by_trigger[trigger] = MinuteCounts()
        ring.add(ok, now)

    def acked(self, seconds: float) -> None:
        """A job was stored and its sender may be acknowledged, C{seconds} after it was received."""
        minute = int(self.clock() // 60)
        slot = minute % MINUTES
        lat = self._lat[slot]
        if lat is None or self._lat_minute[slot] != minute:
            self._lat_minute[slot] = minute
            lat = self._lat[slot] = Latencies()
        lat.add(seconds)

    # Reading --------------------------------------------------------------------------

    def latencies(self, minute: int) -> Latencies | None:
        """The ack latencies of the minute C{minute} (minutes since the epoch); None without any."""
        slot = minute % MINUTES
        return self._lat[slot] if self._lat_minute[slot] == minute else None

    def series(self, minutes: int, bucket: int = 1) -> dict[str, Any]:
        """
        The last C{minutes} minutes (the current one last), C{bucket}
        minutes a point: per point C{t} (its start, epoch seconds),
        C{done}, C{failed} (jobs per minute, averaged over the bucket) and
        C{ack_p50}/C{ack_p99} (seconds, None without jobs; from the
        minutes' histograms, see the module docstring); and the same over
        the whole range in C{totals}.  It adds up fixed-size histograms,
        never sorts: a day in ten-minute points takes milliseconds.
        """
        minutes = max(1, min(minutes, MINUTES))
        bucket = max(1, bucket)
        current = int(self.clock() // 60)
        first = current - minutes + 1
        points = []
        parts: list[Latencies] = []
        done_all = failed_all = 0
        for start in range(first, current + 1, bucket):
            done = failed = 0
            kept: list[Latencies] = []
            width = min(bucket, current + 1 - start)
            for minute in range(start, start + width):
                d, f = self.total.at(minute)
                done += d
                failed += f
                lat = self.latencies(minute)
                if lat is not None:
                    kept.append(lat)
            done_all += done
            failed_all += failed
            merged = Latencies.merged(kept)
            if merged.n:
                parts.append(merged)
            p50, p99 = merged.percentiles(50, 99)
            points.append({"t": start * 60, "done": done / width, "failed": failed / width,
                           "ack_p50": p50, "ack_p99": p99})
        total = Latencies.merged(parts)
        p50, p99 = total.percentiles(50, 99)
        return {
            "minutes": minutes, "bucket_minutes": bucket, "points": points,
            "totals": {"done": done_all, "failed": failed_all, "acked": total.n, "ack_p50": p50, "ack_p99": p99},
        }

    def per_minute(self, trigger: str, now: float | None = None) -> float:
        """Jobs of C{trigger} finished per minute over the last 5 minutes."""
        ring = self.by_trigger.get(trigger)
        if ring is None:
            return 0.0
        done, failed = ring.last_minutes(4, self.clock() if now is None else now)
        return (done + failed) / 5
