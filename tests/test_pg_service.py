"""
The PostgreSQL spool end to end: the real C{twistd -n rawsvc} with
C{[service] spool = "postgresql://..."} on a throwaway server of the
test's own.  A job acknowledged over TCP is a row in PostgreSQL; after a
SIGKILL and a restart its flow resumes and delivers it.  With PostgreSQL
out of reach (at start, and stopped while running) jobs are refused with
the trigger's refusal text, C{/healthz} is 503, and the service recovers
by itself once the server is back.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from pg_support import PgServer, free_port
from test_spool_restart import Printer, start_twistd, wait_for

pytestmark = pytest.mark.slow

SECRET = "s3cret-pw"
PAYLOAD = bytes(b for b in range(256) if b != 10) * 400 + b"end"  # 100 KiB, no newline: stored in chunks


@pytest.fixture
def server():
    pg = PgServer()
    yield pg
    pg.destroy()


def with_password(uri: str) -> str:
    """The URI with a password (trust authentication ignores it): it must never show."""
    return uri.replace("postgresql://postgres@", f"postgresql://postgres:{SECRET}@", 1)


def write_config(tmp_path, uri: str, trigger_port: int, printer_port: int, admin_port: int) -> str:
    path = tmp_path / "rawsvc.toml"
    path.write_text(f"""
[service]
state_dir = "{tmp_path}/state"
spool = "{uri}"
stop_grace = 1

[admin.http]
listen = "tcp:{admin_port}:interface=127.0.0.1"

[[trigger]]
name = "labels"
type = "tcp"
listen = "tcp:{trigger_port}:interface=127.0.0.1"
execute_on = "delimiter"
delimiter = "\\n"
flow = "forward"
max_job_bytes = 0
refusal = "NO ${{reason}}\\n"

[[flow]]
name = "forward"

[[flow.actions]]
type = "reply"
data = "OK ${{job_id}}\\n"

[[flow.actions]]
type = "send_tcp"
destination = "127.0.0.1:{printer_port}"
retries = 100000
retry_delay = 0.1
max_retry_delay = 0.2
""")
    return str(path)


def send(port: int, data: bytes) -> bytes:
    """Send one job; the first line the service answers (b"" when it closed without one)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data + b"\n")
        buf = b""
        while b"\n" not in buf:
            chunk = sock.recv(4096)
            if not chunk:
                break
            buf += chunk
    return buf.split(b"\n", 1)[0]


def until_stored(port: int, data: bytes, timeout: float = 30) -> bytes:
    """Send C{data} until the service acknowledges it (the spool reopens every second); the OK line."""
    deadline = time.monotonic() + timeout
    while True:
        answer = send(port, data)
        if answer.startswith(b"OK "):
            return answer
        assert answer.startswith(b"NO spool unavailable: "), answer
        assert time.monotonic() < deadline, f"never stored: {answer!r}"
        time.sleep(0.2)


def healthz(port: int, body: list[bytes] | None = None) -> int:
    """The status of C{/healthz} (0: no answer); its body appended to C{body} when given."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            text, status = r.read(), r.status
    except urllib.error.HTTPError as e:
        text, status = e.read(), e.code
    except OSError:
        return 0
    if body is not None:
        body.append(text)
    return status


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def stop(service: subprocess.Popen) -> None:
    if service.poll() is None:
        service.terminate()
        try:
            service.wait(20)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()


def test_an_acknowledged_job_is_a_row_in_postgresql_and_resumes_after_a_sigkill(tmp_path, server):
    server.start()
    uri = with_password(server.new_database("svc"))
    trigger_port, printer_port, admin_port = free_port(), free_port(), free_port()
    config = write_config(tmp_path, uri, trigger_port, printer_port, admin_port)
    log_path = str(tmp_path / "twistd.log")
    service = start_twistd(config, log_path)
    printer = None
    try:
        wait_for(lambda: healthz(admin_port) == 200, 30, "the service to be healthy")
        answer = send(trigger_port, PAYLOAD)
        assert answer.startswith(b"OK "), answer
        job_id = answer[3:].decode()
        [(state, size, chunks, trigger)] = server.execute(
            uri, "SELECT state, size, chunks, trigger FROM rawsvc_jobs WHERE job_id = %s", (job_id,))
        assert (state, size, chunks, trigger) in {("running", len(PAYLOAD), 1, "labels"),
                                                  ("waiting", len(PAYLOAD), 1, "labels")}
        [(data,)] = server.execute(uri, "SELECT data FROM rawsvc_payload_chunks WHERE job_id = %s", (job_id,))
        assert bytes(data) == PAYLOAD  # the printer is down: the job waits in the database

        service.send_signal(signal.SIGKILL)
        service.wait(10)
        printer = Printer(printer_port)
        printer.start()
        service = start_twistd(config, log_path)
        wait_for(lambda: PAYLOAD in printer.received, 30, "the resumed job at the printer")
        wait_for(lambda: server.execute(uri, "SELECT state FROM rawsvc_jobs WHERE job_id = %s",
                                        (job_id,)) == [("done",)], 10, "the job done in PostgreSQL")
        nodes = server.execute(uri, "SELECT state FROM rawsvc_nodes ORDER BY started_at")
        assert [s for (s,) in nodes] == ["dead", "alive"]  # the killed process's incarnation, then this one
        stop(service)
        assert service.returncode in (0, -signal.SIGTERM)  # twistd ends with the signal it stopped for
        assert server.execute(uri, "SELECT state FROM rawsvc_nodes ORDER BY started_at")[-1] == ("left",)
        with open(log_path) as f:
            text = f.read()
        assert "spool open: postgresql://postgres@127.0.0.1" in text and SECRET not in text
    finally:
        stop(service)
        if printer is not None:
            printer.stopped = True
            printer.join(5)


def test_postgresql_out_of_reach_refuses_jobs_and_the_service_recovers(tmp_path, server):
    trigger_port, printer_port, admin_port = free_port(), free_port(), free_port()
    uri = with_password(server.uri("postgres"))  # the server is not started yet
    config = write_config(tmp_path, uri, trigger_port, printer_port, admin_port)
    log_path = str(tmp_path / "twistd.log")
    printer = Printer(printer_port)
    printer.start()
    service = start_twistd(config, log_path)
    try:
        wait_for(lambda: listening(trigger_port) and healthz(admin_port) == 503, 30, "a listening, unhealthy service")
        refused = send(trigger_port, b"too early")
        assert refused.startswith(b"NO spool unavailable: cannot open the spool at postgresql://postgres@127.0.0.1:"), \
            refused
        assert b"Connection refused" in refused

        server.start()
        first = until_stored(trigger_port, b"first job")
        assert healthz(admin_port) == 200  # a job stored since the last refusal
        wait_for(lambda: b"first job" in printer.received, 20, "the first job at the printer")

        server.stop("immediate")
        answers = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the first write after the loss fails; from then on, refusals
            answers.append(send(trigger_port, b"during the outage"))
            if answers[-1].startswith(b"NO "):
                break
            time.sleep(0.2)
        assert answers[-1].startswith(b"NO spool unavailable: "), answers
        assert all(not a.startswith(b"OK ") for a in answers), answers
        unhealthy: list[bytes] = []
        wait_for(lambda: healthz(admin_port, unhealthy) == 503, 10, "the service unhealthy during the outage")
        assert b"spool unavailable" in unhealthy[-1] and SECRET.encode() not in unhealthy[-1], unhealthy[-1]

        server.start()
        second = until_stored(trigger_port, b"second job")
        assert healthz(admin_port) == 200
        wait_for(lambda: b"second job" in printer.received, 20, "the second job at the printer")
        assert set(printer.received) == {b"first job", b"second job"}  # a refused job is never delivered
        both = {first[3:].decode(), second[3:].decode()}

        def done() -> set[str]:
            return {job_id for (job_id,) in server.execute(uri, "SELECT job_id FROM rawsvc_jobs WHERE state = 'done'")}

        # A job prints before its final state commits (in cluster mode the delivery row's result comes first).
        wait_for(lambda: both <= done(), 30, "both jobs done in PostgreSQL")
        with open(log_path) as f:
            text = f.read()
        assert "spool unavailable" in text and SECRET not in text
        assert all(SECRET.encode() not in a for a in [refused, *answers])
    finally:
        stop(service)
        printer.stopped = True
        printer.join(5)
