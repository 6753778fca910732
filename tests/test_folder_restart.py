"""
The folder trigger's promise, end to end: the real C{twistd -n rawsvc}
watches a folder while 1,000 files are dropped into it (some large, one
written slowly), is killed with SIGKILL midway, and restarts; then every
file was processed exactly once (one output per content, by a file
action) and sits in C{done/}.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time

from conftest import ROOT

FILES = 1000
KILL_AFTER = 300  # files in done/
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    return e


def start_twistd(config: str, log_path: str) -> subprocess.Popen:
    log = open(log_path, "ab")
    return subprocess.Popen(
        [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "--logfile=-", "rawsvc", "--config", config],
        cwd=os.path.dirname(config), env=env(), stdout=log, stderr=subprocess.STDOUT,
    )


def content(i: int) -> bytes:
    body = f"file {i:04d}\n".encode()
    if i == 7:  # the slow one
        body *= 4
    if i % 150 == 13:  # a few large ones: spool files, streamed
        body += os.urandom(1 << 20) * 2
    return body


def count_files(folder: str) -> int:
    try:
        return len(os.listdir(folder))
    except FileNotFoundError:
        return 0


def wait_for(predicate, timeout: float, proc: subprocess.Popen | None, log_path: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"twistd exited with {proc.returncode}:\n" + open(log_path).read()[-3000:])
        if time.monotonic() > deadline:
            raise AssertionError("timed out:\n" + open(log_path).read()[-3000:])
        time.sleep(0.05)


class Dropper(threading.Thread):
    """Drops the files into the folder, written in place (open, write, close); file 7 slowly, in pieces."""

    def __init__(self, inbox: str, expected: dict[bytes, str]) -> None:
        super().__init__(daemon=True)
        self.inbox, self.expected = inbox, expected
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for i in range(FILES):
                data = content(i)
                name = f"job-{i:04d}.txt"
                self.expected[data] = name
                with open(os.path.join(self.inbox, name), "wb") as f:
                    if i == 7:
                        for k in range(0, len(data), 2):  # pauses shorter than `settle`
                            f.write(data[k:k + 2])
                            f.flush()
                            time.sleep(0.15)
                    else:
                        f.write(data)
                if i % 10 == 0:
                    time.sleep(0.02)
        except BaseException as e:  # reported by the test
            self.error = e


def test_kill_9_midway_every_dropped_file_runs_exactly_once(tmp_path):
    inbox, out = str(tmp_path / "in"), str(tmp_path / "out")
    os.makedirs(inbox)
    config = tmp_path / "rawsvc.toml"
    config.write_text(f"""
[service]
state_dir = "{tmp_path}/state"

[[trigger]]
name = "hot"
type = "folder"
path = "{inbox}"
pattern = "job-*.txt"
poll_interval = 0.05
settle = 0.4
flow = "save"

[[flow]]
name = "save"
actions = [ {{ type = "file", folder = "{out}", name = "${{job_id}}.out" }} ]
""")
    log_path = str(tmp_path / "twistd.log")
    expected: dict[bytes, str] = {}
    done = os.path.join(inbox, "done")

    proc = start_twistd(str(config), log_path)
    try:
        dropper = Dropper(inbox, expected)
        dropper.start()
        wait_for(lambda: count_files(done) >= KILL_AFTER, 60, proc, log_path)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed_at = count_files(done)
        assert killed_at < FILES, "the kill came too late to test anything"

        proc = start_twistd(str(config), log_path)
        dropper.join(60)
        assert dropper.error is None
        wait_for(lambda: count_files(done) >= FILES, 90, proc, log_path)
        time.sleep(0.5)  # anything run twice would show now
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)

    seen = collections.Counter()
    for name in os.listdir(out):
        if not name.endswith(".out"):
            continue  # a file action's .part-* left by the kill: never renamed into place
        with open(os.path.join(out, name), "rb") as f:
            seen[f.read()] += 1
    assert set(seen) == set(expected), f"{len(set(expected) - set(seen))} file(s) never processed"
    twice = [expected[c] for c, n in seen.items() if n > 1]
    assert not twice, f"processed more than once: {sorted(twice)[:10]}"
    assert sorted(os.listdir(done)) == sorted(expected.values())
    assert [n for n in os.listdir(inbox) if n not in ("done", "failed", ".taken")] == []
    assert os.listdir(os.path.join(inbox, ".taken")) == []
    assert os.listdir(os.path.join(inbox, "failed")) == []
    # The slowly written file was taken whole: a part of it would be an output no file has.
    assert seen[content(7)] == 1
