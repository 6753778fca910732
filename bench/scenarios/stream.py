"""
Scenario 3: one connection, 1,000,000 newline-framed 100-byte messages, a
one-action flow per message (C{set}); messages/s from connect to the EOF
rawsvc sends once every job is done.  Bare Twisted and asyncio line counters
beside it for scale.
"""

from __future__ import annotations

from harness import free_port, measured_load, start_python_baseline, start_rawsvc, wait_port
from scenarios import configs

SIZE = 100


def _one(ctx, server, port):
    try:
        wait_port(port, server)
        return measured_load(server, ctx.loadgen, 0, "stream", "127.0.0.1", port, ctx.messages, SIZE, timeout=900)
    finally:
        server.stop()


def run(ctx) -> dict:
    port = free_port()
    state = ctx.workdir / "rawsvc-stream" / "state"
    results = {"rawsvc": _one(ctx, start_rawsvc(ctx.workdir, "rawsvc-stream", configs.stream(str(state), port)), port)}
    port = free_port()
    results["twisted"] = _one(ctx, start_python_baseline(ctx.workdir, "twisted-stream", "twisted_server.py", port, "count"), port)
    port = free_port()
    results["asyncio"] = _one(ctx, start_python_baseline(ctx.workdir, "asyncio-stream", "asyncio_server.py", port, "count"), port)
    return results
