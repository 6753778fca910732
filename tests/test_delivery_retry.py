"""
Issue 12, item 3: a spooled delivery is never dropped while its printer is
off, silent or unnamed: it waits (visibly, in C{rawsvc jobs}, C{/jobs} and
C{/metrics}) and is printed, once and in order, when the printer is back;
an operator's cancel or retry of a waiting job acts at once.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error

from delivery_support import (
    Printer, free_port, http_get, jobs, rawsvc, send_jobs, start_twistd, wait_for, write_config,
)

#: Seconds the printer stays away (main gave up after ~1.5 s with these back-off settings).
OUTAGE = 8.0


def _payloads(n: int) -> list[bytes]:
    return [f"label {i} ".encode() + bytes(range(128, 256)) for i in range(n)]


def _waiting_row(state_dir: str, job_id: str, attempt: int) -> dict:
    """The job's row once it waits after at least C{attempt} attempts (between attempts it is running)."""
    rows: list[dict] = []

    def waiting() -> bool:
        row = jobs(state_dir)[job_id]
        rows.append(row)
        return row["state"] == "waiting" and row["delivery_attempt"] >= attempt

    wait_for(waiting, 15, f"job {job_id} waiting after {attempt} attempts")
    return rows[-1]


def _stop(service) -> None:
    if service.poll() is None:
        service.terminate()
        service.wait(30)


def test_a_printer_that_refuses_for_a_while_gets_every_job_once_in_order(tmp_path):
    trigger_port, printer_port, http_port = free_port(), free_port(), free_port()
    dest = f"127.0.0.1:{printer_port}"
    config = write_config(tmp_path, trigger_port, dest, http_port=http_port)
    state_dir = str(tmp_path / "state")
    printer = Printer(printer_port)  # off: refused
    service = start_twistd(config, str(tmp_path / "twistd.log"))
    try:
        t0 = time.monotonic()
        payloads = _payloads(5)
        ids = send_jobs(trigger_port, payloads)
        head = ids[0]
        row = _waiting_row(state_dir, head, 2)
        assert row["last_error"].startswith(f"connection refused by {dest}")
        assert row["next_try"] > time.time() - 1
        listing = rawsvc("jobs", "--state-dir", state_dir).stdout.decode()
        line = next(x for x in listing.splitlines() if x.startswith(head))
        assert " waiting " in line and "next try" in line and "connection refused" in line, line
        assert {jobs(state_dir)[i]["state"] for i in ids[1:]} == {"running"}  # behind it, in the queue

        listed = json.loads(http_get(http_port, "/jobs?state=waiting"))["jobs"]
        assert [j["job_id"] for j in listed] == [head]
        assert listed[0]["delivery"]["destination"] == dest and listed[0]["delivery"]["attempt"] >= 1
        metrics = http_get(http_port, "/metrics").decode()
        assert f'rawsvc_destination_waiting{{destination="{dest}"}} 1' in metrics
        page = http_get(http_port, "/").decode()
        assert f"<td>{dest}</td><td>waiting</td>" in page.replace("\n", ""), page  # the destination's state

        time.sleep(max(0.0, OUTAGE - (time.monotonic() - t0)))
        assert jobs(state_dir)[head]["state"] in ("waiting", "running")  # not given up (running: an attempt)
        printer.listen()
        wait_for(lambda: len(printer.received) >= len(payloads), 15, "every job at the printer")
        wait_for(lambda: all(jobs(state_dir)[i]["state"] == "done" for i in ids), 10, "every job done")
        assert printer.received == payloads  # once each, in order, byte-identical
        assert len(jobs(state_dir)) == len(ids)  # one row per job, whatever its retries
        assert jobs(state_dir)[head]["last_error"] is None
        print(f"\nsent {len(payloads)}, acknowledged {len(ids)}, printed {len(printer.received)}, "
              f"repeated 0, lost 0, outage {OUTAGE:g} s, {time.monotonic() - t0:.1f} s")
    finally:
        _stop(service)
        printer.stop()


def test_a_printer_that_never_answers_syn_gets_every_job_when_it_is_back(tmp_path):
    trigger_port, printer_port = free_port(), free_port()
    config = write_config(tmp_path, trigger_port, f"127.0.0.1:{printer_port}")
    state_dir = str(tmp_path / "state")
    printer = Printer(printer_port).blackhole()  # accept queue full: SYNs dropped
    service = start_twistd(config, str(tmp_path / "twistd.log"))
    try:
        payloads = _payloads(3)
        ids = send_jobs(trigger_port, payloads)
        row = _waiting_row(state_dir, ids[0], 3)
        assert "timed out after 0.3 s" in row["last_error"], row
        printer.listen()
        wait_for(lambda: all(jobs(state_dir)[i]["state"] == "done" for i in ids), 15, "every job done")
        assert printer.received == payloads
    finally:
        _stop(service)
        printer.stop()


def test_a_failed_lookup_waits_and_cancel_ends_it_at_once(tmp_path):
    trigger_port = free_port()
    dest = "printer.invalid:9100"
    config = write_config(tmp_path, trigger_port, dest, service=f'allowed_destinations = ["{dest}"]',
                          send="retry_delay = 30\nmax_retry_delay = 60")
    state_dir = str(tmp_path / "state")
    service = start_twistd(config, str(tmp_path / "twistd.log"))
    try:
        job_id, behind = send_jobs(trigger_port, [b"to nowhere", b"behind it"])
        wait_for(lambda: jobs(state_dir)[job_id]["state"] == "waiting", 10, "the job waiting")
        assert jobs(state_dir)[job_id]["last_error"].startswith("cannot resolve 'printer.invalid'")
        assert jobs(state_dir)[behind]["delivery_attempt"] == 0  # queued behind it
        t0 = time.monotonic()
        out = rawsvc("cancel", "--state-dir", state_dir, job_id)
        assert out.returncode == 0, out.stderr
        wait_for(lambda: jobs(state_dir)[job_id]["state"] == "cancelled", 5, "the job cancelled")
        assert time.monotonic() - t0 < 10  # read within a second, not after the 30 s wait (slack for a loaded machine)
        # The printer's queue moves on: the next job makes its first attempt (and waits in turn).
        wait_for(lambda: jobs(state_dir)[behind]["state"] == "waiting", 5, "the next job's attempt")
    finally:
        _stop(service)


def test_retry_of_a_waiting_job_tries_again_at_once(tmp_path):
    trigger_port, printer_port = free_port(), free_port()
    config = write_config(tmp_path, trigger_port, f"127.0.0.1:{printer_port}",
                          send="retry_delay = 60\nmax_retry_delay = 60")
    state_dir = str(tmp_path / "state")
    printer = Printer(printer_port)
    service = start_twistd(config, str(tmp_path / "twistd.log"))
    try:
        [job_id] = send_jobs(trigger_port, [b"retry me"])
        wait_for(lambda: jobs(state_dir)[job_id]["state"] == "waiting", 10, "the job waiting")
        printer.listen()
        t0 = time.monotonic()
        out = rawsvc("retry", "--state-dir", state_dir, job_id)
        assert out.returncode == 0, out.stderr
        assert b"next attempt now" in out.stdout
        wait_for(lambda: jobs(state_dir)[job_id]["state"] == "done", 5, "the job done")
        assert time.monotonic() - t0 < 10  # not the 60 s wait (slack for a loaded machine)
        assert printer.received == [b"retry me"]
    finally:
        _stop(service)
        printer.stop()


def test_a_good_retry_is_one_history_row_and_clears_the_printer_error(tmp_path):
    printer_trigger, printer_port, http_port = free_port(), free_port(), free_port()
    path = tmp_path / "rawsvc.toml"
    path.write_text(f"""
[service]
state_dir = "{tmp_path}/state"

[admin.http]
listen = "tcp:{http_port}:interface=127.0.0.1"

[[trigger]]
name = "front"
type = "printer"
listen = "tcp:{printer_trigger}:interface=127.0.0.1"
flow = "forward"

[[flow]]
name = "forward"

[[flow.actions]]
type = "send_tcp"
destination = "127.0.0.1:{printer_port}"
retries = 0
""")
    state_dir = str(tmp_path / "state")
    printer = Printer(printer_port)  # off: the one attempt is refused
    service = start_twistd(str(path), str(tmp_path / "twistd.log"))
    try:
        wait_for(lambda: _up(http_port), 10, "the admin listener")
        with socket.create_connection(("127.0.0.1", printer_trigger), timeout=5) as sock:
            sock.sendall(b"a job for a printer that is off")
        wait_for(lambda: [j["state"] for j in jobs(state_dir).values()] == ["failed"], 10, "the job failed")
        [job_id] = jobs(state_dir)
        assert _health(http_port)["listeners"]["front"]["state"] == "error"

        printer.listen()
        out = rawsvc("retry", "--state-dir", state_dir, job_id)
        assert out.returncode == 0, out.stderr
        wait_for(lambda: jobs(state_dir)[job_id]["state"] == "done", 5, "the retried job done")
        assert printer.received == [b"a job for a printer that is off"]
        listed = json.loads(http_get(http_port, "/jobs"))["jobs"]
        assert [(j["job_id"], j["state"]) for j in listed] == [(job_id, "done")]  # one row, its latest state
        assert f'rawsvc_trigger_jobs_received_total{{trigger="front"}} 1' in http_get(http_port, "/metrics").decode()
        assert _health(http_port)["listeners"]["front"]["state"] == "idle"
    finally:
        _stop(service)
        printer.stop()


def _up(port: int) -> bool:
    try:
        http_get(port, "/healthz")
        return True
    except OSError:
        return False


def _health(port: int) -> dict:
    try:
        return json.loads(http_get(port, "/healthz"))
    except urllib.error.HTTPError as e:  # 503 while a listener is down
        return json.loads(e.read())
