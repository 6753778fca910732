"""The TCP server trigger and reply to sender, with real sockets on loopback."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import time

import pytest_twisted
from twisted.internet.threads import deferToThread

from conftest import require_tool
from support import port_of, recv_all, recv_until, wait_until


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


ECHO_FLOW = """
[[flow]]
name = "echo"
actions = [ { type = "reply", data = "GOT[${data}]\\n" } ]
"""


def tcp_trigger(**keys) -> str:
    base = {"name": "t", "type": "tcp", "listen": "tcp:0:interface=127.0.0.1", "flow": "echo"}
    base.update(keys)
    # JSON strings are valid TOML basic strings (\\uXXXX escapes included).
    return "[[trigger]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in base.items())


# Framing ---------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_disconnect_framing_job_ends_at_half_close_and_reply_follows(service_factory):
    svc = service_factory(tcp_trigger() + ECHO_FLOW)
    port = port_of(svc, "t")

    def client():
        s = connect(port)
        s.sendall(b"hello ")
        s.sendall(b"world")
        s.shutdown(socket.SHUT_WR)
        started = time.monotonic()
        reply = recv_all(s)
        return reply, time.monotonic() - started

    reply, took = yield deferToThread(client)
    assert reply == b"GOT[hello world]\n"
    assert took < 2.0  # rawsvc closed its side at once


@pytest_twisted.inlineCallbacks
def test_nc_half_close_gets_reply_and_returns_promptly(service_factory):
    nc = require_tool("nc")
    svc = service_factory(tcp_trigger() + ECHO_FLOW)
    port = port_of(svc, "t")
    started = time.monotonic()
    result = yield deferToThread(
        subprocess.run, [nc, "-N", "127.0.0.1", str(port)], input=b"label data", capture_output=True, timeout=20
    )
    assert result.returncode == 0
    assert result.stdout == b"GOT[label data]\n"
    assert time.monotonic() - started < 3.0


@pytest_twisted.inlineCallbacks
def test_socat_gets_reply_without_waiting_for_its_timeout(service_factory):
    socat = require_tool("socat")
    svc = service_factory(tcp_trigger() + ECHO_FLOW)
    port = port_of(svc, "t")
    started = time.monotonic()
    result = yield deferToThread(
        subprocess.run, [socat, "-t", "30", "-", f"TCP:127.0.0.1:{port}"], input=b"abc", capture_output=True, timeout=40
    )
    assert result.returncode == 0
    assert result.stdout == b"GOT[abc]\n"
    assert time.monotonic() - started < 5.0


@pytest_twisted.inlineCallbacks
def test_full_close_without_half_close_still_runs_the_job(service_factory, tmp_path):
    out = tmp_path / "out"
    svc = service_factory(
        tcp_trigger(flow="store")
        + f'[[flow]]\nname = "store"\nactions = [ {{ type = "file", folder = "{out}", name = "job.bin" }} ]\n'
    )
    port = port_of(svc, "t")

    def client():
        s = connect(port)
        s.sendall(b"\x00\x01binary\xff")
        s.close()

    yield deferToThread(client)
    yield wait_until(lambda: (out / "job.bin").exists())
    assert (out / "job.bin").read_bytes() == b"\x00\x01binary\xff"


@pytest_twisted.inlineCallbacks
def test_delimiter_framing_one_job_per_line_in_order(service_factory):
    svc = service_factory(tcp_trigger(execute_on="delimiter", delimiter="\r\n") + ECHO_FLOW)
    port = port_of(svc, "t")

    def client():
        s = connect(port)
        s.sendall(b"one\r\ntw")
        first = recv_until(s, b"\n")
        s.sendall(b"o\r\nthree\r\n\r\nfour")
        s.shutdown(socket.SHUT_WR)
        return first, recv_all(s)

    first, rest = yield deferToThread(client)
    assert first == b"GOT[one]\n"  # answered while the connection stays open
    assert rest == b"GOT[two]\nGOT[three]\nGOT[four]\n"  # empty line skipped, partial processed


@pytest_twisted.inlineCallbacks
def test_delimiter_etx_kept_when_keep_delimiter(service_factory):
    svc = service_factory(
        tcp_trigger(execute_on="delimiter", delimiter="\x03", keep_delimiter=True) + ECHO_FLOW
    )
    port = port_of(svc, "t")

    def client():
        s = connect(port)
        s.sendall(b"\x02A\x03\x02B\x03")
        s.shutdown(socket.SHUT_WR)
        return recv_all(s)

    assert (yield deferToThread(client)) == b"GOT[\x02A\x03]\nGOT[\x02B\x03]\n"


@pytest_twisted.inlineCallbacks
def test_partial_discard_drops_bytes_left_at_close(service_factory):
    svc = service_factory(tcp_trigger(execute_on="delimiter", delimiter="\n", partial="discard") + ECHO_FLOW)
    port = port_of(svc, "t")

    def client():
        s = connect(port)
        s.sendall(b"a\nb")
        s.shutdown(socket.SHUT_WR)
        return recv_all(s)

    assert (yield deferToThread(client)) == b"GOT[a]\n"
    assert svc.triggers["t"].counters.jobs_received == 1


@pytest_twisted.inlineCallbacks
def test_length_framing(service_factory):
    svc = service_factory(tcp_trigger(execute_on="length", length=4) + ECHO_FLOW)
    port = port_of(svc, "t")

    def client():
        s = connect(port)
        for b in (b"AB", b"CDEF", b"GHIJ"):
            s.sendall(b)
            time.sleep(0.01)
        s.shutdown(socket.SHUT_WR)
        return recv_all(s)

    assert (yield deferToThread(client)) == b"GOT[ABCD]\nGOT[EFGH]\nGOT[IJ]\n"


@pytest_twisted.inlineCallbacks
def test_idle_framing_ends_job_after_silence(service_factory):
    svc = service_factory(tcp_trigger(execute_on="idle", idle_time=0.2) + ECHO_FLOW)
    port = port_of(svc, "t")

    def client():
        s = connect(port)
        s.sendall(b"x")
        time.sleep(0.05)
        s.sendall(b"y")
        first = recv_until(s, b"\n", timeout=3)
        s.sendall(b"z")
        second = recv_until(s, b"\n", timeout=3)
        s.close()
        return first, second

    first, second = yield deferToThread(client)
    assert first == b"GOT[xy]\n"
    assert second == b"GOT[z]\n"


# Connect flow, ordering, closing ---------------------------------------------


@pytest_twisted.inlineCallbacks
def test_execute_on_connect_runs_connect_flow_with_peer_variables(service_factory):
    svc = service_factory(
        tcp_trigger(execute_on="delimiter", delimiter="\n", execute_on_connect=True, connect_flow="hello")
        + ECHO_FLOW
        + '[[flow]]\nname = "hello"\nactions = [ { type = "reply", data = "HELLO ${peer_host} [${data}]\\n" } ]\n'
    )
    port = port_of(svc, "t")

    def client():
        s = connect(port)
        greeting = recv_until(s, b"\n")
        s.sendall(b"x\n")
        s.shutdown(socket.SHUT_WR)
        return greeting, recv_all(s)

    greeting, rest = yield deferToThread(client)
    assert greeting == b"HELLO 127.0.0.1 []\n"
    assert rest == b"GOT[x]\n"


SLOW_FLOW = """
[[flow]]
name = "slow"
actions = [
  { type = "parse", regex = '^(?P<secs>[0-9.]+);(?P<tag>\\w+)$' },
  { type = "support:SleepAction", seconds = "${secs}" },
  { type = "reply", data = "${tag}\\n" },
]
"""


@pytest_twisted.inlineCallbacks
def test_replies_keep_job_order_when_flows_finish_out_of_order(service_factory):
    svc = service_factory(tcp_trigger(execute_on="delimiter", delimiter="\n", flow="slow") + SLOW_FLOW)
    port = port_of(svc, "t")

    def client():
        s = connect(port)
        s.sendall(b"0.4;first\n0;second\n0.1;third\n")
        s.shutdown(socket.SHUT_WR)
        return recv_all(s)

    assert (yield deferToThread(client)) == b"first\nsecond\nthird\n"


@pytest_twisted.inlineCallbacks
def test_wait_for_flow_runs_one_job_at_a_time(service_factory):
    svc = service_factory(
        tcp_trigger(execute_on="delimiter", delimiter="\n", flow="slow", wait_for_flow=True) + SLOW_FLOW
    )
    trig = svc.triggers["t"]
    port = port_of(svc, "t")
    seen = []

    original = svc.sink.submit

    def spy(job, flow, counters=None):
        seen.append(len(svc.sink.running))
        return original(job, flow, counters)

    svc.sink.submit = spy

    def client():
        s = connect(port)
        s.sendall(b"0.1;a\n0.1;b\n0.1;c\n")
        s.shutdown(socket.SHUT_WR)
        return recv_all(s)

    assert (yield deferToThread(client)) == b"a\nb\nc\n"
    assert seen == [0, 0, 0]  # never a second job while one runs
    assert trig.counters.jobs_ok == 3


@pytest_twisted.inlineCallbacks
def test_close_after_reply_closes_once_the_flow_ends(service_factory):
    svc = service_factory(tcp_trigger(execute_on="delimiter", delimiter="\n", close_after_reply=True) + ECHO_FLOW)
    port = port_of(svc, "t")

    def client():
        s = connect(port)
        s.sendall(b"one\n")
        return recv_all(s, timeout=3)  # no half-close from us: the server closes

    assert (yield deferToThread(client)) == b"GOT[one]\n"


@pytest_twisted.inlineCallbacks
def test_reply_to_a_vanished_peer_fails_the_job_clearly(service_factory):
    svc = service_factory(tcp_trigger(flow="slow") + SLOW_FLOW)
    port = port_of(svc, "t")

    def client():
        s = connect(port)
        s.sendall(b"0.3;late")
        s.shutdown(socket.SHUT_WR)
        time.sleep(0.1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # reset before the reply is ready

    yield deferToThread(client)
    yield wait_until(lambda: svc.triggers["t"].counters.jobs_failed == 1)
    job = svc.sink.history[-1]
    assert job.state == "failed"
    assert "closed the connection" in job.error


# Limits --------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_max_connections_evicts_the_silent_connection_for_a_new_client(service_factory):
    """Low-resources mode: at the cap the silent client makes room; the new one is served."""
    svc = service_factory(tcp_trigger(max_connections=1, refusal="BUSY ${reason}\n") + ECHO_FLOW)
    port = port_of(svc, "t")

    def client():
        first = connect(port)
        time.sleep(0.2)
        second = connect(port)
        evicted = recv_all(first, timeout=3)
        second.sendall(b"ok")
        second.shutdown(socket.SHUT_WR)
        return evicted, recv_all(second)

    evicted, ok = yield deferToThread(client)
    assert evicted.startswith(b"BUSY silent for ") and b"(max_connections = 1)" in evicted
    assert ok == b"GOT[ok]\n"
    counters = svc.triggers["t"].counters
    assert (counters.evicted, counters.connections_refused) == (1, 0)


@pytest_twisted.inlineCallbacks
def test_max_connections_refuses_when_every_connection_has_a_job_in_flight(service_factory):
    svc = service_factory(
        tcp_trigger(max_connections=1, refusal="BUSY ${reason}\n", execute_on="delimiter", delimiter="\n",
                    flow="slow")
        + """
[[flow]]
name = "slow"
actions = [ { type = "support:SleepAction", seconds = "0.5" }, { type = "reply", data = "GOT[${data}]\\n" } ]
"""
    )
    port = port_of(svc, "t")

    def client():
        first = connect(port)
        first.sendall(b"ok\n")  # its flow runs for 0.5 s: not evictable
        time.sleep(0.2)
        second = connect(port)
        refused = recv_all(second, timeout=3)
        first.shutdown(socket.SHUT_WR)
        return refused, recv_all(first)

    refused, ok = yield deferToThread(client)
    assert refused == b"BUSY too many connections (max_connections = 1)\n"
    assert ok == b"GOT[ok]\n"
    assert svc.triggers["t"].counters.connections_refused == 1


@pytest_twisted.inlineCallbacks
def test_max_job_bytes_refuses_the_job_without_running_it(service_factory):
    svc = service_factory(
        tcp_trigger(execute_on="delimiter", delimiter="\n", max_job_bytes=8, refusal="REFUSED ${reason}\n") + ECHO_FLOW
    )
    port = port_of(svc, "t")

    def client():
        s = connect(port)
        s.sendall(b"small\n" + b"x" * 100 + b"\nafter\n")
        s.shutdown(socket.SHUT_WR)
        return recv_all(s)

    out = yield deferToThread(client)
    assert out == b"GOT[small]\nREFUSED job larger than max_job_bytes = 8\nGOT[after]\n"
    c = svc.triggers["t"].counters
    assert (c.jobs_received, c.jobs_refused) == (2, 1)


@pytest_twisted.inlineCallbacks
def test_idle_timeout_closes_a_silent_connection(service_factory):
    svc = service_factory(tcp_trigger(idle_timeout=0.3, refusal="BYE ${reason}\n") + ECHO_FLOW)
    port = port_of(svc, "t")

    def client():
        s = connect(port)
        started = time.monotonic()
        data = recv_all(s, timeout=5)
        return data, time.monotonic() - started

    data, took = yield deferToThread(client)
    assert data == b"BYE idle for 0.3 s (idle_timeout)\n"
    assert took < 2


@pytest_twisted.inlineCallbacks
def test_allow_list_closes_clients_outside_it(service_factory):
    svc = service_factory(tcp_trigger(allow=["10.0.0.0/8"]) + ECHO_FLOW)
    port = port_of(svc, "t")

    def client():
        s = connect(port)
        try:
            s.sendall(b"x")
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        try:
            return recv_all(s, timeout=3)
        except ConnectionResetError:
            return b""

    assert (yield deferToThread(client)) == b""
    assert svc.triggers["t"].counters.connections_refused == 1
    assert svc.triggers["t"].counters.jobs_received == 0


@pytest_twisted.inlineCallbacks
def test_client_reset_mid_job_discards_it_without_crash(service_factory):
    svc = service_factory(tcp_trigger() + ECHO_FLOW)
    port = port_of(svc, "t")

    def client():
        s = connect(port)
        s.sendall(b"partial job")
        time.sleep(0.1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # RST

    yield deferToThread(client)
    yield wait_until(lambda: svc.triggers["t"].counters.connections_open == 0)
    assert svc.triggers["t"].counters.jobs_received == 0


@pytest_twisted.inlineCallbacks
def test_client_reset_mid_job_runs_it_with_on_reset_process(service_factory):
    svc = service_factory(tcp_trigger(on_reset="process") + ECHO_FLOW)
    port = port_of(svc, "t")

    def client():
        s = connect(port)
        s.sendall(b"partial job")
        time.sleep(0.1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()

    yield deferToThread(client)
    yield wait_until(lambda: svc.triggers["t"].counters.jobs_failed == 1)  # its reply cannot be sent
    assert svc.sink.history[-1].size == len(b"partial job")


@pytest_twisted.inlineCallbacks
def test_counters_track_connections_jobs_and_bytes(service_factory):
    svc = service_factory(tcp_trigger() + ECHO_FLOW)
    port = port_of(svc, "t")

    def client():
        for payload in (b"a", b"bb"):
            s = connect(port)
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            recv_all(s)
            s.close()

    yield deferToThread(client)
    yield wait_until(lambda: svc.triggers["t"].counters.connections_open == 0)
    c = svc.triggers["t"].counters
    assert (c.connections_total, c.jobs_ok, c.jobs_failed, c.bytes_in) == (2, 2, 0, 3)
    assert c.bytes_out == len(b"GOT[a]\n") + len(b"GOT[bb]\n")


@pytest_twisted.inlineCallbacks
def test_unix_socket_endpoint(service_factory, tmp_path):
    path = tmp_path / "rawsvc.sock"
    service_factory(tcp_trigger(listen=f"unix:{path}") + ECHO_FLOW)

    def client():
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(path))
        s.sendall(b"via unix")
        s.shutdown(socket.SHUT_WR)
        return recv_all(s)

    assert (yield deferToThread(client)) == b"GOT[via unix]\n"


@pytest_twisted.inlineCallbacks
def test_large_job_spills_to_a_file_in_the_state_dir(service_factory, tmp_path):
    svc = service_factory(
        tcp_trigger(flow="size") + '[[flow]]\nname = "size"\nactions = [ { type = "reply", data = "${size}" } ]\n'
    )
    port = port_of(svc, "t")
    spilled = []
    original = svc.sink.submit

    def spy(job, flow, counters=None):
        spilled.append(job.payload.path)
        return original(job, flow, counters)

    svc.sink.submit = spy

    def client():
        s = connect(port)
        chunk = os.urandom(1 << 16)
        for _ in range(64):  # 4 MiB
            s.sendall(chunk)
        s.shutdown(socket.SHUT_WR)
        return recv_all(s, timeout=10)

    assert (yield deferToThread(client)) == str(4 << 20).encode()
    assert spilled[0] is not None and spilled[0].startswith(str(tmp_path / "state" / "tmp"))
    assert not os.path.exists(spilled[0])  # removed once the job finished


def _self_signed(tmp_path):
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
        .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256())
    )
    key_path, cert_path = tmp_path / "key.pem", tmp_path / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@pytest_twisted.inlineCallbacks
def test_tls_endpoint_serves_jobs_and_replies(service_factory, tmp_path):
    """TLS has no half-close in Twisted, so a TLS client frames its jobs (here: lines)."""
    import ssl

    key, cert = _self_signed(tmp_path)
    svc = service_factory(
        tcp_trigger(
            listen=f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}",
            execute_on="delimiter",
            delimiter="\n",
        )
        + ECHO_FLOW
    )
    port = port_of(svc, "t")

    def client():
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        with context.wrap_socket(raw) as s:
            s.sendall(b"secret label\nsecond\n")
            return recv_until(s, b"GOT[second]\n")

    assert (yield deferToThread(client)) == b"GOT[secret label]\nGOT[second]\n"
