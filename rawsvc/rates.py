"""
Per-minute rings for the console's charts: jobs finished per minute (done
and failed, in all and per trigger) and the acknowledgement latency of
stored jobs, for the last day, kept in the process (a restart starts them
empty).

Recording is cheap, as it sits on every job's path: a slot of a fixed list
is found from the minute and a counter incremented (the latencies: one list
append, then reservoir sampling past L{SAMPLES} a minute).  Reading sums
and sorts, on the reactor, a few thousand numbers at most.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

#: The minutes kept: one day.
MINUTES = 1440
#: Latencies kept per minute (a uniform sample of them past this many).
SAMPLES = 512
#: Triggers with a ring of their own (others count in the totals only).
MAX_KEYS = 256


class MinuteCounts:
    """Done and failed counts per minute over the last L{MINUTES} minutes."""

    __slots__ = ("_minute", "done", "failed")

    def __init__(self) -> None:
        self._minute = [-1] * MINUTES
        self.done = [0] * MINUTES
        self.failed = [0] * MINUTES

    def slot(self, t: float) -> int:
        minute = int(t // 60)
        slot = minute % MINUTES
        if self._minute[slot] != minute:
            self._minute[slot] = minute
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
        slot = minute % MINUTES
        if self._minute[slot] != minute:
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


def percentile(ordered: list[float], p: float) -> float | None:
    """The C{p}-th percentile (nearest rank) of the sorted C{ordered}, or None when empty."""
    if not ordered:
        return None
    rank = max(1, -(-len(ordered) * p // 100))  # ceil
    return ordered[int(rank) - 1]


class JobRates:
    """The service's rings: see the module docstring.  C{clock} gives epoch seconds."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.total = MinuteCounts()
        self.by_trigger: dict[str, MinuteCounts] = {}
        self._lat_minute = [-1] * MINUTES
        self._lat: list[list[float]] = [[] for _ in range(MINUTES)]
        self._lat_seen = [0] * MINUTES

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
        now = self.clock()
        minute = int(now // 60)
        slot = minute % MINUTES
        if self._lat_minute[slot] != minute:
            self._lat_minute[slot] = minute
            self._lat[slot] = []
            self._lat_seen[slot] = 0
        seen = self._lat_seen[slot] = self._lat_seen[slot] + 1
        kept = self._lat[slot]
        if len(kept) < SAMPLES:
            kept.append(seconds)
        else:
            i = random.randrange(seen)
            if i < SAMPLES:
                kept[i] = seconds

    # Reading --------------------------------------------------------------------------

    def _latencies(self, minute: int) -> tuple[list[float], int]:
        slot = minute % MINUTES
        if self._lat_minute[slot] != minute:
            return [], 0
        return self._lat[slot], self._lat_seen[slot]

    def series(self, minutes: int, bucket: int = 1) -> dict[str, Any]:
        """
        The last C{minutes} minutes (the current one last), C{bucket}
        minutes a point: per point C{t} (its start, epoch seconds),
        C{done}, C{failed} (jobs per minute, averaged over the bucket) and
        C{ack_p50}/C{ack_p99} (seconds, None without jobs); and the same
        over the whole range in C{totals}.
        """
        minutes = max(1, min(minutes, MINUTES))
        bucket = max(1, bucket)
        current = int(self.clock() // 60)
        first = current - minutes + 1
        points = []
        all_lat: list[float] = []
        acked = done_all = failed_all = 0
        for start in range(first, current + 1, bucket):
            done = failed = 0
            lat: list[float] = []
            width = min(bucket, current + 1 - start)
            for minute in range(start, start + width):
                d, f = self.total.at(minute)
                done += d
                failed += f
                kept, seen = self._latencies(minute)
                lat.extend(kept)
                acked += seen
            done_all += done
            failed_all += failed
            all_lat.extend(lat)
            lat.sort()
            points.append({"t": start * 60, "done": done / width, "failed": failed / width,
                           "ack_p50": percentile(lat, 50), "ack_p99": percentile(lat, 99)})
        all_lat.sort()
        return {
            "minutes": minutes, "bucket_minutes": bucket, "points": points,
            "totals": {"done": done_all, "failed": failed_all, "acked": acked,
                       "ack_p50": percentile(all_lat, 50), "ack_p99": percentile(all_lat, 99)},
        }

    def per_minute(self, trigger: str, now: float | None = None) -> float:
        """Jobs of C{trigger} finished per minute over the last 5 minutes."""
        ring = self.by_trigger.get(trigger)
        if ring is None:
            return 0.0
        done, failed = ring.last_minutes(4, self.clock() if now is None else now)
        return (done + failed) / 5
