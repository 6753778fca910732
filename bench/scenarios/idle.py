"""
Scenario 4: 10,000 connections held open; the service's RSS (VmRSS) once
it holds them all (counted in /proc/PID/fd), and before.  A bare Twisted
protocol holding the same connections beside it.
"""

from __future__ import annotations

import subprocess
import time

from harness import LOAD_CPU, free_port, raise_nofile, start_python_baseline, start_rawsvc, taskset, wait_port
from scenarios import configs


def _hold(ctx, server, port) -> dict:
    try:
        wait_port(port, server)
        time.sleep(0.3)
        before, fds0 = server.rss, server.open_fds()
        p = subprocess.Popen(taskset(LOAD_CPU) + [str(ctx.loadgen), "idle", "127.0.0.1", str(port), str(ctx.idle), "120"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, preexec_fn=raise_nofile)
        try:
            ready = p.stdout.readline()
            opened = int(ready.split(":")[1].strip(" }\n")) if "ready" in ready else 0
            deadline = time.monotonic() + 30
            while server.open_fds() - fds0 < opened and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(1.0)
            held = server.open_fds() - fds0
            return {"connections": opened, "held_by_server": held, "rss_before": before,
                    "rss": server.rss, "peak_rss": server.peak_rss,
                    "per_connection_kb": round((server.rss - before) / max(held, 1) / 1024, 2)}
        finally:
            p.stdin.close()
            p.wait(30)
    finally:
        server.stop()


def run(ctx) -> dict:
    port = free_port()
    state = ctx.workdir / "rawsvc-idle" / "state"
    results = {"rawsvc": _hold(ctx, start_rawsvc(ctx.workdir, "rawsvc-idle", configs.idle(str(state), port, ctx.idle + 100)), port)}
    port = free_port()
    results["twisted"] = _hold(ctx, start_python_baseline(ctx.workdir, "twisted-idle", "twisted_server.py", port, "line"), port)
    return results
