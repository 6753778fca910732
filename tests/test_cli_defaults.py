"""
Defaults that agree: without a config path, `rawsvc check-config`, the spool
commands and `twistd rawsvc` all read rawsvc.config.DEFAULT_CONFIG from the
working directory, and so use one state_dir, which each of them names.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from conftest import ROOT
from rawsvc.config import DEFAULT_CONFIG
from rawsvc.tap import Options

TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"

CONFIG = """
[service]
state_dir = "../a-distinctive-state-dir"

[[trigger]]
name = "orders"
type = "tcp"
listen = "tcp:0:interface=127.0.0.1"
flow = "log"

[[flow]]
name = "log"
actions = [ { type = "log" } ]
"""


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def rawsvc(cwd, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rawsvc", *args], cwd=cwd, env=env(), capture_output=True,
                          text=True, timeout=60)


def twistd_state_dir(cwd, log_path) -> str:
    """Start `twistd -n rawsvc` with no --config in cwd; the state_dir line it logs; then stop it."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", TWISTD, "-n", "--pidfile=", "--logfile=-", "rawsvc"],
                                cwd=cwd, env=env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            with open(log_path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    if "state_dir " in line and "(locked by pid" in line:
                        return line.split("state_dir ", 1)[1].split(" (locked by pid", 1)[0]
            time.sleep(0.1)
        with open(log_path, encoding="utf-8", errors="replace") as f:
            raise AssertionError(f"twistd logged no state_dir (exit {proc.poll()}):\n{f.read()}")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_twistd_check_config_and_the_spool_commands_read_the_same_default_config(tmp_path):
    assert Options()["config"] == DEFAULT_CONFIG
    work = tmp_path / "work"
    (work / "etc").mkdir(parents=True)
    (work / DEFAULT_CONFIG).write_text(CONFIG)
    expected = str(work / "a-distinctive-state-dir")  # from the config file's folder, etc/

    checked = rawsvc(work, "check-config")
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout == f"{DEFAULT_CONFIG}: OK: 1 trigger(s) [orders (tcp)], 1 flow(s) [log]; state_dir {expected}\n"

    before = rawsvc(work, "spool", "check")
    assert before.returncode == 0, before.stderr
    assert before.stdout.startswith(f"spool {expected}: none yet")

    assert twistd_state_dir(work, tmp_path / "twistd.log") == expected

    listed = rawsvc(work, "jobs")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith(f"spool {expected}: 0 job(s) shown\n")
    assert not (work / "var").exists()  # nobody fell back to the working directory's var/rawsvc
