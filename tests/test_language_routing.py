"""
${language} in a flow: a tcp trigger routes ZPL jobs to one printer and PCL
jobs to another with what flows already have (a parse lookup and a
template destination); real sockets on 127.0.0.1.
"""

from __future__ import annotations

import socket

import pytest_twisted
from twisted.internet.threads import deferToThread

from rawsvc.testing import FakePrinter
from support import port_of, wait_until


@pytest_twisted.inlineCallbacks
def test_zpl_and_pcl_jobs_go_to_the_printer_named_for_their_language(service_factory):
    zebra, laser = FakePrinter(), FakePrinter()
    zebra.listen()
    laser.listen()
    try:
        # The lookup table is the parse source: "zpl=PORT pcl=PORT" and the job's
        # language; the regex picks the port named for it.
        svc = service_factory(f'''
[[trigger]]
name = "in"
type = "tcp"
listen = "tcp:0:interface=127.0.0.1"
flow = "route"

[[flow]]
name = "route"

[[flow.actions]]
type = "parse"
source = "zpl={zebra.port} pcl={laser.port} @${{language}}"
regex = '(?P<lang>\\w+)=(?P<port>\\d+)(?=.*@(?P=lang)$)'

[[flow.actions]]
type = "send_tcp"
destination = "127.0.0.1:${{port}}"
''')
        port = port_of(svc, "in")

        def send(data):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                s.recv(1)

        label = b"^XA^FO20,20^FDbox 7^FS^XZ"
        page = b"\x1bE\x1b&l0O\x1b(s0p12h0s0b4099TInvoice 7\x0c\x1bE"
        yield deferToThread(send, label)
        yield deferToThread(send, page)
        yield wait_until(lambda: len(zebra.jobs) == 1 and len(laser.jobs) == 1
                         and all(j.closed for j in zebra.jobs + laser.jobs))
        assert [j.bytes for j in zebra.jobs] == [label]
        assert [j.bytes for j in laser.jobs] == [page]
    finally:
        yield zebra.stop()
        yield laser.stop()
