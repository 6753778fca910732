"""
C{[service] log_format = "json"}: one flat JSON object per line in twistd's
log (a real twistd), and the formatter's records.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time

from conftest import ROOT
from twisted.logger import Logger, LogLevel, globalLogPublisher
from twisted.python.failure import Failure

from rawsvc.logs import JsonLineObserver, configured_format, flat_event, install, twistd_observer
from pg_support import free_port as _free_port


def test_twistd_writes_one_json_object_per_line_and_a_jobs_line_has_its_job_id(tmp_path):
    port = _free_port()
    config = tmp_path / "rawsvc.toml"
    config.write_text(
        f'[service]\nstate_dir = "{tmp_path}/state"\nlog_format = "json"\nlog_jobs = true\n'
        f'[[trigger]]\nname = "a"\ntype = "tcp"\nlisten = "tcp:{port}:interface=127.0.0.1"\nflow = "f"\n'
        '[[flow]]\nname = "f"\nactions = [ { type = "log" } ]\n')
    log_path = tmp_path / "twistd.log"
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    proc = subprocess.Popen([twistd, "-n", "--pidfile=", f"--logfile={log_path}", "rawsvc", "--config", str(config)],
                            cwd=tmp_path, env=dict(os.environ, PYTHONPATH=ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                    c.sendall(b"hello label")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "twistd did not start"
                time.sleep(0.2)
        records: list[dict] = []
        while time.monotonic() < deadline:
            lines = log_path.read_text().splitlines() if log_path.exists() else []
            records = [json.loads(line) for line in lines]  # every line is JSON
            if any(r.get("job_id") and r.get("trigger") == "a" for r in records):
                break
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert records and all({"time", "level", "namespace", "message"} <= r.keys() for r in records)
    job_lines = [r for r in records if r.get("job_id") and r.get("trigger") == "a"]
    assert job_lines, records
    assert job_lines[0]["job_id"] in job_lines[0]["message"]


def test_a_record_carries_the_structured_fields_and_the_error():
    out = io.StringIO()
    observer = JsonLineObserver(out)
    globalLogPublisher.addObserver(observer)
    try:
        log = Logger(namespace="rawsvc.test")
        log.warn("job {job_id} to {destination} failed", job_id="j-1", destination="p1", trigger="t", attempt=2)
        try:
            raise ValueError("printer on fire")
        except ValueError:
            log.failure("delivery of {job_id} failed", Failure(), job_id="j-2")
    finally:
        globalLogPublisher.removeObserver(observer)
    first, second = [json.loads(line) for line in out.getvalue().splitlines()]
    assert first["level"] == "warn" and first["namespace"] == "rawsvc.test"
    assert first["message"] == "job j-1 to p1 failed"
    assert (first["job_id"], first["destination"], first["trigger"], first["attempt"]) == ("j-1", "p1", "t", 2)
    assert second["level"] == "critical" and second["error"] == "printer on fire" and "ValueError" in second["traceback"]


def test_objects_that_are_not_json_are_written_as_text():
    record = flat_event({"log_format": "x {thing}", "log_level": LogLevel.info, "log_time": 0.0,
                         "log_namespace": "n", "thing": object(), "states": ("a", "b")})
    json.dumps(record)
    assert record["time"].startswith("1970-01-01T00:00:00") and record["states"] == ["a", "b"]


def test_install_sets_twistds_logger_only_for_json_and_only_without_one(tmp_path):
    text, js = tmp_path / "t.toml", tmp_path / "j.toml"
    text.write_text("[service]\n")
    js.write_text('[service]\nlog_format = "json"\n')
    assert configured_format(str(text)) == "text" and configured_format(str(js)) == "json"
    options: dict = {"logfile": "-", "nodaemon": True}
    assert not install(str(text), options) and "logger" not in options
    assert install(str(js), options) and options["logger"] == "rawsvc.logs.twistd_observer"
    assert twistd_observer().out is sys.stdout
    given = {"logger": print}
    assert not install(str(js), given) and given["logger"] is print
