"""`rawsvc send`'s progress bar: drawn on a terminal (a real pty) for a large file, never into a pipe."""

from __future__ import annotations

import os
import pty
import socket
import subprocess
import sys
import threading

import pytest

from rawsvc.cli.send import PROGRESS_MIN, Progress
from tests.conftest import ROOT


@pytest.fixture
def printer():
    """A printer on a thread: reads one job to its EOF, then closes; (port, list of jobs)."""
    server = socket.create_server(("127.0.0.1", 0))
    jobs: list[bytes] = []

    def serve():
        conn, _ = server.accept()
        with conn:
            chunks = []
            while data := conn.recv(1 << 16):
                chunks.append(data)
            jobs.append(b"".join(chunks))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], jobs
    server.close()
    thread.join(5)


def send(port: int, path: str, stderr_tty: bool, *extra: str) -> tuple[int, bytes]:
    """Run `rawsvc send` with standard error on a pty (or a pipe); (exit code, what it wrote there)."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    argv = [sys.executable, "-m", "rawsvc", "send", f"127.0.0.1:{port}", path, *extra]
    if not stderr_tty:
        done = subprocess.run(argv, capture_output=True, env=env, timeout=60)
        return done.returncode, done.stderr
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=slave, env=env)
    finally:
        os.close(slave)
    out = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed its end
            break
        if not data:
            break
        out.append(data)
    os.close(master)
    return proc.wait(60), b"".join(out)


@pytest.fixture
def big(tmp_path):
    path = tmp_path / "big.prn"
    data = os.urandom(3 * PROGRESS_MIN)
    path.write_bytes(data)
    return str(path), data


def test_a_large_file_shows_a_progress_bar_on_a_terminal(printer, big):
    port, jobs = printer
    path, data = big
    code, shown = send(port, path, True)
    assert code == 0, shown
    assert jobs == [data]
    text = shown.decode()
    assert "\r[" in text and "] 100% 3.0/3.0 MiB" in text and "MiB/s" in text
    assert text.endswith("\r\n")  # the line is ended (the pty turns \n into \r\n)


def test_no_progress_bar_into_a_pipe_or_with_no_progress(printer, big):
    port, jobs = printer
    path, data = big
    code, err = send(port, path, False)
    assert code == 0 and err == b"" and jobs == [data]


def test_no_progress_flag_and_small_files_draw_nothing_on_a_terminal(printer, tmp_path):
    port, jobs = printer
    small = tmp_path / "small.prn"
    small.write_bytes(b"^XA^FDsmall^FS^XZ")
    code, shown = send(port, str(small), True)
    assert code == 0 and shown == b"" and jobs == [b"^XA^FDsmall^FS^XZ"]


def test_no_progress_flag_on_a_terminal(printer, big):
    port, jobs = printer
    path, data = big
    code, shown = send(port, path, True, "--no-progress")
    assert code == 0 and shown == b"" and jobs == [data]


class Out:
    def __init__(self):
        self.text = ""

    def write(self, s):
        self.text += s

    def flush(self):
        pass


def test_the_bar_redraws_at_most_every_tenth_of_a_second_and_restarts_per_attempt():
    now = [0.0]
    out = Out()
    bar = Progress(4 << 20, out, clock=lambda: now[0])
    bar.add(1 << 20)
    bar.add(1 << 20)  # same instant: not redrawn
    assert out.text.count("\r") == 1 and "[#######.......................]  25%" in out.text
    now[0] = 1.0
    bar.add(1 << 20)
    assert out.text.count("\r") == 2 and "3.0/4.0 MiB 3.0 MiB/s" in out.text
    bar.restart()
    assert out.text.endswith("\n") and bar.done == 0
    now[0] = 2.0
    bar.add(4 << 20)
    bar.finish()
    bar.finish()  # once
    assert out.text.endswith("\r[##############################] 100% 4.0/4.0 MiB 4.0 MiB/s\n")
