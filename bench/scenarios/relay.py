"""
Scenario 2: relay one 1 GiB job to a sink that discards.

rawsvc stores the job (it spills to a file in state_dir) and forwards it
with C{send_tcp} (store and forward); socat relays the same bytes between
the same kind of ports as they arrive (cut-through, default options).  MB/s
(1 GiB / time from connect to the client's EOF) and peak RSS (VmHWM).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time

from harness import LOAD_CPU, Proc, free_port, measured_load, start_rawsvc, taskset, wait_port


def _sink(ctx, port):
    p = subprocess.Popen(taskset(LOAD_CPU) + [str(ctx.loadgen), "sink", str(port)],
                         stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if "listening" not in line:
        raise RuntimeError("sink did not start")
    return p


def _received(sink) -> int:
    sink.terminate()
    out, _ = sink.communicate(timeout=10)
    got = [json.loads(l)["received"] for l in out.splitlines() if "received" in l]
    return max(got, default=0)


class _PeakWatch(threading.Thread):
    """Reads VmHWM every 20 ms while the process lives (socat exits at the end of its one relay)."""

    def __init__(self, proc) -> None:
        super().__init__(daemon=True)
        self.proc, self.peak, self.done = proc, 0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.peak = max(self.peak, self.proc.peak_rss)
            except OSError:
                return
            time.sleep(0.02)


def _one(ctx, name, start):
    sink_port, port = free_port(), free_port()
    sink = _sink(ctx, sink_port)
    server = start(sink_port, port)
    try:
        wait_port(port, server)
        time.sleep(0.2)
        base = server.rss
        watch = _PeakWatch(server)
        watch.start()
        r = measured_load(server, ctx.loadgen, 0, "blast", "127.0.0.1", port, ctx.relay_bytes, timeout=900)
        time.sleep(0.3)  # the sink sees EOF just after the client does
        watch.done.set()
        watch.join()
        r["peak_rss"] = max(watch.peak, server.peak_rss if server.alive() else 0)
        r["start_rss"] = base
    finally:
        server.stop()
        r_sink = _received(sink)
    r["sink_received"] = r_sink
    r["complete"] = r_sink == ctx.relay_bytes
    return r


def run(ctx) -> dict:
    results = {}

    def rawsvc(sink_port, port):
        state = ctx.workdir / "rawsvc-relay" / "state"
        from scenarios import configs

        return start_rawsvc(ctx.workdir, "rawsvc-relay", configs.relay(str(state), port, sink_port))

    results["rawsvc"] = _one(ctx, "rawsvc", rawsvc)
    if shutil.which("socat"):
        def socat(sink_port, port):
            return Proc("socat-relay", ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr",
                                        f"TCP:127.0.0.1:{sink_port}"], ctx.workdir)

        results["socat"] = _one(ctx, "socat", socat)
    else:
        results["socat"] = {"skipped": "socat not installed"}
    return results
