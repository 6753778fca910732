"""
Baseline: a bare Twisted protocol doing what the benchmarked rawsvc flow does,
with no framework around it.

  python twisted_server.py PORT eof     read until half-close, answer "OK\\n", close
  python twisted_server.py PORT line    answer "OK\\n" to every '\\n'-ended line
  python twisted_server.py PORT count   count '\\n'-ended lines; at half-close
                                        answer the count and close
"""

import sys

from twisted.internet import reactor
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer


@implementer(IHalfCloseableProtocol)
class Eof(Protocol):
    def connectionMade(self):
        self.chunks = []

    def dataReceived(self, data):
        self.chunks.append(data)

    def readConnectionLost(self):
        b"".join(self.chunks)
        self.transport.write(b"OK\n")
        self.transport.loseConnection()

    def writeConnectionLost(self):
        self.transport.loseConnection()


class Line(Protocol):
    def connectionMade(self):
        self.buf = b""

    def dataReceived(self, data):
        buf = self.buf + data
        lines = buf.split(b"\n")
        self.buf = lines.pop()
        if lines:
            self.transport.write(b"OK\n" * len(lines))


@implementer(IHalfCloseableProtocol)
class Count(Line):
    def connectionMade(self):
        self.buf = b""
        self.count = 0

    def dataReceived(self, data):
        buf = self.buf + data
        lines = buf.split(b"\n")
        self.buf = lines.pop()
        self.count += len(lines)

    def readConnectionLost(self):
        self.transport.write(b"%d\n" % self.count)
        self.transport.loseConnection()

    def writeConnectionLost(self):
        self.transport.loseConnection()


def main():
    port, mode = int(sys.argv[1]), sys.argv[2]
    proto = {"eof": Eof, "line": Line, "count": Count}[mode]
    reactor.listenTCP(port, Factory.forProtocol(proto), backlog=1024, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
