"""
The durable acknowledgement against the in-memory one, and what one fsync costs.

    .venv/bin/python bench/durable_rt.py [--duration 8] [--warmup 2] [--json out.json]

Runs the round trip of C{bench/run.py}'s C{rt-eof} scenario (connect, 1 KiB,
half-close, read C{OK}, close; server pinned to core 0, the C load generator on
core 1) with C{[service] spool = false} and with the default durable spool, at
one client and at 32, in one run; and a microbenchmark of one fsync: a
small record appended to a file in the state_dir's filesystem, then
C{os.fdatasync} (the journal's cost per batch), and the same for C{os.fsync}.
Prints the issue's targets beside the figures:

- durable p50 at one client <= in-memory p50 + one fsync + 0.2 ms
- durable jobs/s at 32 clients >= 0.8x in memory, p99 <= 2x in memory
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import build_loadgen, free_port, measured_load, start_rawsvc, wait_port  # noqa: E402
from scenarios import configs  # noqa: E402


def fsync_cost(directory: str, n: int = 400, size: int = 1200) -> dict:
    """Median ms of a C{size}-byte append + fdatasync (and + fsync), in C{directory}."""
    out = {}
    record = os.urandom(size)
    for name, sync in (("fdatasync", os.fdatasync), ("fsync", os.fsync)):
        path = os.path.join(directory, f"fsync-bench-{name}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        try:
            times = []
            for _ in range(n):
                t = time.perf_counter()
                os.write(fd, record)
                sync(fd)
                times.append(time.perf_counter() - t)
        finally:
            os.close(fd)
            os.unlink(path)
        out[f"append_{name}_ms"] = round(statistics.median(times) * 1000, 3)
    return out


def round_trip(workdir: Path, loadgen: Path, spool: bool, clients: int, duration: float, warmup: float) -> dict:
    name = f"rt-{'durable' if spool else 'memory'}-{clients}"
    state = workdir / name / "state"
    port = free_port()
    server = start_rawsvc(workdir, name, configs.reply_ok(str(state), port, False, spool=spool))
    try:
        wait_port(port, server)
        return measured_load(server, loadgen, warmup, "rt", "127.0.0.1", port, clients, 1024, duration, warmup,
                             "eof")
    finally:
        server.stop()


def measure(workdir: Path, loadgen: Path, duration: float, warmup: float) -> dict:
    """The fsync's cost, then memory and durable round trips at 1 and 32 clients (bench/run.py's durable-rt)."""
    results: dict = {"fsync": fsync_cost(str(workdir))}
    for clients in (1, 32):
        for spool in (False, True):
            results[f"{'durable' if spool else 'memory'}-{clients}"] = round_trip(
                workdir, loadgen, spool, clients, duration, warmup)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rawsvc-durable-rt-") as tmp:
        workdir = Path(tmp)
        results = measure(workdir, build_loadgen(workdir), args.duration, args.warmup)
    f = results["fsync"]["append_fdatasync_ms"]
    print(f"one append + fdatasync: {f:.3f} ms   (+ fsync: {results['fsync']['append_fsync_ms']:.3f} ms)")
    print(f"{'mode':<12} {'clients':>7} {'jobs/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'cpu':>6} {'cpu us/job':>10}")
    for key, r in results.items():
        if key == "fsync":
            continue
        mode, clients = key.split("-")
        print(f"{mode:<12} {clients:>7} {r['jobs_per_s']:>9,.0f} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} "
              f"{r['server_cpu']:>6.2f} {r['server_cpu'] / r['jobs_per_s'] * 1e6 if r['jobs_per_s'] else 0:>10.0f}")
    m1, d1, m32, d32 = (results[k] for k in ("memory-1", "durable-1", "memory-32", "durable-32"))
    limit = m1["p50_ms"] + f + 0.2
    print("targets:")
    print(f"  p50 at 1 client: {d1['p50_ms']:.3f} ms <= {limit:.3f} ms (memory + fsync + 0.2): "
          f"{'met' if d1['p50_ms'] <= limit else 'NOT met'}")
    ratio = d32["jobs_per_s"] / m32["jobs_per_s"]
    print(f"  jobs/s at 32: {ratio:.2f}x memory (>= 0.8): {'met' if ratio >= 0.8 else 'NOT met'}")
    p99 = d32["p99_ms"] / m32["p99_ms"] if m32["p99_ms"] else float("inf")
    print(f"  p99 at 32: {p99:.2f}x memory (<= 2): {'met' if p99 <= 2 else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
