"""
The spool's promise, end to end: the real C{twistd -n rawsvc} in a
subprocess takes 1,000 jobs for a printer that is down, is killed with
SIGKILL midway, restarts; then the printer comes up and receives every
acknowledged job, byte-identical, in order, and C{rawsvc jobs} shows them
done.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROOT

pytestmark = pytest.mark.skipif(
    not os.path.exists(os.path.join(ROOT, "rawsvc", "actions", "send_tcp.py")),
    reason="the send_tcp action has not landed yet",
)

JOBS = 1000
CLIENTS = 4
KILL_AT = JOBS // 2
#: The real twistd, run by this interpreter (the venv's).
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


def free_port() -> int:
    """L{pg_support.free_port}: never the same port twice in one run."""
    from pg_support import free_port as _free_port

    return _free_port()


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    return e


def start_twistd(config: str, log_path: str) -> subprocess.Popen:
    log = open(log_path, "ab")
    return subprocess.Popen(
        [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "--logfile=-", "rawsvc", "--config", config],
        cwd=os.path.dirname(config), env=env(), stdout=log, stderr=subprocess.STDOUT,
    )


def rawsvc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rawsvc", *args], env=env(), capture_output=True, timeout=30)


def payload_for(client: int, i: int) -> bytes:
    body = f"client {client} job {i:04d} ".encode()
    if i % 100 == 7:  # a few larger than the database's blob limit: spool files
        body += bytes(range(33, 127)) * 1000
    return body + b"\x00\x01\xfe\xff end"


class Client(threading.Thread):
    """Sends its jobs one at a time, each waiting for its OK; reconnects and resends while the service is down."""

    def __init__(self, number: int, port: int, count: int, progress) -> None:
        super().__init__(daemon=True)
        self.number, self.port, self.count, self.progress = number, port, count, progress
        self.acked: list[tuple[int, str]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:  # reported by the test
            self.error = e

    def _run(self) -> None:
        # One job per connection: a connection's replies go out in job order,
        # so a second job's OK would wait for the first job's whole flow.
        i = 0
        deadline = time.monotonic() + 60
        while i < self.count and time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                    sock.sendall(payload_for(self.number, i) + b"\n")
                    buf = b""
                    while b"\n" not in buf:
                        data = sock.recv(4096)
                        if not data:
                            raise ConnectionError("closed before the OK")
                        buf += data
            except OSError:
                time.sleep(0.05)
                continue
            line = buf.split(b"\n", 1)[0]
            assert line.startswith(b"OK "), line
            self.acked.append((i, line[3:].decode()))
            self.progress()
            i += 1


class Printer(threading.Thread):
    """A plain listener: one job per connection, read until EOF."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", port))
        self.listener.settimeout(0.2)
        self.received: list[bytes] = []
        self.stopped = False

    def run(self) -> None:
        while not self.stopped:
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(10)
                chunks = []
                while data := conn.recv(65536):
                    chunks.append(data)
                self.received.append(b"".join(chunks))
        self.listener.close()


def write_config(tmp_path, trigger_port: int, printer_port: int) -> str:
    path = tmp_path / "rawsvc.toml"
    path.write_text(f"""
[service]
state_dir = "{tmp_path}/state"

[[trigger]]
name = "labels"
type = "tcp"
listen = "tcp:{trigger_port}:interface=127.0.0.1"
execute_on = "delimiter"
delimiter = "\\n"
flow = "forward"
max_job_bytes = 0
max_connections = 5000   # a connection stays open until its job's flow ends

[[flow]]
name = "forward"

[[flow.actions]]
type = "reply"
data = "OK ${{job_id}}\\n"

[[flow.actions]]
type = "send_tcp"
destination = "127.0.0.1:{printer_port}"
retries = 100000
retry_delay = 0.05
max_retry_delay = 0.2
""")
    return str(path)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def jobs_json(state_dir: str) -> list[dict]:
    out = rawsvc("jobs", "--state-dir", state_dir, "--json", "--limit", "0")
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_sigkill_loses_no_acknowledged_job(tmp_path):
    started = time.monotonic()
    trigger_port, printer_port = free_port(), free_port()
    config = write_config(tmp_path, trigger_port, printer_port)
    log_path = str(tmp_path / "twistd.log")
    state_dir = str(tmp_path / "state")
    acked = [0]
    lock = threading.Lock()
    killed = threading.Event()

    service = start_twistd(config, log_path)
    try:
        def progress() -> None:
            with lock:
                acked[0] += 1
                if acked[0] == KILL_AT:
                    service.send_signal(signal.SIGKILL)
                    killed.set()

        clients = [Client(n, trigger_port, JOBS // CLIENTS, progress) for n in range(CLIENTS)]
        for c in clients:
            c.start()
        assert killed.wait(60), "the service never acknowledged half the jobs"
        service.wait(10)
        assert service.returncode == -signal.SIGKILL
        service = start_twistd(config, log_path)
        for c in clients:
            c.join(70)
            assert c.error is None, c.error
            assert len(c.acked) == JOBS // CLIENTS, f"client {c.number}: {len(c.acked)} acked"

        states = {j["state"] for j in jobs_json(state_dir)}
        assert states <= {"queued", "running", "waiting"}, states  # the printer is still down

        printer = Printer(printer_port)
        printer.start()
        try:
            expected = {payload_for(c.number, i) for c in clients for i, _ in c.acked}
            wait_for(lambda: expected <= set(printer.received), 60, "every acknowledged job at the printer")
        finally:
            printer.stopped = True
            printer.join(5)

        # Per-destination order: each client's jobs arrive in the order it sent them.
        for c in clients:
            seen: list[int] = []
            for data in printer.received:
                prefix = f"client {c.number} job ".encode()
                if data.startswith(prefix):
                    n = int(data[len(prefix):len(prefix) + 4])
                    if n not in seen:
                        seen.append(n)
            assert seen == sorted(seen), f"client {c.number}: out of order"
            assert seen == list(range(c.count))

        ids = {job_id for c in clients for _, job_id in c.acked}
        wait_for(lambda: all(j["state"] == "done" for j in jobs_json(state_dir)), 10, "every job done")
        listed = {j["job_id"] for j in jobs_json(state_dir)}
        assert ids <= listed
        print(f"\nacked {sum(len(c.acked) for c in clients)}, delivered {len(printer.received)} "
              f"(duplicates {len(printer.received) - len(set(printer.received))}), "
              f"{time.monotonic() - started:.1f} s")
    finally:
        if service.poll() is None:
            service.terminate()
            try:
                service.wait(20)
            except subprocess.TimeoutExpired:
                service.kill()
                service.wait()
