"""
The tcp-client trigger against a device simulator: a listener on loopback
that takes rawsvc's connection, streams framed records, reads the replies,
drops the link (close, reset, or goes silent), refuses for a while, then
accepts again.
"""

from __future__ import annotations

import json
import os
import socket

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from zope.interface.verify import verifyObject

from rawsvc.interfaces import ITrigger
from support import wait_until

#: How each link of the simulator ends, in turn.
ENDINGS = ["close", "reset", "silent", "close", "reset"]


class _DeviceProtocol(Protocol):
    def __init__(self, device: "Device") -> None:
        self.device = device
        self.buf = b""
        self.sent_here = 0

    def connectionMade(self) -> None:
        self.device.links += 1
        self.device.current = self
        self.send_next()

    def send_next(self) -> None:
        d = self.device
        if d.next >= len(d.records) or self.sent_here == d.per_link:
            self.end_link()
            return
        record = d.records[d.next]
        self.sent_here += 1
        frame = d.frame(record)
        # Split each frame in two writes: the framing must not care.
        self.transport.write(frame[:3])
        self.transport.write(frame[3:])

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            self.device.replies.append(line)
            self.device.next += 1
            self.send_next()

    def end_link(self) -> None:
        d = self.device
        how = ENDINGS[(d.links - 1) % len(ENDINGS)] if d.next < len(d.records) else "silent"
        d.endings.append(how)
        if how == "close":
            self.transport.loseConnection()
        elif how == "reset":
            self.transport.abortConnection()
        # silent: rawsvc's idle_timeout must find it

    def connectionLost(self, reason=None) -> None:
        d = self.device
        d.current = None
        if d.next < len(d.records):
            d.refuse_then_accept()
        elif d.finished is not None and not d.finished.called:
            d.finished.callback(None)


class Device:
    """A device serving STX/ETX records on a port it sometimes closes."""

    def __init__(self, reactor, records: list[bytes], per_link: int, refuse_for: float) -> None:
        self.reactor = reactor
        self.records = records
        self.per_link = per_link
        self.refuse_for = refuse_for
        self.next = 0
        self.links = 0
        self.replies: list[bytes] = []
        self.endings: list[str] = []
        self.refusals = 0
        self.port = 0
        self.listening = None
        self.current: _DeviceProtocol | None = None
        self.finished: Deferred | None = None
        self._call = None

    @staticmethod
    def frame(record: bytes) -> bytes:
        return b"noise\x02" + record + b"\x03\r\n"

    def listen(self) -> int:
        factory = Factory.forProtocol(lambda: _DeviceProtocol(self))
        factory.noisy = False
        self.listening = self.reactor.listenTCP(self.port, factory, interface="127.0.0.1")
        self.port = self.listening.getHost().port
        return self.port

    def refuse_then_accept(self) -> None:
        """Stop listening (connects are refused), then listen again on the same port."""
        listening, self.listening = self.listening, None
        self.refusals += 1
        d = listening.stopListening() if listening is not None else None

        def later(_=None):
            self._call = self.reactor.callLater(self.refuse_for, self._accept)

        if d is not None:
            d.addCallback(later)
        else:
            later()

    def _accept(self) -> None:
        self._call = None
        self.listen()

    def stop(self):
        if self._call is not None and self._call.active():
            self._call.cancel()
        if self.current is not None:
            self.current.transport.abortConnection()
        listening, self.listening = self.listening, None
        return listening.stopListening() if listening is not None else None


def client_trigger(port: int, **keys) -> str:
    base = {
        "name": "dev", "type": "tcp-client", "endpoint": f"tcp:host=127.0.0.1:port={port}", "flow": "record",
        "execute_on": "markers", "start": "\u0002", "end": "\u0003",
        "retry_delay": 0.05, "max_retry_delay": 0.2,
    }
    base.update(keys)
    return "[[trigger]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in base.items())


def record_flow(folder) -> str:
    # Each record is written once to a file named after it (a second write
    # of the same record would fail: overwrite = false), then acknowledged.
    return f"""
[[flow]]
name = "record"
actions = [
  {{ type = "file", folder = "{folder}", name = "${{data}}.rec", overwrite = false }},
  {{ type = "reply", data = "ACK ${{data}}\\n" }},
]
"""


@pytest_twisted.inlineCallbacks
def test_every_record_is_processed_once_and_in_order_across_reconnects(service_factory, reactor, tmp_path):
    records = [f"rec{i:03d}".encode() for i in range(15)]
    device = Device(reactor, records, per_link=3, refuse_for=0.3)
    device.finished = Deferred()
    port = device.listen()
    out = tmp_path / "out"
    svc = service_factory(client_trigger(port, idle_timeout=0.5) + record_flow(out))
    trigger = svc.triggers["dev"]
    verifyObject(ITrigger, trigger)
    try:
        yield wait_until(lambda: len(device.replies) == len(records), timeout=30)
        assert device.replies == [b"ACK " + r for r in records]
        assert sorted(os.listdir(out)) == [r.decode() + ".rec" for r in records]
        for r in records:
            assert (out / (r.decode() + ".rec")).read_bytes() == r
        status = trigger.status()
        assert status["connects"] == 5 and status["reconnects"] == 4
        assert status["connect_failures"] >= 4  # refused while the device was away
        assert status["links_lost"] == 4
        assert status["bytes_dropped"] == 15 * len(b"noise") + 15 * len(b"\r\n")
        assert trigger.counters.jobs_ok == 15 and trigger.counters.jobs_failed == 0
        assert device.endings[:4] == ["close", "reset", "silent", "close"]
        from rawsvc.admin.prometheus import render

        metrics = render(svc)
        assert 'rawsvc_trigger_reconnects_total{trigger="dev"} 4.0' in metrics
        state = [line for line in metrics.splitlines() if line.startswith("rawsvc_trigger_link_state{")]
        assert sum(float(line.rsplit(" ", 1)[1]) for line in state) == 1.0  # exactly one state at a time
    finally:
        yield device.stop()


@pytest_twisted.inlineCallbacks
def test_link_state_backs_off_while_refused_and_connects_when_the_device_listens(service_factory, reactor, tmp_path):
    device = Device(reactor, [b"only"], per_link=1, refuse_for=0.1)
    device.listen()
    port = device.port
    yield device.stop()  # nothing listens: every connect is refused
    svc = service_factory(client_trigger(port) + record_flow(tmp_path / "out"))
    trigger = svc.triggers["dev"]
    yield wait_until(lambda: trigger.status()["connect_failures"] >= 3, timeout=10)
    status = trigger.status()
    assert status["link"] in ("backing_off", "connecting") and not status["listening"]
    assert "refused" in status["last_error"]
    device.port = port
    device.listen()
    try:
        yield wait_until(lambda: device.replies == [b"ACK only"], timeout=10)
        assert trigger.status()["link"] == "connected" and trigger.listening
        sock = trigger.link.protocol.transport.getHandle()
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    finally:
        yield device.stop()


@pytest_twisted.inlineCallbacks
def test_pause_closes_the_link_and_resume_makes_it_again(service_factory, reactor, tmp_path):
    device = Device(reactor, [b"a", b"b"], per_link=1, refuse_for=0.05)
    port = device.listen()
    svc = service_factory(client_trigger(port) + record_flow(tmp_path / "out"))
    trigger = svc.triggers["dev"]
    try:
        yield wait_until(lambda: device.replies == [b"ACK a"], timeout=10)
        yield trigger.pause()
        assert trigger.status()["link"] == "stopped" and trigger.status()["paused"]
        yield trigger.resume()
        yield wait_until(lambda: device.replies == [b"ACK a", b"ACK b"], timeout=10)
    finally:
        yield device.stop()


@pytest.mark.parametrize(
    "keys, key, words",
    [
        ({"endpoint": "nowhere"}, "endpoint", "not an endpoint string"),
        ({"endpoint": "tcp:host=127.0.0.1"}, "endpoint", "bad client endpoint"),
        ({"execute_on": "markers", "start": ""}, "start", "is required"),
        ({"execute_on": "length_prefix", "start": "", "end": "", "prefix_bytes": 8}, "prefix_bytes", "1, 2 or 4"),
        ({"retry_delay": 5, "max_retry_delay": 1}, "max_retry_delay", "smaller than retry_delay"),
        ({"listen": "tcp:0"}, "listen", "unknown"),
    ],
)
def test_tcp_client_keys_are_checked_with_errors_that_name_the_key(tmp_path, keys, key, words):
    from rawsvc.config import loads
    from rawsvc.errors import ConfigError

    text = f'[service]\nstate_dir = "{tmp_path}"\nspool = false\n' + client_trigger(1, **keys) + record_flow(tmp_path)
    with pytest.raises(ConfigError) as e:
        loads(text, "rawsvc.toml")
    errors = e.value.errors
    assert len(errors) == 1, errors
    assert key in errors[0] and words in errors[0], errors[0]


def _cert_with_san(tmp_path):
    """A self-signed certificate for localhost (with a subjectAltName, which TLS clients check)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    roots = tmp_path / "roots"
    roots.mkdir()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()) + cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "device.pem").write_bytes(pem)
    (roots / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return tmp_path / "device.pem", roots


@pytest_twisted.inlineCallbacks
def test_tls_endpoint_reaches_a_tls_device(service_factory, reactor, tmp_path):
    from twisted.internet import ssl

    pem, roots = _cert_with_san(tmp_path)
    device = Device(reactor, [b"over-tls"], per_link=1, refuse_for=0.05)
    factory = Factory.forProtocol(lambda: _DeviceProtocol(device))
    options = ssl.PrivateCertificate.loadPEM(pem.read_text()).options()
    device.listening = reactor.listenSSL(0, factory, options, interface="127.0.0.1")
    port = device.listening.getHost().port
    svc = service_factory(client_trigger(port, endpoint=f"tls:host=localhost:port={port}:trustRoots={roots}")
                          + record_flow(tmp_path / "out"))
    try:
        yield wait_until(lambda: device.replies == [b"ACK over-tls"], timeout=10)
        assert svc.triggers["dev"].status()["connects"] >= 1
    finally:
        device.next = len(device.records)  # no refuse/accept cycle any more
        yield device.stop()
