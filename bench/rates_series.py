"""
The console day chart's cost: JobRates.series(1440, 10) over a full day (600 acks a minute spread over
13 octaves), best of 20; and the memory of 2,000 destination queues that each delivered once.
Run: .venv/bin/python bench/rates_series.py
"""
import random, time, tracemalloc
from rawsvc.rates import JobRates
from rawsvc.client.queues import DestinationQueue
random.seed(1)
t = [60.0 * 30_000]
rates = JobRates(lambda: t[0])
for m in range(1440):
    for _ in range(600):
        rates.acked(0.001 * 2 ** (random.random() * 13))
    rates.finished("done", "a")
    t[0] += 60
best = min((lambda s: (rates.series(1440, 10), time.perf_counter() - s)[1])(time.perf_counter()) for _ in range(20))
print(f"series(1440, 10): best of 20 {best * 1000:.1f} ms")
tracemalloc.start(); b = tracemalloc.get_traced_memory()[0]
qs = [DestinationQueue(f"10.0.{i // 250}.{i % 250}:9100") for i in range(2000)]
for q in qs: q.rate.add(True, time.time())
print(f"2000 queues: {(tracemalloc.get_traced_memory()[0] - b) / 1e6:.1f} MB")
