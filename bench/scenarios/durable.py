"""
Scenario 5: durable jobs (C{[service] spool = true}, fsync on) beside the
same flow without the spool.  The spool is being written elsewhere; its
benchmark, C{bench/spool_bench.py}, is called when it exists:
C{python bench/spool_bench.py --duration S --json FILE} is expected to write
a JSON object; until then the scenario reports "pending".
"""

from __future__ import annotations

import json
import subprocess
import sys

from harness import BENCH, python_env


def run(ctx) -> dict:
    script = BENCH / "spool_bench.py"
    if not script.exists():
        return {"pending": "rawsvc/spool is not written yet (bench/spool_bench.py does not exist)"}
    out_file = ctx.workdir / "spool_bench.json"
    p = subprocess.run([sys.executable, str(script), "--duration", str(ctx.duration), "--json", str(out_file)],
                       capture_output=True, text=True, env=python_env(), timeout=900)
    result: dict = {"returncode": p.returncode, "output": p.stdout[-4000:]}
    if p.returncode != 0:
        result["pending"] = f"bench/spool_bench.py failed: {p.stderr.strip().splitlines()[-1:]}"
    if out_file.exists():
        try:
            result.update(json.loads(out_file.read_text()))
        except ValueError:
            pass
    return result
