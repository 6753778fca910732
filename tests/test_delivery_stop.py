"""
Issue 12, item 2: a clean stop keeps every acknowledged job.  The real
C{twistd -n rawsvc} is stopped (SIGTERM, SIGHUP) with a backlog longer than
its stop grace, or with a job waiting to retry; at the next start every job
is delivered, byte-identical, in order, and none was marked failed.
"""

from __future__ import annotations

import signal
import time

import pytest

from delivery_support import (
    Printer, first_seen, free_port, jobs, send_jobs, start_twistd, stop, wait_for, write_config,
)

BACKLOG = 60


def test_sigterm_with_a_backlog_longer_than_the_grace_loses_nothing(tmp_path):
    started = time.monotonic()
    trigger_port, printer_port = free_port(), free_port()
    config = write_config(tmp_path, trigger_port, f"127.0.0.1:{printer_port}", service="stop_grace = 1")
    state_dir, log_path = str(tmp_path / "state"), str(tmp_path / "twistd.log")
    printer = Printer(printer_port, delay=0.1).listen()
    payloads = [f"job {i:03d} ".encode() + bytes(range(256)).replace(b"\n", b"") for i in range(BACKLOG)]
    service = start_twistd(config, log_path)
    try:
        ids = send_jobs(trigger_port, payloads)
        wait_for(lambda: len(printer.received) >= 3, 20, "the first jobs at the printer")
        assert stop(service, signal.SIGTERM) == -signal.SIGTERM
        cut_off = len(printer.received)
        assert cut_off < BACKLOG, "the backlog did not outlast the grace"
        rows = jobs(state_dir)
        assert not [r for r in rows.values() if r["state"] == "failed"], "a job was marked failed by the stop"
        assert not (tmp_path / "errors").exists(), "on_error ran for a job the stop cut off"
        assert sum(r["state"] != "done" for r in rows.values()) >= BACKLOG - cut_off - 1

        service = start_twistd(config, log_path)
        wait_for(lambda: set(payloads) <= set(printer.received), 30, "every job at the printer")
        assert first_seen(printer.received) == payloads  # in order, byte-identical
        wait_for(lambda: all(r["state"] == "done" for r in jobs(state_dir).values()), 10, "every job done")
        assert set(jobs(state_dir)) == set(ids)
        repeated = len(printer.received) - len(set(printer.received))
        assert repeated <= 1  # at most the one job in progress when the stop came
        print(f"\nsent {BACKLOG}, acknowledged {len(ids)}, printed before the stop {cut_off}, "
              f"printed {len(set(printer.received))}, repeated {repeated}, lost 0, "
              f"{time.monotonic() - started:.1f} s")
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
        printer.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=["SIGTERM", "SIGHUP", "SIGINT"])
def test_a_stop_during_retry_back_off_keeps_the_job(tmp_path, sig):
    trigger_port, printer_port = free_port(), free_port()
    config = write_config(tmp_path, trigger_port, f"127.0.0.1:{printer_port}")
    state_dir, log_path = str(tmp_path / "state"), str(tmp_path / "twistd.log")
    printer = Printer(printer_port)  # down: connections are refused
    service = start_twistd(config, log_path)
    try:
        [job_id] = send_jobs(trigger_port, [b"held job \x00\x01\xff"])
        wait_for(lambda: jobs(state_dir)[job_id]["state"] == "waiting", 10, "the job waiting to retry")
        t0 = time.monotonic()
        assert stop(service, sig) == -sig
        assert time.monotonic() - t0 < 10  # no grace spent waiting for a printer that is off
        row = jobs(state_dir)[job_id]
        assert row["state"] in ("waiting", "running"), row  # unfinished (running: stopped mid-attempt)
        assert not (tmp_path / "errors").exists(), "on_error ran for a job the stop cut off"
        log = open(log_path, encoding="utf-8").read()
        assert "CancelledError" not in log and "internal error" not in log
        if sig == signal.SIGHUP:
            assert "SIGHUP received: stopping cleanly" in log

        printer.listen()
        service = start_twistd(config, log_path)
        wait_for(lambda: jobs(state_dir)[job_id]["state"] == "done", 20, "the job done after the restart")
        assert printer.received == [b"held job \x00\x01\xff"]
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
        printer.stop()
