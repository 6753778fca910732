"""
Scenario 5: durable jobs (C{[service] spool = true}, fsync on) beside the
same flow without the spool.  The spool's own benchmark, C{bench/spool_bench.py}
(written with the spool), runs both in one go and prints a small table; this
scenario runs it, keeps its output and reads its figures.  Until it exists the
scenario reports "pending".  (It drives the service with its own asyncio
client, unpinned: its ratio is what to read, not its absolute jobs/s.)
"""

from __future__ import annotations

import re
import subprocess
import sys

from harness import BENCH, python_env


def run(ctx) -> dict:
    script = BENCH / "spool_bench.py"
    if not script.exists():
        return {"pending": "rawsvc/spool is not written yet (bench/spool_bench.py does not exist)"}
    try:
        p = subprocess.run([sys.executable, str(script), "--jobs", str(ctx.durable_jobs)],
                           capture_output=True, text=True, env=python_env(), timeout=900)
    except subprocess.TimeoutExpired:
        return {"pending": "bench/spool_bench.py did not finish within 900 s"}
    result: dict = {"returncode": p.returncode, "output": p.stdout[-4000:]}
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["?"])[-1]
        result["pending"] = f"bench/spool_bench.py failed: {tail}"
        return result

    def figure(label: str):
        m = re.search(re.escape(label) + r"\s+([\d,.]+)", p.stdout)
        return float(m.group(1).replace(",", "")) if m else None

    result["plain_jobs_per_s"] = figure("spool = false (in memory)")
    result["durable_jobs_per_s"] = figure("spool = true (durable, fsync on)")
    result["ratio"] = figure("durable / in memory")
    return result
