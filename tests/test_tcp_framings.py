"""The tcp trigger's markers and length_prefix framings, through real sockets, and their config errors."""

from __future__ import annotations

import json
import socket

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from rawsvc.config import loads
from rawsvc.errors import ConfigError
from rawsvc.triggers.length_prefix import encode
from support import port_of, recv_all

ECHO_FLOW = """
[[flow]]
name = "echo"
actions = [ { type = "reply", data = "GOT[${data}]" } ]
"""


def tcp_trigger(**keys) -> str:
    base = {"name": "t", "type": "tcp", "listen": "tcp:0:interface=127.0.0.1", "flow": "echo"}
    base.update(keys)
    return "[[trigger]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in base.items())


def exchange(port: int, chunks: list[bytes]) -> bytes:
    """Send C{chunks} one by one (each its own segment), half-close, read everything back."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for chunk in chunks:
        s.sendall(chunk)
    s.shutdown(socket.SHUT_WR)
    try:
        return recv_all(s)
    finally:
        s.close()


@pytest_twisted.inlineCallbacks
def test_markers_stx_etx_jobs_through_a_socket_with_noise_dropped_and_counted(service_factory):
    svc = service_factory(tcp_trigger(execute_on="markers", start="\u0002", end="\u0003") + ECHO_FLOW)
    chunks = [b"junk\x02fir", b"st\x03\r\n", b"\x02sec", b"ond\x03", b"tail"]
    reply = yield deferToThread(exchange, port_of(svc, "t"), chunks)
    assert reply == b"GOT[first]GOT[second]"
    status = svc.triggers["t"].status()
    assert status["execute_on"] == "markers"
    assert status["bytes_dropped"] == len(b"junk") + len(b"\r\n") + len(b"tail")


@pytest_twisted.inlineCallbacks
def test_markers_a_start_inside_an_open_message_restarts_it(service_factory):
    svc = service_factory(tcp_trigger(execute_on="markers", start="<msg>", end="</msg>") + ECHO_FLOW)
    reply = yield deferToThread(exchange, port_of(svc, "t"), [b"<msg>lost<m", b"sg>kept</m", b"sg>"])
    assert reply == b"GOT[kept]"


@pytest_twisted.inlineCallbacks
def test_length_prefix_jobs_through_a_socket_split_inside_headers_and_bodies(service_factory):
    svc = service_factory(tcp_trigger(execute_on="length_prefix", prefix_bytes=4, byte_order="little") + ECHO_FLOW)
    stream = encode(b"alpha", 4, "little") + encode(b"\x03binary\x00", 4, "little") + encode(b"z" * 3000, 4, "little")
    chunks = [stream[:2], stream[2:7], stream[7:15], stream[15:]]
    reply = yield deferToThread(exchange, port_of(svc, "t"), chunks)
    assert reply == b"GOT[alpha]GOT[\x03binary\x00]GOT[" + b"z" * 3000 + b"]"


@pytest_twisted.inlineCallbacks
def test_length_prefix_counting_the_header(service_factory):
    svc = service_factory(tcp_trigger(execute_on="length_prefix", prefix_bytes=1, prefix_counts_header=True)
                          + ECHO_FLOW)
    reply = yield deferToThread(exchange, port_of(svc, "t"), [encode(b"ab", 1, "big", True) + b"\x02xy"])
    assert reply == b"GOT[ab]GOT[x]"  # the second header says 2 bytes including itself: one byte of body


def config_errors(tmp_path, **keys) -> list[str]:
    text = f'[service]\nstate_dir = "{tmp_path}"\nspool = false\n' + tcp_trigger(**keys) + ECHO_FLOW
    with pytest.raises(ConfigError) as e:
        loads(text, "rawsvc.toml")
    return e.value.errors


@pytest.mark.parametrize(
    "keys, key, words",
    [
        ({"execute_on": "markers", "end": "\u0003"}, "start", "is required with execute_on = \"markers\""),
        ({"execute_on": "markers", "start": "\u0002"}, "end", "is required"),
        ({"execute_on": "markers", "start": "a", "end": "b", "on_restart": "again"}, "on_restart", "restart"),
        ({"execute_on": "delimiter", "delimiter": "\n", "start": "<"}, "start", "only applies to execute_on = \"markers\""),
        ({"execute_on": "length_prefix", "prefix_bytes": 3}, "prefix_bytes", "must be 1, 2 or 4"),
        ({"execute_on": "length_prefix", "byte_order": "middle"}, "byte_order", "big"),
    ],
)
def test_framing_keys_are_checked_with_errors_that_name_the_key(tmp_path, keys, key, words):
    errors = config_errors(tmp_path, **keys)
    assert len(errors) == 1, errors
    assert key in errors[0] and words in errors[0], errors[0]
