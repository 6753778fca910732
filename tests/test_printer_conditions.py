"""
Simulated printer conditions and the Zebra/SGD answers, on a real virtual
printer on 127.0.0.1: set from the admin API and the manhole namespace,
shown in every status answer, and changing what the printer does with jobs.
"""

from __future__ import annotations

import json
import socket

import pytest
import pytest_twisted
from twisted.internet.defer import ensureDeferred
from twisted.internet.threads import deferToThread

from printer_support import UEL, archive_flow, archived, printer, status_trigger, udp_port, udp_query, wait_for
from rawsvc.admin import namespace
from rawsvc.triggers import zpl_status
from rawsvc.triggers.appsocket import parse_status
from support import port_of, recv_all, recv_until


def ask(port: int, data: bytes, until: bytes) -> bytes:
    """Send C{data} on a new connection and read until C{until} (blocking: run it on a thread)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        return recv_until(s, until)


def ask_sgd(port: int, var: str) -> bytes:
    """An SGD getvar on a new connection: read up to the value's closing quote."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f'! U1 getvar "{var}"\r\n'.encode())
        buf = b""
        while buf.count(b'"') < 2:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
        return buf


# The answers, as bytes ----------------------------------------------------------


def test_hqes_of_a_healthy_printer_has_no_error_flags():
    assert zpl_status.hqes(()) == (
        b"\x02\r\n\r\n  PRINTER STATUS\r\n   ERRORS:         0 00000000 00000000\r\n"
        b"   WARNINGS:       0 00000000 00000000\r\n\x03\r\n")


def test_hqes_sets_media_out_ribbon_out_head_open_and_paused_bits():
    assert b"ERRORS:         1 00000000 00010007\r\n" in zpl_status.hqes(
        ("paper_out", "ribbon_out", "head_open", "paused"))


def test_hi_names_model_firmware_resolution_and_memory():
    ident = zpl_status.ZebraIdentity(model="ZT410-300dpi", firmware="V75.20.01Z", dots_per_mm=12)
    assert zpl_status.hi(ident) == b"\x02ZT410-300dpi,V75.20.01Z,12,8192KB\x03\r\n"


def test_sgd_lines_parse_with_either_spelling():
    assert zpl_status.parse_sgd(b'! U1 getvar "Media.Status"\r\n') == zpl_status.SgdCommand("getvar", "media.status")
    assert zpl_status.parse_sgd(b'! U1 setvar "x.y" "on"') == zpl_status.SgdCommand("setvar", "x.y", "on")
    assert zpl_status.parse_sgd(b"! hello") is None


# Over the wire ----------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_sgd_getvar_answers_from_model_and_conditions_and_setvar_is_ignored(service_factory, tmp_path):
    out = tmp_path / "jobs"
    svc = service_factory(printer(model="ZD421-203dpi") + archive_flow(out))
    port = port_of(svc, "p")
    namespace.condition(svc, "p", "paper_out")
    answers = {}
    for var in ("device.languages", "device.product_name", "device.friendly_name", "appl.name",
                "media.status", "head.latch", "device.host_status", "no.such.var"):
        answers[var] = yield deferToThread(ask_sgd, port, var)
    assert answers["device.languages"] == b'"zpl"'
    assert answers["device.product_name"] == b'"ZD421-203dpi"'
    assert answers["device.friendly_name"] == b'"p"'
    assert answers["appl.name"] == b'"V1.0.0-rawsvc"'
    assert answers["media.status"] == b'"out"'
    assert answers["head.latch"] == b'"ok"'
    assert answers["device.host_status"].startswith(b'"030,1,0,1245,')
    assert answers["no.such.var"] == b'"?"'

    def setvar():
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b'! U1 setvar "acme.unknown" "42"\r\n')
            s.shutdown(socket.SHUT_WR)
            return recv_all(s)

    assert (yield deferToThread(setvar)) == b""
    assert svc.triggers["p"].counters.jobs_received == 0  # no job: settings and questions are not print data
    assert archived(out) == []


@pytest_twisted.inlineCallbacks
def test_offline_closes_the_port_and_clearing_it_opens_it_again(service_factory, tmp_path):
    svc = service_factory(printer() + archive_flow(tmp_path / "jobs"))
    trigger = svc.triggers["p"]
    port = port_of(svc, "p")
    namespace.condition(svc, "p", "offline")
    yield trigger.port_settled()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert not trigger.listening
    namespace.condition(svc, "p", "offline", on=False)
    yield trigger.port_settled()
    status = yield deferToThread(ask, port, b"~HS", b"1234,0\x03\r\n")
    assert status.count(b"\x03") == 3


@pytest_twisted.inlineCallbacks
def test_held_jobs_run_in_arrival_order_once_every_holding_condition_is_cleared(service_factory, tmp_path):
    out = tmp_path / "jobs"
    svc = service_factory(printer() + archive_flow(out))
    port = port_of(svc, "p")
    namespace.condition(svc, "p", "paper_out")
    namespace.condition(svc, "p", "head_open")

    def send(data):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(data)

    for n in range(3):
        yield deferToThread(send, f"^XA^FDlabel {n}^FS^XZ".encode())
    # One client at a time: the first job is taken and held, the others wait their turn.
    yield wait_for(lambda: (svc.triggers["p"].snapshot().held, svc.triggers["p"].snapshot().queued) == (1, 2))
    namespace.condition(svc, "p", "paper_out", on=False)
    assert archived(out) == []  # the head is still open
    assert svc.triggers["p"].snapshot().held == 1
    namespace.condition(svc, "p", "all", on=False)
    yield wait_for(lambda: len(archived(out)) == 3)
    assert archived(out) == [f"^XA^FDlabel {n}^FS^XZ".encode() for n in range(3)]


@pytest_twisted.inlineCallbacks
def test_pjl_status_and_the_udp_status_answer_show_the_condition(service_factory, tmp_path):
    svc = service_factory(printer() + status_trigger() + archive_flow(tmp_path / "jobs"))
    port = port_of(svc, "p")
    namespace.condition(svc, "p", "paper_out")
    answer = yield deferToThread(ask, port, UEL + b"@PJL INFO STATUS\r\n", b"\x0c")
    assert answer == b'@PJL INFO STATUS\r\nCODE=41000\r\nDISPLAY="LOAD PAPER"\r\nONLINE=TRUE\r\n\x0c'
    datagram = yield deferToThread(udp_query, udp_port(svc))
    fields = parse_status(datagram)
    assert (fields["CONDITIONS"], fields["HELD"]) == ("paper_out", "0")


def test_the_manhole_namespace_sets_and_clears_conditions(service_factory, tmp_path):
    svc = service_factory(printer() + archive_flow(tmp_path / "jobs"))
    ns = namespace.repl_namespace(svc)
    assert ns["condition"]("p", "ribbon_out")["conditions"] == ["ribbon_out"]
    assert ns["printer"]("p")["conditions"] == ["ribbon_out"]
    assert ns["clear"]("p")["conditions"] == []
    with pytest.raises(ValueError, match="unknown printer condition 'jammed'"):
        ns["condition"]("p", "jammed")


# The admin HTTP API ---------------------------------------------------------------------


ADMIN = '[admin.http]\nlisten = "tcp:0:interface=127.0.0.1"\n'


def _post(url: str, body: bytes, content_type: str = "application/json"):
    import treq
    from treq.client import HTTPClient
    from twisted.internet import reactor
    from twisted.web.client import Agent

    client = HTTPClient(Agent(reactor))

    async def go():
        response = await client.post(url, data=body, headers={"content-type": [content_type]})
        return response.code, await treq.content(response)

    return ensureDeferred(go())


@pytest_twisted.inlineCallbacks
def test_a_loopback_post_sets_a_condition_and_bad_requests_say_why(service_factory, tmp_path):
    svc = service_factory(printer() + archive_flow(tmp_path / "jobs") + ADMIN)
    base = f"http://127.0.0.1:{svc.getServiceNamed('admin-http').port.getHost().port}/printers"
    code, body = yield _post(f"{base}/p/condition", json.dumps({"condition": "paper_out", "on": True}).encode())
    assert code == 200 and json.loads(body)["conditions"] == ["paper_out"]
    assert svc.triggers["p"].snapshot().conditions == ("paper_out",)
    code, body = yield _post(f"{base}/p/condition", b"condition=paper_out", "application/x-www-form-urlencoded")
    assert code == 415
    code, body = yield _post(f"{base}/p/condition", b'{"condition": "jammed"}')
    assert code == 400 and b"unknown printer condition" in body
    code, body = yield _post(f"{base}/nope/condition", b'{"condition": "paper_out"}')
    assert code == 404 and b"no trigger named 'nope'" in body
    code, body = yield _post(f"{base}/p/condition", b'{"condition": "all", "on": false}')
    assert code == 200 and json.loads(body)["conditions"] == []


@pytest_twisted.inlineCallbacks
def test_a_stop_does_not_wait_on_a_held_job_and_hands_it_to_the_sink(tmp_path):
    from support import start_service

    out = tmp_path / "jobs"
    svc = start_service(tmp_path, printer() + archive_flow(out))
    namespace.condition(svc, "p", "paper_out")

    def send():
        with socket.create_connection(("127.0.0.1", port_of(svc, "p")), timeout=5) as s:
            s.sendall(b"^XA^FDkept^FS^XZ")

    yield deferToThread(send)
    yield wait_for(lambda: svc.triggers["p"].snapshot().held == 1)
    yield svc.stopService()
    assert archived(out) == [b"^XA^FDkept^FS^XZ"]  # not lost (with the spool, it is stored and resumes)
