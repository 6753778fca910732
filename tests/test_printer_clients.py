"""
Real printer client libraries from PyPI against rawsvc's virtual printer on
127.0.0.1: the `zpl` package's TCPPrinter and python-escpos's Network print
byte-correctly, and `zpl` reads ~HS, ~HQES and ~HI from the printer's model
and simulated conditions (issue 14).
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from printer_support import GateAction, archive_flow, archived, printer, wait_for
from rawsvc.admin import namespace
from support import port_of

zpl = pytest.importorskip("zpl")
escpos_printer = pytest.importorskip("escpos.printer")


@pytest.fixture
def make(service_factory):
    yield service_factory
    GateAction.open_all()


def a_label() -> str:
    label = zpl.Label(30, 60)
    label.origin(2, 2)
    label.write_text("rawsvc", char_height=5, char_width=4, line_width=50)
    label.endorigin()
    return label.dumpZPL()


def zpl_client(port: int, work):
    """Run C{work(printer)} on a thread with a connected zpl TCPPrinter, then close it."""

    def run():
        p = zpl.TCPPrinter("127.0.0.1", port)
        try:
            return work(p)
        finally:
            p.socket.close()

    return deferToThread(run)


@pytest_twisted.inlineCallbacks
def test_the_zpl_package_prints_a_label_byte_for_byte(make, tmp_path):
    out = tmp_path / "jobs"
    svc = make(printer(model="ZD421-203dpi") + archive_flow(out, file_name="${job_id}-${language}-${labels}.zpl"))
    text = a_label()
    yield zpl_client(port_of(svc, "p"), lambda p: p.send_job(text))
    yield wait_for(lambda: len(archived(out)) == 1)
    assert archived(out) == [text.encode("utf-8")]
    assert sorted(out.iterdir())[0].name.endswith("-zpl-1.zpl")


@pytest_twisted.inlineCallbacks
def test_the_zpl_package_reads_a_healthy_printer(make, tmp_path):
    svc = make(printer(model="ZD421-203dpi", firmware="V84.20.18Z") + archive_flow(tmp_path / "jobs"))

    def ask(p):
        return p.get_printer_status(), p.get_printer_errors(), p.get_printer_info()

    status, errors, info = yield zpl_client(port_of(svc, "p"), ask)
    assert (status["paper_out"], status["pause"], status["head_up"], status["ribbon_out"]) == ("0", "0", "0", "0")
    assert errors == ("0", [], "0", [])
    assert info == {"model": "ZD421-203dpi", "version": "V84.20.18Z", "dpmm": "8", "mem": "8192KB"}
    assert p_dpi(info) == 200


def p_dpi(info) -> int:
    return int(info["dpmm"]) * 25


@pytest_twisted.inlineCallbacks
def test_the_zpl_package_reports_paper_out_and_the_job_waits_until_it_is_cleared(make, tmp_path):
    out = tmp_path / "jobs"
    svc = make(printer() + archive_flow(out))
    port = port_of(svc, "p")
    namespace.condition(svc, "p", "paper_out")

    status, errors = yield zpl_client(port, lambda p: (p.get_printer_status(), p.get_printer_errors()))
    assert status["paper_out"] == "1"
    assert errors[2:] == ("1", ["Media Out"])

    text = a_label()
    yield zpl_client(port, lambda p: p.send_job(text))
    yield wait_for(lambda: svc.triggers["p"].snapshot().held == 1)
    assert archived(out) == []  # taken, but held: its flow has not run
    assert svc.triggers["p"].snapshot().conditions == ("paper_out",)

    namespace.condition(svc, "p", "paper_out", on=False)
    yield wait_for(lambda: len(archived(out)) == 1)
    assert archived(out) == [text.encode("utf-8")]
    status = yield zpl_client(port, lambda p: p.get_printer_status())
    assert status["paper_out"] == "0"


@pytest_twisted.inlineCallbacks
def test_the_zpl_package_sees_head_open_and_ribbon_out(make, tmp_path):
    svc = make(printer() + archive_flow(tmp_path / "jobs"))
    namespace.condition(svc, "p", "head_open")
    status, errors = yield zpl_client(port_of(svc, "p"), lambda p: (p.get_printer_status(), p.get_printer_errors()))
    assert (status["head_up"], status["ribbon_out"]) == ("1", "0")
    assert errors[2:] == ("1", ["Head Open"])
    namespace.condition(svc, "p", "head_open", on=False)
    namespace.condition(svc, "p", "ribbon_out")
    status, errors = yield zpl_client(port_of(svc, "p"), lambda p: (p.get_printer_status(), p.get_printer_errors()))
    assert (status["head_up"], status["ribbon_out"]) == ("0", "1")
    assert errors[2:] == ("1", ["Ribbon Out"])


@pytest_twisted.inlineCallbacks
def test_python_escpos_network_prints_a_receipt_byte_for_byte(make, tmp_path):
    out = tmp_path / "jobs"
    svc = make(printer() + archive_flow(out, file_name="${job_id}-${language}.bin"))
    port = port_of(svc, "p")

    def receipt(p):
        p.set(bold=True)
        p.text("Order 42\n")
        p.set(bold=False)
        p.text("2 x label roll   12.50\n")
        p.barcode("4006381333931", "EAN13")
        p.cut()

    expected = escpos_printer.Dummy()
    receipt(expected)

    def run():
        p = escpos_printer.Network("127.0.0.1", port, timeout=5)
        p.open()
        receipt(p)
        p.close()

    yield deferToThread(run)
    yield wait_for(lambda: len(archived(out)) == 1)
    assert archived(out) == [expected.output]
    assert sorted(out.iterdir())[0].name.endswith("-escpos.bin")
