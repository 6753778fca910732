"""
A damaged spool is never taken for an empty one (real C{twistd -n rawsvc}):
after a SIGKILL with acknowledged jobs unfinished, C{spool.db} truncated to
0 bytes, to half, or its C{-wal} removed: the service refuses to start and
says how to get out; C{rawsvc spool check} says damaged; C{rawsvc jobs}
gives one line; C{rawsvc spool salvage} saves what it can, and the salvaged
spool, put in place, prints what it saved.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time

import pytest

from test_spool_lock import listening, send_job, stop, write_config
from test_spool_restart import Printer, free_port, rawsvc, start_twistd, wait_for

JOBS = 30


def body(i: int) -> bytes:
    if i % 10 == 3:  # a few past the database's blob limit: payload files
        return f"job {i:02d} ".encode() + b"x" * (70 << 10)
    return f"job {i:02d}".encode()


@pytest.fixture
def killed_with_unfinished_jobs(tmp_path):
    """A spool holding JOBS acknowledged jobs for a printer that is down, left by a SIGKILL."""
    state_dir = tmp_path / "state"
    trigger_port, printer_port = free_port(), free_port()
    config = write_config(tmp_path / "rawsvc.toml", str(state_dir), trigger_port, printer_port)
    proc = start_twistd(config, str(tmp_path / "first.log"))
    try:
        wait_for(lambda: listening(trigger_port), 30, "the service to listen")
        for i in range(JOBS):
            assert send_job(trigger_port, body(i)).startswith(b"OK ")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        stop(proc)
    assert os.path.getsize(state_dir / "spool.db-wal") > 0
    return tmp_path, state_dir, config, printer_port


def refused_start(tmp_path, config: str, log: str) -> str:
    proc = start_twistd(config, str(tmp_path / log))
    try:
        assert proc.wait(30) == 1
    finally:
        stop(proc)
    return (tmp_path / log).read_text()


def truncate(path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


DAMAGE = {
    "truncated to 0 bytes": lambda s: truncate(s / "spool.db", 0),
    "truncated to half": lambda s: truncate(s / "spool.db", os.path.getsize(s / "spool.db") // 2),
    "wal removed": lambda s: [os.unlink(s / n) for n in ("spool.db-wal", "spool.db-shm")],
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_spool_refuses_to_start_and_is_salvaged(killed_with_unfinished_jobs, damage):
    tmp_path, state_dir, config, printer_port = killed_with_unfinished_jobs
    if damage == "truncated to half":
        # The main file must hold the jobs for half of it to matter: checkpoint the WAL into it.
        out = rawsvc("jobs", "--state-dir", str(state_dir), "--limit", "0")
        assert out.returncode == 0
        import sqlite3
        conn = sqlite3.connect(state_dir / "spool.db")
        conn.execute("PRAGMA wal_checkpoint(FULL)")
        conn.close()  # also deletes the WAL: the jobs are in the main file now
    DAMAGE[damage](state_dir)

    listed = rawsvc("jobs", "--state-dir", str(state_dir))  # before the start: must not hide the damage
    assert listed.returncode == 1
    err = listed.stderr.decode()
    assert err.count("\n") == 1 and "damaged" in err and "Traceback" not in err

    out = refused_start(tmp_path, config, "second.log")
    assert f"rawsvc: the spool in {state_dir} is damaged; not starting over acknowledged jobs:" in out
    assert f"rawsvc spool salvage --state-dir {state_dir} --to {state_dir}.salvaged" in out
    assert "Traceback" not in out

    checked = rawsvc("spool", "check", "--state-dir", str(state_dir))
    assert checked.returncode == 1 and b"DAMAGED" in checked.stdout

    target = tmp_path / "salvaged"
    saved = rawsvc("spool", "salvage", "--state-dir", str(state_dir), "--to", str(target))
    assert saved.returncode == 0, saved.stderr
    text = saved.stdout.decode()
    assert text.startswith("saved ")
    assert rawsvc("spool", "check", "--state-dir", str(target)).returncode == 0

    # Put in place, the salvaged spool prints what it saved; payloads without rows are in lost+found.
    shutil.move(str(state_dir), str(tmp_path / "damaged"))
    shutil.move(str(target), str(state_dir))
    printer = Printer(printer_port)
    printer.start()
    proc = start_twistd(config, str(tmp_path / "third.log"))
    try:
        n = int(text.split()[1])
        wait_for(lambda: len(printer.received) >= n, 30, "the salvaged jobs at the printer")
        lost = sorted(os.listdir(state_dir / "lost+found")) if os.path.isdir(state_dir / "lost+found") else []
        printed = set(printer.received)
        recovered = printed | {open(state_dir / "lost+found" / name, "rb").read() for name in lost}
        if damage == "truncated to 0 bytes":
            assert n == JOBS  # every row was in the WAL, which the salvage reads
            time.sleep(0.3)  # room for a repeat
            assert sorted(printer.received) == sorted(body(i) for i in range(JOBS))  # each once, byte-identical
        # Nothing printed that was not sent; every large job is printed or in lost+found.
        assert printed <= {body(i) for i in range(JOBS)}
        assert {body(i) for i in range(JOBS) if i % 10 == 3} <= recovered
        print(f"\n{damage}: salvaged {n} of {JOBS} rows, {len(lost)} payload(s) in lost+found, printed {len(printed)}")
    finally:
        stop(proc)
        printer.stopped = True
        printer.join(5)


def test_a_clean_stop_or_a_retry_while_down_is_not_damage(killed_with_unfinished_jobs):
    tmp_path, state_dir, config, printer_port = killed_with_unfinished_jobs
    job_id = json.loads(rawsvc("jobs", "--state-dir", str(state_dir), "--json").stdout.splitlines()[0])["job_id"]
    # The CLI's read-write close checkpoints the WAL and deletes it: not a loss.
    assert rawsvc("cancel", "--state-dir", str(state_dir), job_id, "--wait", "0").returncode == 0
    assert not os.path.exists(state_dir / "spool.db-wal")
    assert rawsvc("spool", "check", "--state-dir", str(state_dir)).returncode == 0
    printer = Printer(printer_port)
    printer.start()
    proc = start_twistd(config, str(tmp_path / "second.log"))
    try:
        wait_for(lambda: len(printer.received) >= JOBS - 1, 30, "the jobs at the printer")
        proc.terminate()
        assert proc.wait(30) in (0, -signal.SIGTERM)  # twistd ends with the signal it got
    finally:
        stop(proc)
        printer.stopped = True
        printer.join(5)
    assert not os.path.exists(state_dir / "spool.db-wal")  # a clean stop folds the WAL in
    checked = rawsvc("spool", "check", "--state-dir", str(state_dir))
    assert checked.returncode == 0 and b"ok: 30 job(s) (1 cancelled, 29 done)" in checked.stdout


def test_salvage_reads_the_rows_left_on_the_pages_of_a_truncated_spool(tmp_path):
    import sqlite3

    from rawsvc.spool.salvage import salvage
    from rawsvc.spool.schema import connect, migrate

    state_dir = tmp_path / "state"
    state_dir.mkdir()
    conn = connect(str(state_dir / "spool.db"))
    migrate(conn)
    payloads = {f"job-{i:04d}": os.urandom(700 + i) for i in range(300)}
    conn.executemany(
        "INSERT INTO jobs (job_id, trigger, flow, state, received_at, queued_at, updated_at, payload)"
        " VALUES (?, 't', 'f', 'queued', 1, 1, 1, ?)", list(payloads.items()))
    conn.close()  # checkpointed: every row is in the main file
    size = os.path.getsize(state_dir / "spool.db")
    truncate(state_dir / "spool.db", size * 6 // 10)
    with pytest.raises(sqlite3.DatabaseError):
        sqlite3.connect(state_dir / "spool.db").execute("SELECT COUNT(*) FROM jobs").fetchone()

    saved = salvage(str(state_dir), str(tmp_path / "salvaged"))
    assert 100 < saved.jobs < 300, saved
    new = sqlite3.connect(tmp_path / "salvaged" / "spool.db")
    rows = new.execute("SELECT job_id, payload, state FROM jobs ORDER BY seq").fetchall()
    assert len(rows) == saved.jobs
    assert all(payloads[job_id] == payload and state == "queued" for job_id, payload, state in rows)  # byte-identical
