"""
Scenario: the durable acknowledgement's cost (issue 18's targets), from
C{bench/durable_rt.py}: rt-eof round trips with C{spool = false} and with the
default durable spool, at one client and at 32, and one measured fsync.
"""

from __future__ import annotations

import durable_rt


def run(ctx) -> dict:
    return durable_rt.measure(ctx.workdir, ctx.loadgen, ctx.duration, ctx.warmup)


def table(results: dict) -> tuple[list[str], list[dict]]:
    f = results["fsync"]["append_fdatasync_ms"]
    lines = ["", f"Durable acknowledgement (rt-eof, 1 KiB): spool = false vs the default spool; "
             f"one append + fdatasync here {f:.3f} ms", "",
             "| mode | clients | jobs/s | p50 ms | p99 ms | server CPU | CPU us/job |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for key, r in results.items():
        if key == "fsync":
            continue
        mode, clients = key.split("-")
        per_job = r["server_cpu"] / r["jobs_per_s"] * 1e6 if r["jobs_per_s"] else 0
        lines.append(f"| {mode} | {clients} | {r['jobs_per_s']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['server_cpu']:.0%} | {per_job:,.0f} |")
    m1, d1, m32, d32 = (results[k] for k in ("memory-1", "durable-1", "memory-32", "durable-32"))
    limit = m1["p50_ms"] + f + 0.2
    ratio = d32["jobs_per_s"] / m32["jobs_per_s"] if m32["jobs_per_s"] else None
    p99 = d32["p99_ms"] / m32["p99_ms"] if m32["p99_ms"] else None
    goals = [
        {"goal": "durable p50 at 1 client (ms)", "measured": d1["p50_ms"],
         "target": f"<= {limit:.2f} (memory {m1['p50_ms']:.2f} + fsync {f:.2f} + 0.2)", "met": d1["p50_ms"] <= limit},
        {"goal": "durable / memory jobs/s at 32 clients", "measured": ratio, "target": ">= 0.8",
         "met": None if ratio is None else ratio >= 0.8},
        {"goal": "durable / memory p99 at 32 clients", "measured": p99, "target": "<= 2",
         "met": None if p99 is None else p99 <= 2},
    ]
    return lines, goals
