"""
Typed access to a connected stream protocol's transport.

Twisted types C{Protocol.transport} as C{ITransport | None}: None before
C{makeConnection}, and only the narrow L{ITransport} after it.  rawsvc's stream
protocols run over TCP, TLS or UNIX transports, which also provide
C{abortConnection}, C{loseWriteConnection}, C{getHandle} and the
producer/consumer methods used for back-pressure.  L{stream_transport} says
so once, instead of every call site testing for None.

L{AckProbe} reads the kernel's count of bytes a TCP peer acknowledged, from
a duplicate of the socket's descriptor, because Twisted closes the socket
before it tells the protocol the connection was lost.
"""

from __future__ import annotations

import os
import socket
import struct
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


# The kernel's acknowledgement count ------------------------------------------

#: Offset of C{tcpi_bytes_acked} (a u64) in Linux's C{struct tcp_info}
#: (since Linux 4.2): the bytes the peer acknowledged, counting the SYN and
#: our FIN as one each.  Unlike the send queue (C{SIOCOUTQ}), which a reset
#: empties, it still holds after the peer reset the connection.
_BYTES_ACKED = 120
_TCP_INFO_LEN = 256


class AckProbe:
    """
    Reads how many of our bytes a TCP peer's kernel acknowledged, also after
    the connection broke.

    Twisted closes a TCP transport's socket before it calls the protocol's
    C{connectionLost}, when the kernel's counters can no longer be asked.
    The probe keeps a duplicate of the socket's descriptor from
    C{connectionMade} on, so they can be read there; L{close} it in
    C{connectionLost}.  The duplicate keeps the socket open only that long:
    Twisted's orderly close calls C{shutdown()} (the FIN goes out at once)
    and its abort sets C{SO_LINGER} on the shared socket, so the reset goes
    out when the probe closes, in the same reactor turn.
    """

    def __init__(self, sock: socket.socket | None) -> None:
        self._sock = sock

    @classmethod
    def of(cls, transport: object) -> "AckProbe":
        """A probe for C{transport}'s socket; one that answers None where TCP_INFO is not to be had."""
        get_handle = getattr(transport, "getHandle", None)
        tcp_info = getattr(socket, "TCP_INFO", None)
        if get_handle is None or tcp_info is None:
            return cls(None)
        try:
            handle = get_handle()
            if handle.family not in (socket.AF_INET, socket.AF_INET6):
                return cls(None)
            sock = socket.socket(fileno=os.dup(handle.fileno()))
        except (OSError, AttributeError, ValueError):
            return cls(None)
        probe = cls(sock)
        if probe.acked() is None:
            probe.close()
            return cls(None)
        return probe

    def acked(self) -> int | None:
        """Data bytes the peer's kernel acknowledged so far (None: cannot tell)."""
        if self._sock is None:
            return None
        try:
            info = self._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
        except OSError:
            return None
        if len(info) < _BYTES_ACKED + 8:
            return None
        (acked,) = struct.unpack_from("=Q", info, _BYTES_ACKED)
        return max(0, acked - 1)  # the SYN; a FIN past the data makes it one more than the data

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass


def reset_if_abandoned(transport: object, on: bool) -> None:
    """
    With C{on}, a close of C{transport}'s socket sends a reset instead of a
    FIN (C{SO_LINGER} 1, 0), also the close the kernel does when the process
    dies: a printer then sees a job cut off, not a complete-looking one.
    Turn it off before the orderly close.  Does nothing where there is no
    socket.
    """
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None:
        return
    try:
        get_handle().setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1 if on else 0, 0))
    except (OSError, AttributeError):
        pass
