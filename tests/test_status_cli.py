"""C{rawsvc status HOST[:PORT]}: prints the UDP status and exits by state."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from conftest import ROOT
from printer_support import GateAction, archive_flow, printer, status_trigger, udp_port, wait_for
from rawsvc.cli import status as status_cli
from support import port_of, start_service, stop_service


@pytest.fixture
def svc(tmp_path):
    service = start_service(tmp_path, printer() + status_trigger() + archive_flow(tmp_path / "jobs", gate=True))
    yield service
    GateAction.open_all()
    stop_service(service)


def rawsvc_status(python, *args):
    return deferToThread(
        subprocess.run, [python, "-m", "rawsvc", "status", *args],
        capture_output=True, timeout=30, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
    )


@pytest_twisted.inlineCallbacks
def test_idle_prints_status_and_exits_0(svc, python):
    result = yield rawsvc_status(python, f"127.0.0.1:{udp_port(svc)}")
    assert result.returncode == 0
    assert result.stdout.startswith(b"STATE=idle\nPRINTER=p\n")


@pytest_twisted.inlineCallbacks
def test_processing_exits_1_and_json_shows_the_job(svc, python):
    s = yield deferToThread(socket.create_connection, ("127.0.0.1", port_of(svc, "p")), 5)
    try:
        yield deferToThread(s.sendall, b"job")
        yield deferToThread(s.shutdown, socket.SHUT_WR)
        yield wait_for(lambda: GateAction.gates)
        result = yield rawsvc_status(python, "--json", f"127.0.0.1:{udp_port(svc)}")
        assert result.returncode == status_cli.EXIT_BUSY == 1
        assert b'"STATE": "processing"' in result.stdout
        GateAction.open_all()
    finally:
        s.close()


@pytest_twisted.inlineCallbacks
def test_paused_exits_3(svc, python):
    yield svc.triggers["p"].pause()
    result = yield rawsvc_status(python, f"127.0.0.1:{udp_port(svc)}")
    assert result.returncode == status_cli.EXIT_PAUSED == 3


@pytest_twisted.inlineCallbacks
def test_no_answer_exits_5_after_the_timeout(python):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # bound, never answers
        port = silent.getsockname()[1]
        result = yield rawsvc_status(python, "--timeout", "0.5", f"127.0.0.1:{port}")
    assert result.returncode == status_cli.EXIT_NO_ANSWER == 5
    assert b"no answer" in result.stderr


def test_bad_address_is_a_usage_error(capsys):
    from rawsvc.cli import main

    assert main(["status", "127.0.0.1:notaport"]) == status_cli.EXIT_USAGE


@pytest.mark.parametrize("text,expected", [
    ("printer", ("printer", 9101)),
    ("printer:9102", ("printer", 9102)),
    ("[::1]:9102", ("::1", 9102)),
    ("[::1]", ("::1", 9101)),
    ("fe80::1", ("fe80::1", 9101)),
])
def test_split_address(text, expected):
    assert status_cli.split_address(text) == expected
