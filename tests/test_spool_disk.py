"""
The spool and its disk, on a small tmpfs (real C{twistd -n rawsvc} where a
restart is the point): a final state that a full disk refused is written
once space is back, so the job is not delivered again at the next start;
temporary files a SIGKILL left are swept at the next start; retention keeps
a free-space floor.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time

import pytest
import pytest_twisted

from test_spool_lock import listening, send_job, stop, write_config
from test_spool_restart import Printer, free_port, rawsvc, start_twistd, wait_for


@pytest.fixture
def tmpfs(tmp_path):
    """A 4 MiB tmpfs, unmounted after the test."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount_point)],
                          capture_output=True)
    if done.returncode != 0:
        message = f"cannot mount a tmpfs here: {done.stderr.decode().strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=True)


def fill(folder) -> str:
    """A file that takes every free byte of C{folder}'s filesystem."""
    path = os.path.join(folder, "filler")
    with open(path, "wb", buffering=0) as f:
        chunk = b"\0" * 65536
        try:
            while True:
                f.write(chunk)
        except OSError as e:
            assert e.errno == errno.ENOSPC
        try:
            while True:
                f.write(b"\0" * 512)
        except OSError:
            pass
    return path


def test_a_final_state_refused_by_a_full_disk_is_written_when_space_is_back(tmp_path, tmpfs):
    state_dir = tmpfs / "state"
    trigger_port, printer_port = free_port(), free_port()
    config = write_config(tmp_path / "rawsvc.toml", str(state_dir), trigger_port, printer_port)
    text = open(config).read().replace('flow = "forward"\n', 'flow = "forward"\nrefusal = "ERR ${reason}\\n"\nmin_free = 0\n', 1)
    text = text.replace("[service]\n", "[service]\nmin_free_mb = 0  # keep the history on this small disk\n")
    open(config, "w").write(text)
    log = tmp_path / "twistd.log"
    # Jobs of 3 KB, a database page each: their final states need 20 new pages of WAL,
    # more than a small job's refused commit left allocated at its end.
    bodies = [f"job {i:03d} ".encode() + b"x" * 3000 for i in range(20)]
    printer = None
    proc = start_twistd(config, str(log))
    try:
        wait_for(lambda: listening(trigger_port), 30, "the service to listen")
        for b in bodies:
            assert send_job(trigger_port, b).startswith(b"OK ")  # stored, the printer is down
        filler = fill(tmpfs)
        # A WAL reuses its own space after a checkpoint: send jobs until the spool refuses
        # one, so the WAL has used up its file; the final states then need new space.
        for i in range(len(bodies), 1000):
            if not send_job(trigger_port, f"job {i:03d}".encode()).startswith(b"OK "):
                break
            bodies.append(f"job {i:03d}".encode())
        else:
            raise AssertionError("the full disk never refused a job")
        printer = Printer(printer_port)  # it listens from here on
        printer.start()
        wait_for(lambda: len(printer.received) >= len(bodies), 30, "the jobs at the printer")
        wait_for(lambda: "final state(s) not written" in log.read_text(), 10, "the failed final states")
        os.unlink(filler)
        wait_for(lambda: "final state(s) written at last" in log.read_text(), 10, "the final states written")
        proc.terminate()
        assert proc.wait(30) in (0, -signal.SIGTERM)  # twistd ends with the signal it got
        proc = start_twistd(config, str(log))
        wait_for(lambda: listening(trigger_port), 30, "the restarted service")
        time.sleep(1.0)  # room for a resumed job to reach the printer
        assert sorted(printer.received) == bodies  # each once, none again after the restart
        print(f"\nacknowledged {len(bodies)} (then one refused), printed {len(printer.received)}, "
              f"repeated {len(printer.received) - len(set(printer.received))}")
    finally:
        stop(proc)
        if printer is not None:
            printer.stopped = True
            printer.join(5)
    states = rawsvc("jobs", "--state-dir", str(state_dir), "--json")
    assert states.stdout.count(b'"state": "done"') == len(bodies)


def test_temporary_files_left_by_a_sigkill_mid_spill_are_swept_at_the_next_start(tmp_path):
    state_dir = tmp_path / "state"
    trigger_port, printer_port = free_port(), free_port()
    config = write_config(tmp_path / "rawsvc.toml", str(state_dir), trigger_port, printer_port)
    config_text = open(config).read().replace("[service]\n", "[service]\nspill_threshold = 1024\n")
    config_text = config_text.replace('execute_on = "delimiter"\ndelimiter = "\\n"', 'execute_on = "disconnect"')
    open(config, "w").write(config_text)
    proc = start_twistd(config, str(tmp_path / "twistd.log"))
    import socket

    try:
        wait_for(lambda: listening(trigger_port), 30, "the service to listen")
        with socket.create_connection(("127.0.0.1", trigger_port)) as sock:
            sock.sendall(b"x" * 100_000)  # no delimiter yet: a job being received, spilled
            wait_for(lambda: os.path.isdir(state_dir / "tmp") and os.listdir(state_dir / "tmp"), 10, "the spill file")
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        assert os.listdir(state_dir / "tmp")
        proc = start_twistd(config, str(tmp_path / "twistd.log"))
        wait_for(lambda: listening(trigger_port), 30, "the restarted service")
        assert os.listdir(state_dir / "tmp") == []
        assert "removed 1 temporary file(s) left by an earlier run" in (tmp_path / "twistd.log").read_text()
    finally:
        stop(proc)


@pytest_twisted.inlineCallbacks
def test_retention_purges_the_oldest_finished_jobs_while_free_space_is_below_the_floor(tmpfs, reactor):
    from rawsvc.flow import Flow
    from rawsvc.job import Job, Payload
    from rawsvc.spool.sink import SpoolSink
    from rawsvc.spool.store import Store, free_bytes

    state_dir = tmpfs / "state"
    store = Store(str(state_dir), reactor)
    sink = SpoolSink({"f": Flow("f", [])}, store, reactor, retention_days=7, retention_mb=1024)
    sink.service.startService()
    try:
        yield sink.service.started
        jobs = []
        for i in range(8):
            payload = Payload(bytes([i]) * (200 << 10))  # files, 200 KiB each
            payload.close()
            jobs.append((yield sink.submit(Job(trigger="t", payload=payload), "f")))
        assert all(j.state == "done" for j in jobs)
        yield sink.drain_writes()
        # Leave 1 MiB free; ask for 1.5 MiB: the oldest jobs go, about three of them.
        filler = open(tmpfs / "filler", "wb")
        filler.write(b"\0" * (free_bytes(str(state_dir)) - (1 << 20)))
        filler.close()
        store.min_free_bytes = 3 << 19
        yield sink.purge()
        left = yield store.load(("done",))
        kept = [s.job_id for s in left]
        assert kept == [j.job_id for j in jobs[len(jobs) - len(kept):]]  # the newest are kept
        assert 2 <= len(jobs) - len(kept) <= 4
        assert free_bytes(str(state_dir)) >= 3 << 19
    finally:
        yield sink.service.stopService()
