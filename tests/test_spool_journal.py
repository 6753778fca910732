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
import sqlite3
import subprocess
import threading
import time

import pytest_twisted
from twisted.internet.defer import inlineCallbacks
from test_spool_restart import Printer as _Printer
from test_spool_restart import free_port, rawsvc, jobs_json, payload_for, start_twistd, wait_for

from rawsvc.job import Job, Payload
from rawsvc.spool import journal
from rawsvc.spool.schema import SpoolError
from rawsvc.spool.store import Store
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
        acked_before = {job_id for c in clients for job_id in list(c.acked.values())}
        records, torn = journal.read(journal.journal_path(state_dir))
        assert len(records) >= KILL_AFTER and torn == 0
        last = records[-1]  # written and fdatasynced, never committed to the index
        # Acknowledged at the record's fdatasync: the clients had their OK before the kill.
        assert last.inserts and {row[0] for row in last.inserts} <= acked_before
        lacking = _lacking(state_dir)  # the index lags behind the journal (INDEX_DELAY): one record or more
        assert lacking[-1].seq == last.seq
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
        m = re.search(r"spool: (\d+) journal record\(s\) \((\d+) new job\(s\)\) written into the index", text)
        assert m, text[-3000:]
        assert (int(m.group(1)), int(m.group(2))) == (len(lacking), sum(len(r.inserts) for r in lacking))
        ids = {job_id for c in clients for job_id in c.acked.values()}
        wait_for(lambda: all(j["state"] == "done" for j in jobs_json(state_dir)), 20, "every job done")
        listed = {j["job_id"]: j for j in jobs_json(state_dir)}
        assert ids <= set(listed)
        # The jobs and final states of the records the index lacked are in it now.
        for record in lacking:
            for row in record.inserts:
                assert row[0] in listed
            for row in record.finals:
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
        lacking = _lacking(state_dir)
        service = start_twistd(config, str(log_path))
        wait_for(lambda: "ignored the journal's last" in log_path.read_text(), 30, "the torn tail noticed")
        text = log_path.read_text()
        assert f"ignored the journal's last {len(torn_record) // 2} byte(s)" in text
        assert (f"spool: {len(lacking)} journal record(s) ({sum(len(r.inserts) for r in lacking)} new job(s)) "
                "written into the index") in text
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
    (job_id,) = [row[0] for row in last.inserts]  # not in the index: the kill came first
    assert job_id in client.acked.values()  # acknowledged at the record's fdatasync, before the kill

    lacking = _lacking(state_dir)
    n, jobs = len(lacking), sum(len(r.inserts) for r in lacking)
    out = rawsvc("spool", "check", "--state-dir", state_dir)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{n} journal record(s) ({jobs} new job(s)) are not in the database yet".encode() in out.stdout
    assert job_id not in {j["job_id"] for j in jobs_json(state_dir)}

    target = str(tmp_path / "salvaged")
    out = rawsvc("spool", "salvage", "--state-dir", state_dir, "--to", target)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{n} journal record(s) the database lacked are in the saved one".encode() in out.stdout
    saved = {j["job_id"]: j for j in jobs_json(target)}
    assert job_id in saved and saved[job_id]["state"] == "running"
    assert set(client.acked.values()) <= set(saved)
    out = rawsvc("spool", "check", "--state-dir", target)
    assert out.returncode == 0 and b"journal" not in out.stdout, out.stdout


def _lacking(state_dir: str) -> list[journal.Record]:
    """The journal's records the index lacks (the service is down)."""
    conn = sqlite3.connect(f"file:{state_dir}/spool.db?mode=ro", uri=True)
    try:
        return journal.pending(conn, journal.journal_path(state_dir))[0]
    finally:
        conn.close()


def _job(data: bytes) -> Job:
    payload = Payload(data)
    payload.close()
    return Job(trigger="t", payload=payload)


@inlineCallbacks
def _until_the_index_fails(store: Store):
    """
    Jobs of 30 kB added until one is acknowledged (its
    journal record fdatasynced) that the index could not take (its
    C{max_page_count}: a full disk to SQLite, not to the journal): the
    reads fail from then on.  Returns (the jobs acknowledged, the read's error).
    """
    acked = []
    for i in range(100):
        j = _job(b"%03d" % i + b"x" * 30_000)
        yield store.add(j, "f")  # acknowledged: in the journal
        acked.append(j.job_id)
        try:
            yield store.load(job_id=j.job_id)
        except SpoolError as e:
            return acked, e
    raise AssertionError("the index never filled up")


@pytest_twisted.inlineCallbacks
def test_an_index_commit_failing_after_the_ack_is_retried_before_any_later_write(tmp_path, reactor):
    store = Store(str(tmp_path), reactor, max_pages=40)
    yield store.open()
    try:
        acked, error = yield _until_the_index_fails(store)
        assert "index cannot be written" in str(error) and "full" in str(error)
        # While the index fails, other writes are refused, a new job too.
        late = _job(b"late")
        try:
            yield store.add(late, "f")
        except SpoolError:
            pass
        else:
            raise AssertionError("a new job was taken while the index could not be written")
        try:
            yield store.finish(acked[-1], "done", None, 1, {}, None)
        except SpoolError:
            pass
        else:
            raise AssertionError("a final state was taken while the index could not be written")
        # Room again: the record is written into the index first, then the rest.
        yield store._submit(None, lambda: store.conn.execute("PRAGMA max_page_count = 1000000"), (), raw=True)
        yield store.finish(acked[-1], "done", None, 1, {}, None)
        held = {j.job_id: j for j in (yield store.load(states=("running", "done")))}
        assert set(held) == set(acked)  # every acknowledged job, in order; not the refused one
        assert [j.job_id for j in sorted(held.values(), key=lambda j: j.seq)] == acked
        assert held[acked[-1]].state == "done"
        assert held[acked[-1]].payload == b"%03d" % (len(acked) - 1) + b"x" * 30_000
    finally:
        yield store.stop()


@pytest_twisted.inlineCallbacks
def test_a_record_the_index_never_took_stays_in_the_journal_and_is_replayed_at_the_next_start(tmp_path, reactor):
    store = Store(str(tmp_path), reactor, max_pages=40)
    yield store.open()
    try:
        acked, _ = yield _until_the_index_fails(store)
    finally:
        yield store.stop()  # tries once more, fails: the journal is not emptied
    records, torn = journal.read(journal.journal_path(str(tmp_path)))
    assert acked[-1] in {row[0] for r in records for row in r.inserts} and torn == 0
    again = Store(str(tmp_path), reactor)
    yield again.open()
    try:
        held = yield again.load()
        assert [j.job_id for j in held] == acked
    finally:
        yield again.stop()

