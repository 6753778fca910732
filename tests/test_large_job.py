"""A 1 GiB job passes through the real service with flat memory."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from pg_support import free_port as _free_port
from support import recv_all

GIB = 1 << 30


def _rss_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_one_gib_job_streams_with_flat_memory(tmp_path):
    port = _free_port()
    config = tmp_path / "rawsvc.toml"
    config.write_text(
        f"""
[service]
state_dir = "{tmp_path}/state"
spool = false

[[trigger]]
name = "big"
type = "tcp"
listen = "tcp:{port}:interface=127.0.0.1"
flow = "size"

[[flow]]
name = "size"
actions = [ {{ type = "reply", data = "SIZE ${{size}}\\n" }} ]
"""
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "twistd"), "-n", "--pidfile=", "rawsvc", "--config", str(config)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "service did not start"
                time.sleep(0.1)
        baseline = _rss_kib(proc.pid, "VmRSS")
        chunk = os.urandom(1 << 20)
        for _ in range(GIB // len(chunk)):
            s.sendall(chunk)
        s.shutdown(socket.SHUT_WR)
        reply = recv_all(s, timeout=60)
        s.close()
        peak = _rss_kib(proc.pid, "VmHWM")
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0].decode()
    assert reply == f"SIZE {GIB}\n".encode()
    growth_mib = (peak - baseline) / 1024
    print(f"1 GiB job: RSS at start {baseline / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB")
    assert growth_mib < 64, f"memory grew by {growth_mib:.0f} MiB for a 1 GiB job"
    assert "Traceback" not in out
    assert not os.listdir(tmp_path / "state" / "tmp")  # the spill file is gone
