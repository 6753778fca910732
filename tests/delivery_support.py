"""
Helpers for the delivery tests (issue 12, items 2 and 3): a real
C{twistd -n rawsvc} in a subprocess, a threaded printer that can be slow,
down (refusing) or silent (its accept queue full, so SYNs are dropped), and
the CLI and HTTP views of the spool.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request

from test_spool_restart import free_port, rawsvc, start_twistd  # noqa: F401  (re-exported)


class Printer(threading.Thread):
    """
    One job per connection, read until EOF, C{delay} seconds between jobs.  Starts
    down (nothing listens: connections are refused) unless C{listen()} is
    called; C{blackhole()} listens without accepting, with the accept queue
    filled, so further SYNs are dropped and connecting times out.
    """

    def __init__(self, port: int, delay: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.port, self.delay = port, delay
        self.received: list[bytes] = []
        self.listener: socket.socket | None = None
        self.accepting = threading.Event()
        self.stopped = False
        self._fillers: list[socket.socket] = []

    def _bind(self, backlog: int) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(backlog)
        s.settimeout(0.1)
        self.listener = s

    def listen(self) -> "Printer":
        if self.listener is None:
            self._bind(1)  # a slow printer stays slow: the kernel takes few connections ahead
        for f in self._fillers:
            f.close()
        self._fillers = []
        self.accepting.set()
        if not self.is_alive():
            self.start()
        return self

    def blackhole(self) -> "Printer":
        self._bind(0)
        for _ in range(3):
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(("127.0.0.1", self.port))
            self._fillers.append(f)
        time.sleep(0.1)
        return self

    def run(self) -> None:
        while not self.stopped:
            assert self.listener is not None
            try:
                conn, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            with conn:
                conn.settimeout(10)
                chunks = []
                try:
                    while data := conn.recv(65536):
                        chunks.append(data)
                except OSError:
                    pass
                if chunks:  # the fillers of blackhole() send nothing
                    self.received.append(b"".join(chunks))
            time.sleep(self.delay)

    def stop(self) -> None:
        self.stopped = True
        if self.is_alive():
            self.join(5)
        if self.listener is not None:
            self.listener.close()
        for f in self._fillers:
            f.close()


def write_config(tmp_path, trigger_port: int, destination: str, send: str = "", service: str = "",
                 http_port: int | None = None) -> str:
    """One tcp trigger, a flow [reply OK ${job_id}, send_tcp]; its on_error writes into tmp_path/errors."""
    path = tmp_path / "rawsvc.toml"
    admin = f'[admin.http]\nlisten = "tcp:{http_port}:interface=127.0.0.1"\n' if http_port else ""
    path.write_text(f"""
[service]
state_dir = "{tmp_path}/state"
{service}

{admin}
[[trigger]]
name = "labels"
type = "tcp"
listen = "tcp:{trigger_port}:interface=127.0.0.1"
execute_on = "delimiter"
delimiter = "\\n"
flow = "forward"
max_connections = 1000   # a connection counts until its job's flow ends

[[flow]]
name = "forward"

[[flow.actions]]
type = "reply"
data = "OK ${{job_id}}\\n"

[[flow.actions]]
type = "send_tcp"
destination = "{destination}"
connect_timeout = 0.3
{send if "retry_delay" in send else "retry_delay = 0.1" + chr(10) + "max_retry_delay = 0.5" + chr(10) + send}

[[flow.on_error]]
type = "file"
folder = "{tmp_path}/errors"
data = "${{error}}"
""")
    return str(path)


def send_job(port: int, payload: bytes, timeout: float = 20) -> str:
    """Send one job on its own connection; the job id its OK names."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    with sock:
        sock.sendall(payload + b"\n")
        buf = b""
        while b"\n" not in buf:
            data = sock.recv(65536)
            if not data:
                break
            buf += data
    line = buf.decode()
    assert line.startswith("OK ") and line.endswith("\n"), line
    return line[3:-1]


def send_jobs(port: int, payloads: list[bytes]) -> list[str]:
    """One connection per job (a connection's replies wait for its jobs' flows), in order."""
    return [send_job(port, p) for p in payloads]


def jobs(state_dir: str) -> dict[str, dict]:
    out = rawsvc("jobs", "--state-dir", state_dir, "--json", "--limit", "0")
    assert out.returncode == 0, out.stderr
    return {j["job_id"]: j for j in map(json.loads, out.stdout.splitlines())}


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def http_get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.read()


def stop(service, sig) -> int:
    """Signal twistd; its exit status (after a clean stop twistd ends by the same signal: -sig)."""
    service.send_signal(sig)
    return service.wait(30)


def first_seen(received: list[bytes]) -> list[bytes]:
    seen: list[bytes] = []
    for data in received:
        if data not in seen:
            seen.append(data)
    return seen
