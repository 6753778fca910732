"""
rawsvc.compat: every private or platform detail rawsvc relies on is still
there, with the shape rawsvc expects.  A failure names the Twisted version
and the detail that changed, so an upgrade shows at once what to fix.
"""

from __future__ import annotations

import signal
import socket
import struct
import time
from typing import Any

import pytest
import pytest_twisted
import twisted

from rawsvc import compat


def changed(detail: str) -> str:
    return f"Twisted {twisted.__version__}: {detail} changed; rawsvc/compat.py relies on it"


class Handle:
    """A transport's C{getHandle()} over a plain socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def getHandle(self) -> socket.socket:
        return self.sock


@pytest.fixture
def tcp_pair():
    """A connected loopback pair of plain sockets: (client, server)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    yield client, server
    client.close()
    server.close()


# The kernel ---------------------------------------------------------------


def test_tcp_info_holds_the_bytes_the_peer_acknowledged_where_rawsvc_reads_them(tcp_pair):
    client, server = tcp_pair
    probe = compat.AckProbe.of(Handle(client))
    assert probe.acked() == 0, (
        f"struct tcp_info on this kernel: tcpi_bytes_acked is not at offset {compat.TCP_INFO_BYTES_ACKED}"
    )
    client.sendall(b"x" * 10000)
    got = b""
    while len(got) < 10000:
        got += server.recv(65536)
    # Loopback acknowledges at once; give the ACK a moment to be counted.
    for _ in range(1000):
        if probe.acked() == 10000:
            break
        time.sleep(0.001)
    assert probe.acked() == 10000, f"tcpi_bytes_acked at offset {compat.TCP_INFO_BYTES_ACKED} reads {probe.acked()}"
    probe.close()
    assert probe.acked() is None


def test_reset_if_abandoned_makes_a_close_send_a_reset(tcp_pair):
    client, server = tcp_pair
    compat.reset_if_abandoned(Handle(client), True)
    assert struct.unpack("ii", client.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8)) == (1, 0)
    client.close()
    server.settimeout(5)
    with pytest.raises(ConnectionResetError):
        server.recv(10)


def test_reset_if_abandoned_off_closes_with_a_fin(tcp_pair):
    client, server = tcp_pair
    compat.reset_if_abandoned(Handle(client), True)
    compat.reset_if_abandoned(Handle(client), False)
    client.close()
    server.settimeout(5)
    assert server.recv(10) == b""


def test_kernel_unacked_counts_what_a_peer_that_does_not_read_left_in_the_send_queue(tcp_pair):
    client, _server = tcp_pair
    assert compat.kernel_unacked(Handle(client)) == 0
    client.setblocking(False)
    sent = 0
    try:
        while True:
            sent += client.send(b"x" * 65536)
    except BlockingIOError:
        pass
    queued = compat.kernel_unacked(Handle(client))
    assert queued is not None and 0 < queued <= sent, f"TIOCOUTQ says {queued} of {sent} bytes sent"


def test_kernel_unacked_is_none_without_a_socket():
    assert compat.kernel_unacked(object()) is None


# Twisted's transports -------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_unsent_bytes_is_what_a_twisted_tcp_transport_buffers_before_the_kernel_has_it(reactor):
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.internet.protocol import Factory, Protocol

    servers: list[Protocol] = []

    class Stalled(Protocol):
        def connectionMade(self) -> None:
            servers.append(self)
            self.transport.pauseProducing()  # type: ignore[union-attr]

    port = reactor.listenTCP(0, Factory.forProtocol(Stalled), interface="127.0.0.1")
    try:
        client = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), Protocol())
        transport: Any = client.transport
        for name in ("dataBuffer", "offset", "_tempDataLen"):
            assert hasattr(transport, name), changed(f"tcp.Client's write buffer attribute {name}")
        assert compat.unsent_bytes(transport) == 0
        transport.write(b"x" * (8 << 20))
        assert compat.unsent_bytes(transport) == 8 << 20, changed("tcp.Client's write buffer accounting")
        transport.abortConnection()
        for s in servers:
            s.transport.abortConnection()  # type: ignore[union-attr]
    finally:
        yield port.stopListening()


def test_unsent_bytes_is_zero_for_a_transport_without_a_buffer():
    assert compat.unsent_bytes(object()) == 0


def test_stream_transport_names_an_unconnected_protocol():
    from twisted.internet.protocol import Protocol

    with pytest.raises(AssertionError, match="Protocol is not connected"):
        compat.stream_transport(Protocol())


def test_the_old_transport_module_is_gone_and_compat_has_its_names():
    import importlib

    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("rawsvc._transport")
    for name in ("AckProbe", "IStreamTransport", "reset_if_abandoned", "stream_transport"):
        assert hasattr(compat, name), name


# Conch ---------------------------------------------------------------------


def test_terminal_glue_has_just_write_and_lose_connection():
    written: list[bytes] = []
    lost: list[bool] = []
    glue = compat.terminal_glue("Test Transport", written.append, lambda: lost.append(True))
    glue.write(b"hi")
    glue.loseConnection()
    assert written == [b"hi"] and lost == [True], changed("twisted.conch.manhole_ssh._Glue")
    with pytest.raises(AttributeError) as caught:
        glue.getPeer
    assert "Test Transport" in str(caught.value.args), changed("twisted.conch.manhole_ssh._Glue's missing attributes")


def test_pty_size_is_what_conch_getpty_keeps_on_the_session():
    from twisted.conch import manhole_ssh
    from twisted.python.components import Componentized

    session = manhole_ssh.TerminalSession(Componentized())
    assert compat.pty_size(session) is None
    session.getPty(b"xterm", (24, 80, 0, 0), [])
    assert compat.pty_size(session) == (80, 24), changed("TerminalSession.getPty's width and height")


def test_resize_terminal_reaches_the_terminal_protocol_of_a_server_protocol():
    from twisted.conch.insults import insults
    from twisted.internet.testing import StringTransport

    sizes: list[tuple[int, int]] = []

    class Terminal(insults.TerminalProtocol):
        def terminalSize(self, width: int, height: int) -> None:
            sizes.append((width, height))

    server = insults.ServerProtocol(Terminal)
    compat.resize_terminal(server, 1, 1)  # no terminal protocol yet: nothing happens
    server.makeConnection(StringTransport())
    compat.resize_terminal(server, 132, 50)
    assert sizes == [(132, 50)], changed("insults.ServerProtocol.terminalProtocol")


# twistd ---------------------------------------------------------------------


def test_exit_by_signal_is_what_twistd_reads_after_the_reactor_stopped():
    from twisted.application import app
    from twisted.internet import reactor as global_reactor
    from twisted.internet.interfaces import _ISupportsExitSignalCapturing
    from zope.interface import implementer

    assert _ISupportsExitSignalCapturing.providedBy(global_reactor), changed("_ISupportsExitSignalCapturing")
    assert hasattr(app, "_exitWithSignal"), changed("twisted.application.app._exitWithSignal")

    @implementer(_ISupportsExitSignalCapturing)
    class Reactor:
        _exitSignal = None

        def run(self) -> None:
            compat.exit_by_signal(self, signal.SIGHUP)

    runner = app.ApplicationRunner({"profile": False, "debug": False, "nodaemon": True, "profiler": "cprofile"})
    runner.startReactor(Reactor(), None, None)
    assert runner._exitSignal == signal.SIGHUP, changed("ApplicationRunner.startReactor's reading of reactor._exitSignal")


def test_exit_by_signal_leaves_a_reactor_that_does_not_capture_signals_alone():
    class Reactor:
        pass

    r = Reactor()
    compat.exit_by_signal(r, signal.SIGHUP)
    assert not hasattr(r, "_exitSignal")
