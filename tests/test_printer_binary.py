"""
Binary jobs through the printer trigger with default settings: every job a
real client sends arrives as exactly one archived job, byte-identical
(sha256), whatever 0x04, %! or ~HS bytes it holds; a PostScript job still
ends at its Ctrl-D.  Clients: CUPS's socket backend, a Python client that
writes and fully closes (as python-escpos does), and a real cupsd raw queue.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from conftest import require_tool
from printer_support import UEL, archive_flow, archived, printer, wait_for
from support import port_of

CUPS_SOCKET = "/usr/lib/cups/backend/socket"
JOBS = 4
SIZE = 200_000


def binary_job(seed: int, size: int = SIZE) -> bytes:
    """Random bytes with many Ctrl-Ds (0x04), and %!, ~HS and @PJL lines past the start."""
    rnd = random.Random(seed)
    data = bytearray(rnd.randbytes(size))
    for i in rnd.sample(range(1, size), size // 100):
        data[i] = 0x04
    for marker in (b"%!PS-Adobe-3.0\n", b"~HS", b"@PJL INFO STATUS\r\n", b"\x04%!"):
        at = rnd.randrange(1, size - 20)
        data[at : at + len(marker)] = marker
    data[0] = 0x1F  # not how PostScript, ZPL or PJL begin
    assert UEL not in data
    return bytes(data)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def full_close_client(port: int, data: bytes) -> None:
    """Write the job and close, never half-closing (python-escpos, brother_ql, zpl)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(data)
    s.close()


@pytest.fixture
def jobs_dir(tmp_path):
    return tmp_path / "jobs"


def assert_one_job_each(jobs_dir, sent: list[bytes]) -> None:
    got = archived(jobs_dir)
    assert len(got) == len(sent), f"{len(sent)} jobs sent, {len(got)} archived"
    assert sorted(map(sha, got)) == sorted(map(sha, sent))


@pytest_twisted.inlineCallbacks
def test_binary_jobs_through_cups_socket_backend_are_each_one_job(service_factory, jobs_dir, tmp_path):
    backend = require_tool(CUPS_SOCKET)
    svc = service_factory(printer() + archive_flow(jobs_dir))
    uri = f"socket://127.0.0.1:{port_of(svc, 'p')}/?snmp=no"
    sent = [binary_job(seed) for seed in range(JOBS)]
    for n, data in enumerate(sent):
        job = tmp_path / f"job{n}.bin"
        job.write_bytes(data)
        result = yield deferToThread(
            subprocess.run,
            ["sh", "-c", f"exec '{backend}' {n + 1} user title 1 '' '{job}' 3>'{tmp_path}/back.out' 4</dev/null"],
            env=dict(os.environ, DEVICE_URI=uri), stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        yield wait_for(lambda: len(archived(jobs_dir)) >= n + 1)
    assert_one_job_each(jobs_dir, sent)


@pytest_twisted.inlineCallbacks
def test_binary_jobs_from_a_client_that_closes_without_half_close(service_factory, jobs_dir):
    svc = service_factory(printer() + archive_flow(jobs_dir))
    port = port_of(svc, "p")
    sent = [binary_job(100 + seed) for seed in range(JOBS)]
    for n, data in enumerate(sent):
        yield deferToThread(full_close_client, port, data)
        yield wait_for(lambda: len(archived(jobs_dir)) >= n + 1)
    assert_one_job_each(jobs_dir, sent)


@pytest_twisted.inlineCallbacks
def test_postscript_with_ctrl_d_still_splits_into_its_jobs(service_factory, jobs_dir):
    svc = service_factory(printer() + archive_flow(jobs_dir))
    first = UEL + b"@PJL ENTER LANGUAGE = POSTSCRIPT\r\n\x00binary image\x04"
    second = b"\x04%!PS-Adobe-3.0\nshowpage\n\x04"
    pcl = UEL + b"@PJL ENTER LANGUAGE=PCL\r\n\x1bE\x04raster\x04\x1bE" + UEL
    yield deferToThread(full_close_client, port_of(svc, "p"), first + second + pcl)
    yield wait_for(lambda: len(archived(jobs_dir)) == 3)
    assert archived(jobs_dir) == [first, second, pcl]


# A real cupsd of our own (PEERS.md) --------------------------------------


class Cupsd:
    """A private cupsd in a world-traversable temp folder (backends run as user lp)."""

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="rawsvc-cupsd-")
        os.chmod(self.root, 0o755)
        for sub in ("etc", "spool", "cache", "state", "log", "run"):
            os.makedirs(os.path.join(self.root, sub), mode=0o755)
        os.makedirs(os.path.join(self.root, "tmp"))
        os.chmod(os.path.join(self.root, "tmp"), 0o1777)
        self.socket = os.path.join(self.root, "run", "cups.sock")
        self.env = dict(os.environ, CUPS_SERVER=self.socket)
        r = self.root
        with open(os.path.join(r, "etc", "cups-files.conf"), "w") as f:
            f.write(
                f"ServerRoot {r}/etc\nRequestRoot {r}/spool\nCacheDir {r}/cache\nStateDir {r}/state\n"
                f"TempDir {r}/tmp\nAccessLog {r}/log/access_log\nErrorLog {r}/log/error_log\n"
                f"PageLog {r}/log/page_log\nServerBin /usr/lib/cups\nDataDir /usr/share/cups\n"
                f"SystemGroup root\nPrintcap {r}/state/printcap\n"
            )
        with open(os.path.join(r, "etc", "cupsd.conf"), "w") as f:
            f.write(
                f"Listen {self.socket}\nDefaultAuthType None\nLogLevel info\nBrowsing No\n"
                "<Location />\n  Order allow,deny\n  Allow all\n</Location>\n"
                "<Policy default>\n  <Limit All>\n    Order allow,deny\n    Allow all\n  </Limit>\n</Policy>\n"
            )
        self.proc = subprocess.Popen(
            ["cupsd", "-f", "-c", f"{r}/etc/cupsd.conf", "-s", f"{r}/etc/cups-files.conf"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 15
        while self.run("lpstat", "-r", check=False).stdout.strip() != "scheduler is running":
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"cupsd did not start: {self.log()}")
            time.sleep(0.1)

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        for _ in range(20):  # a scheduler just up may still turn a client away
            result = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=30)
            if "Unable to connect to server" not in result.stderr:
                break
            time.sleep(0.1)
        if check and result.returncode:
            raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}: {result.stderr} {self.log()}")
        return result

    def log(self) -> str:
        try:
            with open(os.path.join(self.root, "log", "error_log")) as f:
                return f.read()[-3000:]
        except OSError:
            return "(no error_log)"

    def wait_idle(self, queue: str, timeout: float = 60) -> None:
        """Every job of C{queue} completed (none pending), else fail with cupsd's log."""
        deadline = time.monotonic() + timeout
        while self.run("lpstat", "-o", queue, check=False).stdout.strip():
            if time.monotonic() > deadline:
                raise AssertionError(f"jobs still pending on {queue}: {self.log()}")
            time.sleep(0.2)
        done = self.run("lpstat", "-W", "completed", "-o", queue, check=False).stdout
        assert done.strip(), f"no completed job on {queue}: {self.log()}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def cupsd():
    require_tool("cupsd")
    require_tool("lpadmin")
    require_tool(CUPS_SOCKET)
    server = Cupsd()
    yield server
    server.stop()


@pytest_twisted.inlineCallbacks
def test_binary_jobs_through_a_real_cupsd_raw_queue(service_factory, jobs_dir, cupsd):
    svc = service_factory(printer() + archive_flow(jobs_dir))
    uri = f"socket://127.0.0.1:{port_of(svc, 'p')}/?snmp=no"
    yield deferToThread(cupsd.run, "lpadmin", "-p", "q", "-E", "-v", uri, "-m", "raw")
    sent = [binary_job(200 + seed) for seed in range(JOBS)]
    for n, data in enumerate(sent):
        path = os.path.join(cupsd.root, "tmp", f"job{n}.bin")
        with open(path, "wb") as f:
            f.write(data)
        yield deferToThread(cupsd.run, "lp", "-d", "q", "-o", "raw", path)
    yield deferToThread(cupsd.wait_idle, "q")
    yield wait_for(lambda: len(archived(jobs_dir)) >= JOBS, timeout=10)
    assert_one_job_each(jobs_dir, sent)
