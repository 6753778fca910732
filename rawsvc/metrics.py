"""Counters that triggers and destinations keep, for status pages and /metrics."""

from __future__ import annotations

import bisect
from typing import Any

import attrs

#: Upper bounds (seconds) of the flow-duration histogram buckets.
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0)


@attrs.define
class Histogram:
    buckets: tuple[float, ...] = DURATION_BUCKETS
    counts: list[int] = attrs.field(factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, n in zip(self.buckets, self.counts):
            running += n
            out.append((repr(bound), running))
        out.append(("+Inf", self.count))
        return out


@attrs.define
class TriggerCounters:
    """Per-trigger counters; every trigger keeps one."""

    connections_open: int = 0
    connections_total: int = 0
    connections_refused: int = 0
    #: Silent connections closed to make room for a new client at max_connections.
    evicted: int = 0
    jobs_received: int = 0
    jobs_ok: int = 0
    jobs_failed: int = 0
    jobs_refused: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    flow_seconds: Histogram = attrs.field(factory=Histogram)

    def as_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self, filter=lambda a, v: a.name != "flow_seconds")
        d["flow_seconds_count"] = self.flow_seconds.count
        d["flow_seconds_sum"] = round(self.flow_seconds.total, 6)
        return d
