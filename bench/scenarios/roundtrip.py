"""
Scenario 1: job round trip, 32 concurrent clients, fixed duration.

C{eof}: connect, send 1 KiB, half-close, read the OK reply to EOF, close.
C{line}: connect, send 1 KiB + '\\n', read one reply line, close.
rawsvc (tcp trigger -> reply) against a bare Twisted protocol and a bare
asyncio server; the line variant also against Node-RED 4.
"""

from __future__ import annotations

from harness import free_port, measured_load, start_python_baseline, start_rawsvc, wait_port
from scenarios import configs, nodered

CONCURRENCY = 32
SIZE = 1024


def _measure(ctx, server, port, variant):
    try:
        wait_port(port, server)
        return measured_load(server, ctx.loadgen, ctx.warmup, "rt", "127.0.0.1", port, CONCURRENCY,
                             SIZE, ctx.duration, ctx.warmup, variant)
    finally:
        server.stop()


def run(ctx, variant: str) -> dict:
    line = variant == "line"
    results: dict = {}
    port = free_port()
    state = ctx.workdir / f"rawsvc-rt-{variant}" / "state"
    results["rawsvc"] = _measure(
        ctx, start_rawsvc(ctx.workdir, f"rawsvc-rt-{variant}", configs.reply_ok(str(state), port, line)), port, variant)
    mode = "line" if line else "eof"
    port = free_port()
    results["twisted"] = _measure(
        ctx, start_python_baseline(ctx.workdir, f"twisted-rt-{variant}", "twisted_server.py", port, mode), port, variant)
    port = free_port()
    results["asyncio"] = _measure(
        ctx, start_python_baseline(ctx.workdir, f"asyncio-rt-{variant}", "asyncio_server.py", port, mode), port, variant)
    if line:
        port = free_port()
        server, why = nodered.start(ctx, port)
        results["node-red"] = _measure(ctx, server, port, variant) if server else {"skipped": why}
    return results
