"""
`rawsvc send` as users run it (a subprocess), and p910nd as a real peer for
both the CLI and the send_tcp action.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time

import pytest
import pytest_twisted

from rawsvc.config import loads
from rawsvc.context import BuildContext
from rawsvc.job import Job, Payload
from rawsvc.testing import FakePrinter
from tests.conftest import ROOT, require_tool


def rawsvc_send(*args: str, stdin: bytes = b""):
    """Run `rawsvc send ARGS` in a thread; fires with the CompletedProcess."""
    from twisted.internet.threads import deferToThread

    env = dict(os.environ, PYTHONPATH=ROOT)
    return deferToThread(
        subprocess.run,
        [sys.executable, "-m", "rawsvc", "send", *args],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=30,
    )


def _port_taken(port: int) -> bool:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return False
    except OSError as e:
        return e.errno == errno.EADDRINUSE
    finally:
        s.close()


@pytest.fixture
def p910nd(tmp_path):
    """A p910nd on 127.0.0.1:910N writing jobs to a file: (destination, file)."""
    tool = require_tool("p910nd")
    try:
        os.makedirs("/var/lock/p910nd", exist_ok=True)
    except OSError as e:
        pytest.skip(f"p910nd needs /var/lock/p910nd: {e}")
    digit = next((n for n in range(10) if not _port_taken(9100 + n)), None)
    if digit is None:
        pytest.skip("ports 9100-9109 are all taken")
    out = tmp_path / "p910nd.out"
    out.write_bytes(b"")
    proc = subprocess.Popen(
        [tool, "-d", "-b", "-i", "127.0.0.1", "-f", str(out), str(digit)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 5
    while not _port_taken(9100 + digit):
        assert proc.poll() is None, "p910nd exited"
        assert time.monotonic() < deadline, "p910nd did not start listening"
        time.sleep(0.01)
    yield f"127.0.0.1:{9100 + digit}", out
    proc.terminate()
    proc.wait(5)


@pytest_twisted.inlineCallbacks
def test_cli_sends_a_file_to_p910nd_byte_identical(p910nd, tmp_path):
    dest, out = p910nd
    blob = os.urandom(700_000)
    (tmp_path / "job.prn").write_bytes(blob)
    done = yield rawsvc_send(dest, str(tmp_path / "job.prn"))
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == blob


@pytest_twisted.inlineCallbacks
def test_action_sends_a_spilled_job_to_p910nd_byte_identical(p910nd, tmp_path, reactor):
    dest, out = p910nd
    config = loads(
        f'[[flow]]\nname = "f"\nactions = [ {{ type = "send_tcp", destination = "{dest}", wait_for_eof = true, eof_timeout = 10 }} ]\n',
        context=BuildContext(reactor=reactor),
    )
    payload = Payload(spool_dir=str(tmp_path / "spool"), threshold=1 << 16)
    blob = os.urandom(2 << 20)
    payload.write(blob)
    payload.close()
    j = yield config.flows["f"].run(Job("t", payload))
    assert j.state == "done", j.error
    assert out.read_bytes() == blob


@pytest.fixture
def printer():
    p = FakePrinter(reply=b"@PJL INFO STATUS\r\nCODE=10001\r\n\x0c")
    yield p
    pytest_twisted.blockon(p.stop())


@pytest_twisted.inlineCallbacks
def test_cli_reads_stdin_half_closes_and_prints_the_reply(printer):
    printer.listen()
    done = yield rawsvc_send(printer.destination, "-", stdin=b"\x1b%-12345X@PJL INFO STATUS\r\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"@PJL INFO STATUS\r\nCODE=10001\r\n\x0c"
    assert printer.jobs[0].bytes == b"\x1b%-12345X@PJL INFO STATUS\r\n"
    assert printer.jobs[0].eof_at is not None


@pytest_twisted.inlineCallbacks
def test_cli_encoding_decodes_the_reply(printer, tmp_path):
    printer.reply = "Bereit \u00e9".encode("cp437")
    printer.listen()
    done = yield rawsvc_send(printer.destination, "--encoding", "cp437", stdin=b"x")
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode() == "Bereit \u00e9"


@pytest_twisted.inlineCallbacks
def test_cli_refused_exits_3(printer):
    printer.refuse()
    done = yield rawsvc_send(printer.destination, "--retries", "1", "--retry-delay", "0.01", stdin=b"x")
    assert done.returncode == 3
    assert b"connection refused" in done.stderr and b"(2 attempts)" in done.stderr


@pytest_twisted.inlineCallbacks
def test_cli_retries_until_the_printer_accepts(printer, reactor):
    from twisted.internet.task import deferLater

    printer.refuse()
    running = rawsvc_send(printer.destination, "--retries", "12", "--retry-delay", "0.05", stdin=b"late job")
    yield deferLater(reactor, 0.6, printer.accept)
    done = yield running
    assert done.returncode == 0, done.stderr
    assert printer.jobs[-1].bytes == b"late job"


@pytest_twisted.inlineCallbacks
def test_cli_printer_that_never_closes_times_out_with_4(printer):
    printer.close_on_eof = False
    printer.listen()
    done = yield rawsvc_send(printer.destination, "--timeout", "0.3", stdin=b"x")
    assert done.returncode == 4
    assert b"reply timeout" in done.stderr
    assert done.stdout == b"@PJL INFO STATUS\r\nCODE=10001\r\n\x0c"


@pytest_twisted.inlineCallbacks
def test_cli_delay_closes_without_waiting_for_the_printer(printer):
    printer.close_on_eof = False
    printer.listen()
    done = yield rawsvc_send(printer.destination, "--delay", "0.2", stdin=b"x")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"@PJL INFO STATUS")


@pytest_twisted.inlineCallbacks
def test_cli_reset_mid_job_exits_5(printer, tmp_path):
    printer.reset_after = 20_000
    printer.listen()
    (tmp_path / "big").write_bytes(b"z" * 800_000)
    done = yield rawsvc_send(printer.destination, str(tmp_path / "big"))
    assert done.returncode == 5, done.stderr
    assert b"reset mid-job" in done.stderr and b"of 800000 bytes were written" in done.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["printer"], b"has no port"),
        (["127.0.0.1:9100", "/no/such/file"], b"cannot read /no/such/file"),
        (["127.0.0.1:9100", "--delay", "soon"], b"is not a number"),
        (["127.0.0.1:9100", "--retries", "-1"], b""),
        ([], b"HOST:PORT"),
    ],
)
@pytest_twisted.inlineCallbacks
def test_cli_bad_arguments_exit_2(args, message):
    done = yield rawsvc_send(*args)
    assert done.returncode == 2
    assert message in done.stderr
