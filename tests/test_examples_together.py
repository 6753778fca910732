"""
A new user starts all three example configs at once, as README shows, and
prints to each: the TCP example answers, the virtual printer archives the
job, and the print proxy forwards it to README's lab printer (socat, one
file per job).  Real twistd processes on the examples' own ports, in a copy
of etc/ (so their state lands in the copy's var/).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT, require_tool

TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
TCP_PORTS = (9200, 9201, 8080, 9100, 8081, 9110, 8082, 9105)
UDP_PORTS = (9101, 9111)


def readme() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        return f.read()


def readme_block(after: str) -> list[str]:
    """The command lines of the first ```sh block after C{after} in README."""
    text = readme()
    start = text.index(after)
    m = re.compile(r"```sh\n(.*?)```", re.S).search(text, start)
    assert m, f"README has no ```sh block after {after!r}"
    return [line for line in m.group(1).splitlines() if line.strip()]


def _free(port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def checkout(tmp_path):
    busy = [p for p in TCP_PORTS if not _free(p, socket.SOCK_STREAM)]
    busy += [p for p in UDP_PORTS if not _free(p, socket.SOCK_DGRAM)]
    if busy:
        message = f"the examples' ports {busy} are in use on this machine"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    root = tmp_path / "rawsvc"
    shutil.copytree(os.path.join(ROOT, "etc"), root / "etc")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "twistd"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -c "{TWISTD}" "$@"\n')
    shim.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs: list[subprocess.Popen] = []

    def start(command: str) -> subprocess.Popen:
        proc = subprocess.Popen(["bash", "-c", f"exec {command.split('#')[0].strip()}"], cwd=root, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        procs.append(proc)
        return proc

    yield root, start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def wait_listening(port: int, procs: list[subprocess.Popen], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            assert proc.poll() is None, f"{proc.args} exited {proc.returncode}:\n{proc.stdout.read()}"
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port} after {timeout} s")


def nc(port: int, data: bytes) -> bytes:
    result = subprocess.run([require_tool("nc"), "-N", "127.0.0.1", str(port)], input=data,
                            capture_output=True, timeout=20)
    assert result.returncode == 0, result.stderr
    return result.stdout


def wait_files(folder, count: int, timeout: float = 20.0) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(folder.glob("*.prn")) if folder.exists() else []
        if len(found) >= count:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{folder}: {count} job file(s) expected, found {len(found)}")


def test_all_three_examples_run_side_by_side_and_print(checkout):
    require_tool("socat")
    root, start = checkout
    lab = readme_block("<!-- recipe: lab-printer -->")
    assert len(lab) == 1
    mkdir, _, socat_line = lab[0].partition(" && ")
    subprocess.run(["bash", "-c", mkdir], cwd=root, check=True)
    printer = start(socat_line)
    twistds = [start(line) for line in readme_block("give each twistd its own pid file")]
    assert len(twistds) == 3
    everything = [printer, *twistds]
    for port in (9105, 9200, 9201, 9100, 9110):
        wait_listening(port, everything)

    assert re.fullmatch(rb"OK [0-9a-f]{13}-[0-9a-f]{8}\r\n", nc(9200, b"ABC123;4\r\n"))
    assert re.fullmatch(rb"STORED [0-9a-f]{13}-[0-9a-f]{8} 11 bytes\r\n", nc(9201, b"hello label"))
    label = b"^XA^FO50,50^ADN,36,20^FDto the virtual printer^FS^XZ"
    with socket.create_connection(("127.0.0.1", 9100), timeout=10) as s:  # as a 9100 client prints
        s.sendall(label)
    proxied = bytes(range(256)) * 40  # binary, byte-exact through the proxy
    with socket.create_connection(("127.0.0.1", 9110), timeout=10) as s:
        s.sendall(proxied)

    jobs = wait_files(root / "var" / "jobs", 2)  # the archive example's job and the virtual printer's
    assert sorted(p.read_bytes() for p in jobs) == sorted([b"hello label", label])
    # (our probe of port 9105 above made an empty file there: a connection without a job)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        printed = [p.read_bytes() for p in (root / "lab-jobs").glob("*.prn") if p.stat().st_size]
        if printed and len(printed[0]) >= len(proxied):
            break
        time.sleep(0.1)
    assert printed == [proxied]
    for name in ("rawsvc", "virtual-printer", "print-proxy"):
        assert (root / "var" / name / "spool.db").exists(), name

    for proc in twistds:
        proc.send_signal(signal.SIGTERM)
    for proc in twistds:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode in (0, -signal.SIGTERM), out
        assert "Traceback" not in out, out
        assert "rawsvc stopped" in out, out
