"""Stopping the service: listeners close first, jobs in flight still get delivered."""

from __future__ import annotations

import pytest_twisted
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol, ServerFactory
from zope.interface import implementer


@pytest_twisted.inlineCallbacks
def test_stop_lets_queued_deliveries_finish_within_the_grace(reactor, tmp_path):
    from twisted.internet.task import deferLater

    from rawsvc.config import loads
    from rawsvc.context import BuildContext
    from rawsvc.job import Job, Payload
    from rawsvc.service import RawService

    received = []

    @implementer(IHalfCloseableProtocol)
    class SlowPrinter(Protocol):
        """Takes a job and closes 0.3 s after the sender's half-close."""

        def dataReceived(self, data):
            received.append(data)

        def readConnectionLost(self):
            self.call = reactor.callLater(0.3, self.transport.loseConnection)

        def writeConnectionLost(self):
            pass

        def connectionLost(self, reason):
            call = getattr(self, "call", None)
            if call is not None and call.active():
                call.cancel()

    factory = ServerFactory()
    factory.protocol = SlowPrinter
    printer = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        text = (
            f'[service]\nstate_dir = "{tmp_path}"\nspool = false\n'
            '[[trigger]]\nname = "t"\ntype = "tcp"\nlisten = "tcp:0:interface=127.0.0.1"\nflow = "f"\n'
            f'[[flow]]\nname = "f"\nactions = [ {{ type = "send_tcp", '
            f'destination = "127.0.0.1:{printer.getHost().port}", wait_for_eof = true }} ]\n'
        )
        service = RawService(loads(text, "x.toml", BuildContext(reactor=reactor)))
        service.startService()
        jobs = []
        for i in range(2):
            payload = Payload(b"job%d" % i)
            payload.close()
            job = Job(trigger="t", payload=payload, peer_host="h", peer_port=1)
            jobs.append(job)
            service.sink.submit(job, "f")
        yield deferLater(reactor, 0.05, lambda: None)  # job0 sending, job1 queued behind it
        yield service.stopService()
        assert [(j.state, j.error) for j in jobs] == [("done", None), ("done", None)]
        assert b"".join(received) == b"job0job1"
        assert not service.triggers["t"].listening
    finally:
        yield printer.stopListening()
