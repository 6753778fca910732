"""
The plugin in a real rawsvc service on loopback (rawsvc.testing.start_service):
a device connects, sends frames, reads ACK/NAK; the flow's checksum lands
in the archived file.
"""

from __future__ import annotations

import socket

import pytest_twisted
from rawsvc.testing import start_service
from twisted.internet.threads import deferToThread

from rawsvc_stx.framing import ACK, NAK, frame

CONFIG = """
[[trigger]]
name = "scale"
type = "stx-etx"
listen = "tcp:0:interface=127.0.0.1"
check = "lrc"
flow = "weigh"

[[flow]]
name = "weigh"
actions = [
  {{ type = "checksum", into = "crc" }},
  {{ type = "file", folder = "{folder}", name = "frame-${{frame}}.txt", data = "${{data}} crc32=${{crc}}\\n" }},
]
"""


def device(port: int, data: bytes, answers: int) -> bytes:
    """A device: send frames, read one answer byte per frame."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        got = b""
        while len(got) < answers:
            chunk = s.recv(16)
            if not chunk:
                break
            got += chunk
        return got


@pytest_twisted.inlineCallbacks
def test_frames_are_acked_once_stored_and_a_bad_one_is_nacked(tmp_path):
    folder = tmp_path / "frames"
    running = start_service(CONFIG.format(folder=folder), tmp_path / "state")
    try:
        data = frame(b"W+0012.5kg", "lrc") + b"\x02W+0099.9kg\x03\x00"
        answers = yield deferToThread(device, running.port("scale"), data, 2)
    finally:
        yield running.stop()
    assert answers == ACK + NAK
    assert (folder / "frame-1.txt").read_bytes() == b"W+0012.5kg crc32=b61d9919\n"
    assert sorted(p.name for p in folder.iterdir()) == ["frame-1.txt"]
