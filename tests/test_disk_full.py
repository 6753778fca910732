"""
Refuse, never fake (issue 12, item 5): with the state directory on a small
tmpfs that fills up, every job a client was told is done is archived
byte-identically, every other one is refused visibly on the wire (the
refusal text for a tcp trigger, a reset for a printer, so CUPS's socket
backend exits non-zero), nothing logs an "Unhandled Error", and no spill
file is left in state_dir/tmp.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import time

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from conftest import require_tool
from printer_support import archived, printer, wait_for
from support import port_of, recv_all

CUPS_SOCKET = "/usr/lib/cups/backend/socket"
JOB_BYTES = 300_000  # past spill_threshold (64 KiB): each job spills to state_dir/tmp
JOBS = 16  # 4.8 MB sent into a 2 MB state_dir


def _root_or_skip() -> None:
    if os.geteuid() == 0:
        return
    if os.environ.get("CI") == "true":
        pytest.fail("mounting a tmpfs needs root")
    pytest.skip("mounting a tmpfs needs root")


@pytest.fixture
def small_state(tmp_path):
    """state_dir on a 2 MB tmpfs (unmounted after the test)."""
    _root_or_skip()
    require_tool("mount")
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(state)], check=True)
    yield state
    subprocess.run(["umount", "-l", str(state)], check=False)


@pytest.fixture
def log_text():
    from twisted.logger import formatEvent, globalLogPublisher

    seen: list[str] = []

    def observer(event):
        text = formatEvent(event) or ""
        if event.get("log_failure") is not None or event.get("isError"):
            text = "Unhandled Error " + text
        seen.append(text)

    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


@pytest.fixture
def spooled(tmp_path, small_state):
    """Start a RawService with the durable spool on the small state_dir."""
    from rawsvc.config import loads
    from rawsvc.context import BuildContext
    from rawsvc.service import RawService

    started = []

    def make(toml: str):
        text = f'[service]\nstate_dir = "{small_state}"\nspill_threshold = 65536\n' + toml
        svc = RawService(loads(text, str(tmp_path / "rawsvc.toml"), BuildContext()))
        svc.startService()
        started.append(svc)
        return svc

    yield make
    for svc in started:
        pytest_twisted.blockon(svc.stopService())


def _job(i: int, size: int = JOB_BYTES) -> bytes:
    return bytes([i % 256]) * 16 + os.urandom(size - 16)


#: (job size, jobs): spilled jobs (the temporary file fills the disk) and
#: in-memory ones (the spool's own write fails: the sink refuses).
SIZES = pytest.mark.parametrize("size,count", [(JOB_BYTES, JOBS), (40_000, 80)], ids=["spilled", "in-memory"])


def _leftover_temp_files(state) -> list[str]:
    tmp = state / "tmp"
    return sorted(os.listdir(tmp)) if tmp.is_dir() else []


def _tcp_client(port: int, data: bytes) -> bytes:
    """Send one job, half-close, return what the service said (b"RESET" for a reset)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            return recv_all(s, timeout=10)
    except OSError as e:
        # A reset can land before the half-close (ENOTCONN) or the last write (EPIPE).
        if e.errno in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN):
            return b"RESET"
        raise


@SIZES
@pytest_twisted.inlineCallbacks
def test_tcp_trigger_on_a_full_disk_refuses_with_its_text_and_acknowledges_only_stored_jobs(
    spooled, small_state, tmp_path, log_text, size, count
):
    jobs_dir = tmp_path / "jobs"
    svc = spooled(f"""
[[trigger]]
name = "t"
type = "tcp"
listen = "tcp:0:interface=127.0.0.1"
flow = "f"
refusal = "REFUSED ${{reason}}\\n"
min_free = 0  # let jobs in until the disk is full
[[flow]]
name = "f"
actions = [ {{ type = "file", folder = "{jobs_dir}", name = "${{job_id}}.prn" }},
            {{ type = "reply", data = "OK\\n" }} ]
""")
    yield svc.sink.service.started
    port = port_of(svc, "t")
    sent = [_job(i, size) for i in range(count)]
    answers = []
    for data in sent:
        answers.append((yield deferToThread(_tcp_client, port, data)))
    ok = [data for data, a in zip(sent, answers) if a == b"OK\n"]
    refused = [a for a in answers if a.startswith(b"REFUSED ")]
    other = [a[:60] for a in answers if a != b"OK\n" and not a.startswith(b"REFUSED ")]
    print(f"\n[disk full, tcp] sent {len(sent)}, acknowledged {len(ok)}, refused {len(refused)}, "
          f"other answers {other}, refusals {sorted(set(refused))}")
    assert len(ok) + len(refused) == len(sent)  # every client knows what happened to its job
    assert ok and refused  # the disk did fill up
    yield wait_for(lambda: len(archived(jobs_dir)) == len(ok))
    assert sorted(archived(jobs_dir)) == sorted(ok)  # acknowledged = stored, byte for byte
    assert _leftover_temp_files(small_state) == []
    assert not [t for t in log_text if "Unhandled Error" in t]
    assert svc.triggers["t"].counters.jobs_refused == len(refused)


def _cups_backend(backend: str, port: int, job: str, back: str) -> int:
    uri = f"socket://127.0.0.1:{port}/?snmp=no"
    result = subprocess.run(
        ["sh", "-c", f"exec '{backend}' 1 user title 1 '' '{job}' 3>'{back}' 4</dev/null"],
        env=dict(os.environ, DEVICE_URI=uri), stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
    )
    return result.returncode


@SIZES
@pytest_twisted.inlineCallbacks
def test_printer_on_a_full_disk_resets_instead_of_closing_cleanly(spooled, small_state, tmp_path, log_text,
                                                                  size, count):
    jobs_dir = tmp_path / "jobs"
    svc = spooled(
        printer(eoj_ctrl_d=False, zpl_host_status=False, pjl=False, min_free=0)
        + f'[[flow]]\nname = "archive"\nactions = [ {{ type = "file", folder = "{jobs_dir}" }} ]\n'
    )
    yield svc.sink.service.started
    port = port_of(svc, "p")
    sent = [_job(i, size) for i in range(count)]
    answers = []
    for data in sent:
        answers.append((yield deferToThread(_tcp_client, port, data)))
    ok = [data for data, a in zip(sent, answers) if a == b""]  # a clean close: printed
    reset = [a for a in answers if a == b"RESET"]
    print(f"\n[disk full, printer] sent {len(sent)}, acknowledged (clean close) {len(ok)}, "
          f"refused (reset) {len(reset)}")
    assert len(ok) + len(reset) == len(sent)
    assert ok and reset
    yield wait_for(lambda: len(archived(jobs_dir)) == len(ok))
    assert sorted(archived(jobs_dir)) == sorted(ok)
    assert _leftover_temp_files(small_state) == []
    assert not [t for t in log_text if "Unhandled Error" in t]


@pytest_twisted.inlineCallbacks
def test_cups_backend_fails_a_large_job_the_printer_cannot_store(spooled, small_state, tmp_path, log_text):
    """
    The spill fails while CUPS's backend is still writing: the reset makes it
    exit 1 (CUPS keeps the job).  (A reset after its last write is not seen:
    the backend exits 0 once every byte is written, whatever follows.)
    """
    backend = require_tool(CUPS_SOCKET)
    jobs_dir = tmp_path / "jobs"
    svc = spooled(
        printer(eoj_ctrl_d=False, zpl_host_status=False, pjl=False, min_free=0)
        + f'[[flow]]\nname = "archive"\nactions = [ {{ type = "file", folder = "{jobs_dir}" }} ]\n'
    )
    yield svc.sink.service.started
    job = tmp_path / "big.bin"
    job.write_bytes(os.urandom(24 << 20))  # past the 2 MB disk and every socket buffer
    code = yield deferToThread(_cups_backend, backend, port_of(svc, "p"), str(job), str(tmp_path / "back"))
    assert code != 0
    assert archived(jobs_dir) == []
    assert _leftover_temp_files(small_state) == []
    assert not [t for t in log_text if "Unhandled Error" in t]


@pytest_twisted.inlineCallbacks
def test_below_min_free_the_printer_closes_its_port_so_cups_keeps_the_job_and_prints_it_later(
    spooled, small_state, tmp_path, log_text
):
    """
    A small job refused after CUPS's backend wrote its last byte cannot be
    reported to it (it exits 0 whatever follows, even after a reset at the
    accept).  Below C{min_free} the printer closes its port instead: the
    backend's connect is refused, it keeps the job and tries again, and the
    job prints once there is room.
    """
    backend = require_tool(CUPS_SOCKET)
    jobs_dir = tmp_path / "jobs"
    svc = spooled(
        printer(eoj_ctrl_d=False, zpl_host_status=False, pjl=False, min_free=1_000_000)
        + f'[[flow]]\nname = "archive"\nactions = [ {{ type = "file", folder = "{jobs_dir}" }} ]\n'
    )
    p = svc.triggers["p"]
    yield svc.sink.service.started
    port = port_of(svc, "p")
    uri = f"socket://127.0.0.1:{port}/?snmp=no"
    sent, printed = [], []
    waiting = None
    for i in range(60):
        data = _job(i, 40_000)
        path = tmp_path / f"job{i}.bin"
        path.write_bytes(data)
        sent.append(data)
        proc = subprocess.Popen(
            ["sh", "-c", f"exec '{backend}' 1 user title 1 '' '{path}' 3>/dev/null 4</dev/null"],
            env=dict(os.environ, DEVICE_URI=uri), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            code = yield deferToThread(proc.wait, 3)
        except subprocess.TimeoutExpired:
            waiting = (proc, data)  # the port is closed: CUPS's backend retries the connect
            break
        assert code == 0
        printed.append(data)
    assert waiting is not None, "the disk never got below min_free"
    assert p.port is None and p.disk_low_reason is not None and not p.listening
    try:
        subprocess.run(["mount", "-o", "remount,size=16m", str(small_state)], check=True)
        code = yield deferToThread(waiting[0].wait, 45)  # its next try (after 5 s) gets through
    finally:
        if waiting[0].poll() is None:
            waiting[0].kill()
            waiting[0].wait()
    assert code == 0
    printed.append(waiting[1])
    print(f"\n[min_free] printed {len(printed)}, archived {len(archived(jobs_dir))}, "
          f"refused at the accept {p.counters.connections_refused}")
    yield wait_for(lambda: len(archived(jobs_dir)) == len(printed))
    print(f"\n[min_free, CUPS backend] sent {len(sent)}, printed {len(printed)} "
          f"(the last after the disk got room), lost 0, repeated 0")
    assert sorted(archived(jobs_dir)) == sorted(printed)  # every job CUPS was told is done is stored, once
    assert p.port is not None and p.disk_low_reason is None
    assert not [t for t in log_text if "Unhandled Error" in t]


def _fill(path) -> None:
    """Write C{path} until the disk is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, bytes(4096))
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    finally:
        os.close(fd)


@pytest_twisted.inlineCallbacks
def test_a_job_whose_journal_record_the_full_disk_refuses_is_refused_and_not_in_the_journal(
    spooled, small_state, tmp_path, log_text
):
    import sqlite3

    from rawsvc.spool import journal

    jobs_dir = tmp_path / "jobs"
    svc = spooled(f"""
[[trigger]]
name = "t"
type = "tcp"
listen = "tcp:0:interface=127.0.0.1"
flow = "f"
refusal = "REFUSED ${{reason}}\\n"
min_free = 0  # let jobs in until the disk is full
[[flow]]
name = "f"
actions = [ {{ type = "file", folder = "{jobs_dir}", name = "${{job_id}}.prn" }},
            {{ type = "reply", data = "OK\\n" }} ]
""")
    yield svc.sink.service.started
    port = port_of(svc, "t")
    sent = [_job(i, 40_000) for i in range(11)]  # in memory: each one's payload goes into the journal record
    answers = []
    for data in sent[:5]:
        answers.append((yield deferToThread(_tcp_client, port, data)))
    assert answers == [b"OK\n"] * 5
    yield svc.sink.drain_writes()
    # The index's WAL checkpointed: its next transactions overwrite its first
    # frames, in blocks the file has; the journal's next record needs new ones.
    db = sqlite3.connect(str(small_state / "spool.db"))
    assert db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[0] == 0
    db.close()
    filler = small_state / "filler"
    yield deferToThread(_fill, filler)
    for data in sent[5:10]:
        answers.append((yield deferToThread(_tcp_client, port, data)))
    refusals = answers[5:]
    print(f"\n[journal full] {refusals[0]!r}")
    assert all(a.startswith(b"REFUSED spool unavailable: No space left on device") and b"spool.journal" in a
               for a in refusals), refusals
    filler.unlink()  # space again: the journal takes records again
    answers.append((yield deferToThread(_tcp_client, port, sent[10])))
    assert answers[10] == b"OK\n"
    ok = sent[:5] + sent[10:]
    yield svc.sink.drain_writes()
    records, torn = journal.read(journal.journal_path(str(small_state)))
    assert torn == 0  # a refused write left nothing behind that would hide a later record
    assert [row[journal.BLOB] for r in records for row in r.inserts] == ok  # acknowledged, in order; no refused one
    yield wait_for(lambda: len(archived(jobs_dir)) == len(ok))
    assert sorted(archived(jobs_dir)) == sorted(ok)
    assert svc.triggers["t"].counters.jobs_refused == 5
    assert not [t for t in log_text if "Unhandled Error" in t]
