"""
Every place rawsvc depends on a private or platform detail of Twisted or the
kernel, in one module, so an upgrade has one file to look at and
C{tests/test_compat.py} to run: each test there names the Twisted version and
the detail that changed when it fails.

- L{stream_transport}: the transport a connected stream protocol really has
  (Twisted types it as the narrow C{ITransport | None}).
- L{AckProbe}: the bytes a TCP peer acknowledged, from Linux's C{TCP_INFO}
  (C{tcpi_bytes_acked}), read from a duplicate of the socket's descriptor.
- L{reset_if_abandoned}: C{SO_LINGER} (1, 0), so a close sends a reset.
- L{kernel_unacked}: the socket's send queue (the C{TIOCOUTQ} ioctl).
- L{unsent_bytes}: what a Twisted transport holds in its own write buffer
  (C{dataBuffer}, C{offset} and the private C{_tempDataLen}).
- L{terminal_glue}, L{pty_size}, L{resize_terminal}: the conch glue the SSH
  manhole needs (C{manhole_ssh._Glue}, the size conch's C{getPty} leaves on
  a session, the terminal protocol an C{insults.ServerProtocol} runs).
- L{exit_by_signal}: how twistd learns it should end by a signal
  (C{reactor._exitSignal}), as for SIGTERM.
"""

from __future__ import annotations

import array
import os
import socket
import struct
from typing import Any, Callable, cast

from twisted.internet.interfaces import (
    IConsumer,
    IPushProducer,
    ISystemHandle,
    ITCPTransport,
    _ISupportsExitSignalCapturing,
)
from twisted.internet.protocol import Protocol


# The transport of a connected stream protocol -----------------------------


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


def unsent_bytes(transport: Any) -> int:
    """
    Bytes written to a Twisted transport that it has not yet handed to the
    kernel (its own write buffer); 0 when the transport keeps no such buffer.
    """
    try:
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    except (AttributeError, TypeError):
        return 0


# The kernel: what a TCP peer acknowledged, and how a socket closes ----------

#: Offset of C{tcpi_bytes_acked} (a u64) in Linux's C{struct tcp_info}
#: (since Linux 4.2): the bytes the peer acknowledged, counting the SYN and
#: our FIN as one each.  Unlike the send queue (C{SIOCOUTQ}), which a reset
#: empties, it still holds after the peer reset the connection.
TCP_INFO_BYTES_ACKED = 120
TCP_INFO_LEN = 256


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
            info = self._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN)
        except OSError:
            return None
        if len(info) < TCP_INFO_BYTES_ACKED + 8:
            return None
        (acked,) = struct.unpack_from("=Q", info, TCP_INFO_BYTES_ACKED)
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


def kernel_unacked(transport: Any) -> int | None:
    """
    Bytes in the socket's send queue that the peer has not acknowledged
    (Linux C{SIOCOUTQ}, asked as C{TIOCOUTQ}); None where that cannot be
    asked (no socket, not Linux, a closed descriptor).
    """
    try:
        import fcntl
        import termios

        buf = array.array("i", [0])
        fcntl.ioctl(transport.getHandle().fileno(), termios.TIOCOUTQ, buf, True)
        return buf[0]
    except Exception:
        return None


# Conch: the glue between an SSH session and a terminal protocol -------------


def terminal_glue(name: str, write: Callable[[bytes], Any], loseConnection: Callable[[], Any]) -> Any:
    """
    A minimal transport with just C{write} and C{loseConnection}, as conch's
    own C{TerminalSessionTransport} joins an SSH channel and a terminal
    protocol; any other attribute raises C{AttributeError} naming C{name}.
    """
    from twisted.conch import manhole_ssh

    return manhole_ssh._Glue(write=write, loseConnection=loseConnection, name=name)


def pty_size(session: Any) -> tuple[int, int] | None:
    """
    C{(width, height)} of the pty a conch C{TerminalSession} was given
    (its C{getPty} keeps them on the session), or None when the client
    asked for none.
    """
    width, height = getattr(session, "width", None), getattr(session, "height", None)
    if width is None or height is None:
        return None
    return width, height


def resize_terminal(server_protocol: Any, width: int, height: int) -> None:
    """Tell the terminal protocol an C{insults.ServerProtocol} runs its new size (nothing before it runs one)."""
    terminal = getattr(server_protocol, "terminalProtocol", None)
    if terminal is not None:
        terminal.terminalSize(width, height)


# twistd: ending by a signal ------------------------------------------------


def exit_by_signal(reactor: Any, signum: int) -> None:
    """
    Make twistd end by C{signum} once the reactor stopped, as Twisted's own
    SIGTERM and SIGINT handlers do: twistd reads the reactor's
    C{_exitSignal} after the run and re-raises that signal, the exit status
    service managers count as a clean stop.  A reactor that does not capture
    exit signals is left alone.
    """
    if _ISupportsExitSignalCapturing.providedBy(reactor):
        reactor._exitSignal = signum
