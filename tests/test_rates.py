"""The per-minute rings behind the console's charts, on a fake clock: exact counts, rollover, percentiles, bounds."""

from __future__ import annotations

import random

import pytest
from twisted.web.template import flattenString

from rawsvc.console.charts import charts
from rawsvc.rates import BUCKETS, MINUTES, JobRates, Latencies, MinuteCounts


class FakeClock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_counts_land_in_their_minute_and_old_minutes_are_forgotten():
    clock = FakeClock(60 * 1000)
    rates = JobRates(clock)
    rates.finished("done", "a")
    rates.finished("done", "a")
    rates.finished("failed", "b")
    rates.finished("interrupted", "a")  # not counted
    clock.t += 60
    rates.finished("done", "a")
    series = rates.series(60)
    assert len(series["points"]) == 60
    assert [(p["done"], p["failed"]) for p in series["points"][-2:]] == [(2, 1), (1, 0)]
    assert series["points"][-1]["t"] == 60 * 1001
    assert series["totals"]["done"] == 3 and series["totals"]["failed"] == 1
    assert rates.per_minute("a") == 3 / 5 and rates.per_minute("b") == 1 / 5 and rates.per_minute("c") == 0
    clock.t += 60 * MINUTES  # a day later the same slots are reused, their counts reset
    rates.finished("done", "a")
    series = rates.series(MINUTES)
    assert series["totals"]["done"] == 1 and series["totals"]["failed"] == 0


def test_a_day_in_ten_minute_points_averages_per_minute():
    clock = FakeClock(60 * 10_000)
    rates = JobRates(clock)
    for _ in range(20):
        rates.finished("done", "a")
    series = rates.series(1440, 10)
    assert len(series["points"]) == 144
    assert series["points"][-1]["done"] == 2.0  # the last ten minutes (to now): 20 jobs over 10
    assert series["points"][-1]["t"] == 60 * (10_000 - 9)
    clock.t += 60 * 10
    series = rates.series(1440, 10)
    assert [p["done"] for p in series["points"][-2:]] == [2.0, 0.0]
    assert series["totals"]["done"] == 20


def test_ack_latency_percentiles_and_the_fixed_size_summary():
    clock = FakeClock()
    rates = JobRates(clock)
    for ms in range(1, 101):
        rates.acked(ms / 1000)
    totals = rates.series(60)["totals"]
    assert totals["acked"] == 100
    assert totals["ack_p50"] == pytest.approx(0.050, rel=0.045) and totals["ack_p99"] == pytest.approx(0.099, rel=0.045)
    for _ in range(10_000):
        rates.acked(1.0)
    minute = int(clock.t // 60)
    summary = rates.latencies(minute)
    # However many jobs a minute has, its summary is the same few hundred counters.
    assert summary is not None and len(summary.counts) == BUCKETS and summary.n == 10_100
    totals = rates.series(60)["totals"]
    assert totals["acked"] == 10_100 and totals["ack_p50"] == 1.0 and totals["ack_p99"] == 1.0  # the greatest: exact


def test_histogram_percentiles_stay_within_the_bucket_width_of_the_exact_ones():
    rng = random.Random(7)
    clock = FakeClock(60 * 20_000)
    rates = JobRates(clock)
    exact: list[float] = []
    for _ in range(30):  # half an hour of latencies spread over four decades
        for _ in range(300):
            seconds = 10 ** rng.uniform(-4, 0) * rng.choice((1, 1, 1, 30))
            exact.append(seconds)
            rates.acked(seconds)
        clock.t += 60
    exact.sort()
    totals = rates.series(MINUTES, 10)["totals"]
    assert totals["acked"] == len(exact)
    for p, key in ((50, "ack_p50"), (99, "ack_p99")):
        assert totals[key] == pytest.approx(exact[-(-len(exact) * p // 100) - 1], rel=0.045)


def test_latencies_out_of_range_count_and_report_within_least_and_greatest():
    lat = Latencies()
    for seconds in (0.0, -1.0, 1e-9, 5e4):
        lat.add(seconds)
    assert lat.n == 4 and sum(lat.counts) == 4
    assert lat.percentile(1) == -1.0 and lat.percentile(100) == 5e4
    assert Latencies().percentile(50) is None and Latencies.merged([]).percentile(50) is None
    one = Latencies()
    one.add(3.0)
    assert one.percentile(99) == 3.0 and Latencies.merged([one, lat]).n == 5


def test_minute_counts_are_allocated_at_the_first_count_and_a_short_ring_forgets():
    counts = MinuteCounts(5)
    assert counts.at(0) == (0, 0) and counts.last_minutes(4, 600) == (0, 0)
    assert counts._minute is None  # nothing allocated before the first count
    counts.add(True, 60 * 100)
    counts.add(True, 60 * 104 + 1)
    assert counts.last_minutes(4, 60 * 104) == (2, 0)
    assert counts.last_minutes(4, 60 * 105) == (1, 0)  # minute 100 is gone
    assert len(counts.done) == 5


def test_minute_counts_sum_the_last_minutes():
    counts = MinuteCounts()
    for minute in range(10):
        counts.add(True, minute * 60 + 1)
    counts.add(False, 9 * 60 + 2)
    assert counts.last_minutes(4, 9 * 60 + 30) == (5, 1)


def test_the_chart_svg_escapes_and_draws_both_series():
    clock = FakeClock(60 * 5000)
    rates = JobRates(clock)
    rates.finished("done", "a")
    rates.finished("failed", "a")
    rates.acked(0.002)
    out: list[bytes] = []
    flattenString(None, charts(rates.series(60), "hour")).addCallback(out.append)
    svg = out[0].decode()
    assert svg.count("<svg") == 2 and 'id="chart-jobs-hour"' in svg and 'id="chart-ack-hour"' in svg
    assert svg.count("<polyline") == 2  # done and failed lines (latency: one point, a dot)
    assert "<circle" in svg and "1 done, 1 failed" in svg and "p50 2.0 ms" in svg
