"""
The spool's journal (issue 18): new jobs and final states are durable once
their batch's record is fdatasynced, before the SQLite index commits.  The
real C{twistd -n rawsvc} is killed (SIGKILL, by its own writer thread: the
test-only C{RAWSVC_TEST_KILL_AFTER_JOURNAL} hook) between the journal write
and the index commit; at the restart the record the index lacks is written
into it, and every acknowledged job is delivered.  A torn record at the
journal's tail (the write a kill interrupted) is ignored: never acknowledged.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time

from test_spool_restart import Printer as _Printer
from test_spool_restart import free_port, rawsvc, jobs_json, payload_for, start_twistd, wait_for

from rawsvc.spool import journal
from rawsvc.spool.writer import KILL_AFTER_JOURNAL_ENV

CLIENTS = 3
JOBS = 60  # per client
KILL_AFTER = 40  # journal records


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


class Client(threading.Thread):
    """Sends its jobs one per connection, each waiting for its OK; resends while the service is down."""

    def __init__(self, number: int, port: int, count: int) -> None:
        super().__init__(daemon=True)
        self.number, self.port, self.count = number, port, count
        self.acked: dict[int, str] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            deadline = time.monotonic() + 60
            i = 0
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
                self.acked[i] = line[3:].decode()
                i += 1
        except BaseException as e:  # reported by the test
            self.error = e


class Printer(_Printer):
    """The restart test's printer, which outlives a connection the killed service reset."""

    def run(self) -> None:
        while not self.stopped:
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(10)
                chunks = []
                try:
                    while data := conn.recv(65536):
                        chunks.append(data)
                except OSError:
                    continue  # cut off by the kill: sent again after the restart
                self.received.append(b"".join(chunks))
        self.listener.close()


def _stop(service: subprocess.Popen) -> None:
    if service.poll() is None:
        service.terminate()
        try:
            service.wait(20)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()


def test_a_kill_between_the_journal_write_and_the_index_commit_loses_no_acknowledged_job(tmp_path):
    trigger_port, printer_port = free_port(), free_port()
    config = write_config(tmp_path, trigger_port, printer_port)
    log_path = tmp_path / "twistd.log"
    state_dir = str(tmp_path / "state")
    printer = Printer(printer_port)
    printer.start()
    os.environ[KILL_AFTER_JOURNAL_ENV] = str(KILL_AFTER)  # read by env() for this start only
    try:
        service = start_twistd(config, str(log_path))
    finally:
        del os.environ[KILL_AFTER_JOURNAL_ENV]
    try:
        clients = [Client(n, trigger_port, JOBS) for n in range(CLIENTS)]
        for c in clients:
            c.start()
        service.wait(60)
        assert service.returncode == -signal.SIGKILL  # killed itself after the journal fdatasync
        records, torn = journal.read(journal.journal_path(state_dir))
        assert len(records) >= KILL_AFTER and torn == 0
        last = records[-1]  # written and fdatasynced, never committed to the index
        service = start_twistd(config, str(log_path))
        for c in clients:
            c.join(70)
            assert c.error is None, c.error
            assert len(c.acked) == JOBS, f"client {c.number}: {len(c.acked)} acked"
        expected = {payload_for(c.number, i) for c in clients for i in c.acked}
        try:
            wait_for(lambda: expected <= set(printer.received), 60, "every acknowledged job at the printer")
        finally:
            printer.stopped = True
            printer.join(5)
        text = log_path.read_text()
        m = re.search(r"spool: 1 journal record\(s\) \((\d+) new job\(s\)\) written into the index", text)
        assert m, text[-3000:]
        assert int(m.group(1)) == len(last.inserts)
        ids = {job_id for c in clients for job_id in c.acked.values()}
        wait_for(lambda: all(j["state"] == "done" for j in jobs_json(state_dir)), 20, "every job done")
        listed = {j["job_id"]: j for j in jobs_json(state_dir)}
        assert ids <= set(listed)
        # The jobs and final states of the record the index lacked are in it now.
        for row in last.inserts:
            assert row[0] in listed
        for row in last.finals:
            assert listed[row[0]]["state"] == row[1] == "done"
    finally:
        printer.stopped = True
        _stop(service)


def test_a_torn_record_at_the_journal_tail_is_ignored_and_the_good_ones_replayed(tmp_path):
    trigger_port, printer_port = free_port(), free_port()
    config = write_config(tmp_path, trigger_port, printer_port)
    log_path = tmp_path / "twistd.log"
    state_dir = str(tmp_path / "state")
    os.environ[KILL_AFTER_JOURNAL_ENV] = "5"
    try:
        service = start_twistd(config, str(log_path))
    finally:
        del os.environ[KILL_AFTER_JOURNAL_ENV]
    try:
        clients = [Client(0, trigger_port, 20)]  # the printer is down: every job stays unfinished
        clients[0].start()
        service.wait(60)
        assert service.returncode == -signal.SIGKILL
        clients[0].count = 0  # stop sending
        clients[0].join(10)
        path = journal.journal_path(state_dir)
        records, torn = journal.read(path)
        assert len(records) == 5 and torn == 0
        # The next record, torn by a kill mid-write: whole header, half its body.
        with open(path, "rb") as f:
            data = f.read()
        end = len(data.rstrip(b"\0"))
        torn_record = b"".join(journal.encode(records[-1].seq + 1, [("torn-job",) + records[-1].inserts[0][1:]], []))
        with open(path, "r+b") as f:
            f.seek(end)
            f.write(torn_record[:len(torn_record) // 2])
        assert journal.read(path)[1] == len(torn_record) // 2
        service = start_twistd(config, str(log_path))
        wait_for(lambda: "ignored the journal's last" in log_path.read_text(), 30, "the torn tail noticed")
        text = log_path.read_text()
        assert f"ignored the journal's last {len(torn_record) // 2} byte(s)" in text
        assert "spool: 1 journal record(s) (1 new job(s)) written into the index" in text
        listed = {j["job_id"] for j in jobs_json(state_dir)}
        assert "torn-job" not in listed
        assert {row[0] for r in records for row in r.inserts} <= listed
        assert clients[0].acked and set(clients[0].acked.values()) <= listed
        assert journal.read(path) == ([], 0)  # replayed, then emptied
    finally:
        _stop(service)


def test_check_reports_and_salvage_keeps_the_journal_records_the_database_lacks(tmp_path):
    trigger_port, printer_port = free_port(), free_port()
    config = write_config(tmp_path, trigger_port, printer_port)
    state_dir = str(tmp_path / "state")
    os.environ[KILL_AFTER_JOURNAL_ENV] = "3"
    try:
        service = start_twistd(config, str(tmp_path / "twistd.log"))
    finally:
        del os.environ[KILL_AFTER_JOURNAL_ENV]
    client = Client(0, trigger_port, 10)  # the printer is down: every job stays unfinished
    client.start()
    try:
        service.wait(60)
        assert service.returncode == -signal.SIGKILL
    finally:
        _stop(service)
    client.count = 0
    client.join(10)
    last = journal.read(journal.journal_path(state_dir))[0][-1]
    (job_id,) = [row[0] for row in last.inserts]  # stored, never acknowledged: the kill came first
    assert job_id not in client.acked.values()

    out = rawsvc("spool", "check", "--state-dir", state_dir)
    assert out.returncode == 0, out.stdout + out.stderr
    assert b"1 journal record(s) (1 new job(s)) are not in the database yet" in out.stdout
    assert job_id not in {j["job_id"] for j in jobs_json(state_dir)}

    target = str(tmp_path / "salvaged")
    out = rawsvc("spool", "salvage", "--state-dir", state_dir, "--to", target)
    assert out.returncode == 0, out.stdout + out.stderr
    assert b"1 journal record(s) the database lacked are in the saved one" in out.stdout
    saved = {j["job_id"]: j for j in jobs_json(target)}
    assert job_id in saved and saved[job_id]["state"] == "running"
    assert set(client.acked.values()) <= set(saved)
    out = rawsvc("spool", "check", "--state-dir", target)
    assert out.returncode == 0 and b"journal" not in out.stdout, out.stdout
