"""
Durable jobs/s: the same flow with and without the spool, in one run.

    .venv/bin/python bench/spool_bench.py [--jobs 20000] [--connections 64] [--window 16]

Starts the real C{twistd -n rawsvc} twice (C{[service] spool = false}, then
C{spool = true}, fsync on: every acknowledged job is committed with
C{synchronous=FULL} before its flow runs), each time with a TCP trigger whose
flow answers C{OK ${job_id}}: the acknowledgement round trip.  An asyncio
client keeps C{--connections} connections busy, each with C{--window} jobs
in flight, and counts acknowledged jobs per second.  Prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"

CONFIG = """
[service]
state_dir = "{state}"
spool = {spool}

[[trigger]]
name = "bench"
type = "tcp"
listen = "tcp:{port}:interface=127.0.0.1"
execute_on = "delimiter"
delimiter = "\\n"
flow = "ack"
max_connections = 1000

[[flow]]
name = "ack"
actions = [ {{ type = "reply", data = "OK ${{job_id}}\\n" }} ]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def connection(port: int, jobs: int, window: int, payload: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    done = 0
    while done < jobs:
        n = min(window, jobs - done)
        writer.write(payload * n)
        for _ in range(n):
            line = await reader.readline()
            if not line.startswith(b"OK "):
                raise RuntimeError(f"unexpected answer {line!r}")
        done += n
    writer.close()
    await writer.wait_closed()
    return done


async def drive(port: int, jobs: int, connections: int, window: int) -> float:
    payload = b"^XA^FO50,50^A0N,40,40^FDSKU-0001 x 4^FS^XZ\n"
    await connection(port, 200, window, payload)  # warm up
    per = jobs // connections
    start = time.perf_counter()
    counts = await asyncio.gather(*(connection(port, per, window, payload) for _ in range(connections)))
    return sum(counts) / (time.perf_counter() - start)


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("twistd exited; see its log")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("twistd did not listen in time")


def run_mode(spool: bool, args, workdir: str) -> float:
    port = free_port()
    state = os.path.join(workdir, f"state-{spool}")
    config = os.path.join(workdir, f"rawsvc-{spool}.toml")
    with open(config, "w") as f:
        f.write(CONFIG.format(state=state, spool=str(spool).lower(), port=port))
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = open(os.path.join(workdir, f"twistd-{spool}.log"), "wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "--logfile=-", "rawsvc", "--config", config],
        cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_listening(port, proc)
        return asyncio.run(drive(port, args.jobs, args.connections, args.window))
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--window", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rawsvc-bench-") as workdir:
        plain = run_mode(False, args, workdir)
        durable = run_mode(True, args, workdir)
    print(f"{args.jobs} jobs, {args.connections} connections x {args.window} in flight, flow: reply OK ${{job_id}}")
    print(f"{'mode':34} {'jobs/s':>10}")
    print(f"{'spool = false (in memory)':34} {plain:>10,.0f}")
    print(f"{'spool = true (durable, fsync on)':34} {durable:>10,.0f}")
    print(f"{'durable / in memory':34} {durable / plain:>10.2f}   (goal >= 0.70)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
