"""
Typed access to a connected stream protocol's transport.

Twisted types C{Protocol.transport} as C{ITransport | None}: None before
C{makeConnection}, and only the narrow L{ITransport} after it.  rawsvc's stream
protocols run over TCP, TLS or UNIX transports, which also provide
C{abortConnection}, C{loseWriteConnection}, C{getHandle} and the
producer/consumer methods used for back-pressure.  L{stream_transport} says
so once, instead of every call site testing for None.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.interfaces import IConsumer, IPushProducer, ISystemHandle, ITCPTransport
from twisted.internet.protocol import Protocol


class IStreamTransport(ITCPTransport, IConsumer, IPushProducer, ISystemHandle):
    """
    What rawsvc's stream protocols use of their transport: a TCP transport
    that is also a push producer (pause/resume reading), a consumer (our
    writes' producer) and has a socket handle.  C{tcp.Server}/C{tcp.Client}
    (and the UNIX transports built on them) provide all of it.
    """


def stream_transport(protocol: Protocol) -> IStreamTransport:
    """
    C{protocol}'s transport, for code that runs only while it is connected.

    A None transport (used before C{connectionMade}) fails with an
    C{AssertionError} naming the protocol, where it would have been an
    C{AttributeError} on None.
    """
    transport = protocol.transport
    assert transport is not None, f"{type(protocol).__name__} is not connected"
    # Twisted's attribute is declared as ITransport; the stream transports we
    # are given provide IStreamTransport (see the class docstring).
    return cast(IStreamTransport, transport)
