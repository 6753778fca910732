"""
A job a paper-out virtual printer holds is stored at once, though its flow
waits: a client that writes and closes (CUPS's backend exits 0 so) counts
it printed, so a SIGKILL while it is held must not lose it.  Real twistd with the spool; the condition is set
through the admin HTTP API; after the kill and a restart the job runs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import time
import urllib.request

from test_spool_restart import start_twistd

CONFIG = """
[service]
state_dir = "{state}"

[[trigger]]
name = "p"
type = "printer"
listen = "tcp:{port}:interface=127.0.0.1"
flow = "archive"

[[flow]]
name = "archive"
actions = [ {{ type = "file", folder = "{out}", name = "${{job_id}}.prn" }} ]

[admin.http]
listen = "tcp:{admin}:interface=127.0.0.1"
"""


def _free() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.5).close()
        return True
    except OSError:
        return False


def _post(admin: int, body: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{admin}/printers/p/condition", json.dumps(body).encode(),
                                     {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def _stored(state) -> bool:
    """The job is in the spool's database (committed), though its flow is held."""
    with sqlite3.connect(f"file:{state}/spool.db?mode=ro", uri=True) as db:
        return db.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1


def _printer(admin: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/printers/p", timeout=10) as answer:
        return json.loads(answer.read())


def test_a_held_job_survives_a_sigkill_and_prints_after_the_restart(tmp_path):
    port, admin = _free(), _free()
    out = tmp_path / "out"
    config = tmp_path / "rawsvc.toml"
    config.write_text(CONFIG.format(state=tmp_path / "state", port=port, admin=admin, out=out))
    log = str(tmp_path / "twistd.log")
    proc = start_twistd(str(config), log)
    try:
        _wait(lambda: _listening(port) and _listening(admin), 30, "the printer and admin ports")
        assert _post(admin, {"condition": "paper_out", "on": True})["conditions"] == ["paper_out"]
        label = b"^XA^FO20,20^ADN,36,20^FDheld, then killed^FS^XZ" + bytes(range(256))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # write and close: no answer awaited
            s.sendall(label)
        _wait(lambda: _printer(admin).get("held") == 1 or None, 20, "the job held")
        _wait(lambda: _stored(tmp_path / "state"), 20, "the held job stored")
        assert not out.exists() or not list(out.iterdir())  # held: its flow has not run
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

        proc = start_twistd(str(config), log)  # the condition is not kept: the job resumes and prints
        printed = _wait(lambda: [p.read_bytes() for p in out.glob("*.prn")] if out.exists() else None, 30,
                        "the resumed job printed")
        assert printed == [label]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
